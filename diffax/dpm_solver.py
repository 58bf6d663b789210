"""DPM-Solver++(2M): fast deterministic sampling of the discrete-schedule diffusion ODE.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", Algorithm 2 (multistep, second order, data prediction). With
alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and lambda_t = log(alpha_t / sigma_t) (half
the log-SNR), the diffusion ODE in data-prediction form has the exact solution (their eq. 9)

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x_theta(x_lambda, lambda) dlambda,

and DPM-Solver++(2M) approximates x_theta by a linear extrapolation in lambda from the last two
model calls. On the descending grid t_0 > t_1 > ... > t_M, with h_i = lambda_{t_i} - lambda_{t_{i-1}},
r_i = h_{i-1} / h_i and D_1 = x_theta(x_{t_0}, t_0):

    D_i     = (1 + 1/(2 r_i)) x_theta(x_{t_{i-1}}, t_{i-1}) - 1/(2 r_i) x_theta(x_{t_{i-2}}, t_{i-2})   (i >= 2)
    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} + alpha_{t_i} (1 - e^{-h_i}) D_i.

The first step (D_1 = x_theta) is DPM-Solver++(1), which is exactly DDIM with eta = 0 (Lu et al.
2022, sec. 3.3 / Song et al. 2021, eq. 12). alpha_t (1 - e^{-h}) is computed as
alpha_t - sigma_t alpha_s / sigma_s, which stays finite when the last point is abar = 1
(sigma = 0, lambda = +infinity): there the step is x = D.

The grid lives on the DISCRETE schedule: t_i are integer indices into alphas_cumprod, and the model
is called with those indices, like the other samplers. ``final_step`` fixes where the grid ends:

  'denoise' (default): num_steps model indices t_0 > ... > t_{M-1} from ``spacing``, then a last
     step to abar = 1 (t_M = "-1": alpha = 1, sigma = 0), taken at first order, i.e. x = x_theta(x,
     t_{M-1}) (a 2M step has h_M = infinity; DPM-Solver's lower-order-final rule). With the same
     indices this ends exactly where DDIM(eta = 0) does (its last abar_prev = 1).
  'none': num_steps + 1 indices t_0 > ... > t_M from ``spacing``; the sampler stops at index t_M
     (for 'time_uniform'/'logSNR' that is index 0, sigma_0 = sqrt(betas[0]) > 0) without denoising.

Either way NFE = num_steps (model calls at t_0 .. t_{M-1}), and the whole sampler is ONE lax.scan
whose carry is (x, previous x_theta).

spacing of the n grid indices (n = num_steps, or num_steps + 1 for final_step='none'), see
`dpm_solver_timesteps`:
  'time_uniform' : round(linspace(T - 1, e, num_steps + 1)), e = 0 for 'none'; for 'denoise' e = -1
                   (the abar = 1 end point, so the last model index is ~T/M - 1 and the solver never
                   takes a near-singular step into index 0 before denoising, as diffusers' 'linspace'),
  'logSNR'       : the indices nearest to lambda = linspace(lambda_{T-1}, lambda_0, n) (Lu et al. 2022's
                   recommendation for unconditional sampling; an error if two round to one index),
  'leading' | 'linspace' | 'trailing' : `schedules.space_timesteps(T, n, spacing)`, as DDIM uses.
``timesteps`` (a strictly monotone int array) overrides ``spacing``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffax import diffusion, schedules
from diffax._util import (
    ModelFn,
    alphas_cumprod_on_grid,
    batch_t,
    check_choice,
    check_int,
    check_shape,
    initial_x,
    resolve_timesteps,
    scan_trajectory,
)
from diffax.diffusion import ClipX0
from diffax.schedules import Schedule

Array = jnp.ndarray

SPACINGS = ("time_uniform", "logSNR", "leading", "linspace", "trailing")
FINAL_STEPS = ("denoise", "none")

__all__ = ["dpm_solver_pp_2m", "dpm_solver_timesteps", "SPACINGS", "FINAL_STEPS"]


def dpm_solver_timesteps(
    s: Schedule,
    num_steps: int | None = None,
    spacing: str = "time_uniform",
    final_step: str = "denoise",
    *,
    timesteps=None,
) -> np.ndarray:
    """The DESCENDING integer indices DPM-Solver visits (NumPy; the schedule must be concrete).

    ``timesteps`` (strictly monotone ints in [0, T-1], either order; at least 2 for final_step='none')
    overrides ``num_steps`` and ``spacing`` and is returned descending; passing both is an error.
    Otherwise, for final_step='none' these are n = num_steps + 1 grid points, the last one the end point; for
    'denoise' n = num_steps model indices, the end point abar = 1 (index "-1", alphas_cumprod_prev[0])
    being implicit:
      'time_uniform': round(linspace(T-1, e, num_steps + 1)) with e = 0 ('none'), or e = -1 ('denoise':
                      uniform over the extended index range, its last point, abar = 1, dropped);
      'logSNR':       the indices nearest to n values uniform in lambda = 1/2 log(abar / (1 - abar))
                      from lambda_{T-1} to lambda_0 (an error if two round to one index);
      'leading' | 'linspace' | 'trailing': `schedules.space_timesteps(T, n, spacing)` reversed.
    """
    check_choice("final_step", final_step, FINAL_STEPS)
    if timesteps is not None:
        min_len = 2 if final_step == "none" else 1
        return resolve_timesteps(s.num_timesteps, num_steps, timesteps, spacing, min_len=min_len)[::-1]
    if num_steps is None:
        raise ValueError("pass num_steps (or timesteps)")
    check_choice("spacing", spacing, SPACINGS)
    T = s.num_timesteps
    n_extra = 1 if final_step == "none" else 0
    n = check_int("num_steps", num_steps, 1, T - n_extra) + n_extra
    if spacing == "time_uniform":
        end = 0 if final_step == "none" else -1
        ts = np.round(np.linspace(T - 1, end, int(num_steps) + 1)).astype(np.int64)[:n]
    elif spacing == "logSNR":
        acp = np.asarray(s.alphas_cumprod, dtype=np.float64)
        lam = 0.5 * (np.log(acp) - np.log1p(-acp))  # increasing as the index decreases
        target = np.linspace(lam[-1], lam[0], n)
        ts = np.argmin(np.abs(lam[None, :] - target[:, None]), axis=1).astype(np.int64)
    else:
        ts = schedules.space_timesteps(T, n, spacing)[::-1].astype(np.int64)
    if n > 1 and np.any(np.diff(ts) >= 0):
        raise ValueError(
            f"spacing {spacing!r} gives repeated indices for T={T} with {n} points; "
            "use fewer steps or spacing='time_uniform'"
        )
    return ts


def dpm_solver_pp_2m(
    model_fn: ModelFn,
    s: Schedule,
    key: Array,
    shape: tuple[int, ...],
    *,
    num_steps: int | None = None,
    timesteps=None,
    spacing: str = "time_uniform",
    final_step: str = "denoise",
    order: int = 2,
    x_init: Array | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: ClipX0 = None,
    return_trajectory: bool = False,
):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the discrete schedule; NFE = num_steps.

    See the module docstring for the update, the grid (``spacing`` / ``timesteps``) and
    ``final_step`` ('denoise': end at abar = 1 with a first-order last step; 'none': end at the
    last grid index). x_theta = `diffusion.predict_x0` of the model output (``mean_type`` 'eps' |
    'x0' | 'v'), optionally clipped (``clip_x0``: a bound c or a function, DPM-Solver++'s
    thresholding). ``order=1`` gives DPM-Solver++(1) = DDIM(eta = 0) on the same grid.
    ``var_type`` only tells how to split a learned-variance output (the first half is used).

    key: x_T ~ N(0, I) is drawn from ``jax.random.split(key)[0]``, as `samplers.ddim` does, so the
    same key starts both from the same x_T; ``x_init`` replaces that draw (``key`` is then unused).

    Returns x of `shape`, or (x, trajectory) with trajectory (num_steps + 1, *shape), x_T first.
    """
    check_choice("mean_type", mean_type, diffusion.MEAN_TYPES)
    check_choice("var_type", var_type, diffusion.VAR_TYPES)
    check_choice("final_step", final_step, FINAL_STEPS)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    shape = check_shape(shape)
    ts = dpm_solver_timesteps(s, num_steps, spacing, final_step, timesteps=timesteps)
    batch = shape[0]

    # Per-grid-point (alpha, sigma), descending; 'denoise' appends the end point abar = 1 (which
    # is abar_prev of the smallest index). All static-size tables of length M+1.
    abar, abar_prev = alphas_cumprod_on_grid(s, ts[::-1])
    acp = (abar if final_step == "none" else jnp.concatenate([abar_prev[:1], abar]))[::-1]
    alpha, sigma = jnp.sqrt(acp), jnp.sqrt(1.0 - acp)
    model_ts = ts if final_step == "denoise" else ts[:-1]  # the M evaluation indices
    a_cur, s_cur, a_next, s_next = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    # x_next = (sigma_next / sigma_cur) x + alpha_next (1 - e^{-h}) D, with e^{-h} = sigma_next alpha_cur / (alpha_next sigma_cur).
    coef_x = s_next / s_cur
    coef_d = a_next - s_next * a_cur / s_cur
    # h_i = lambda_next - lambda_cur; the correction weight 1/(2 r_i) = h_i / (2 h_{i-1}), zero at
    # the first step, at order 1, and at a step to sigma = 0 (h = infinity: first order there).
    lam = jnp.log(alpha) - jnp.log(sigma)
    h = lam[1:] - lam[:-1]
    finite = jnp.isfinite(h)
    h_safe = jnp.where(finite, h, 1.0)
    half_inv_r = jnp.where(finite[1:], h_safe[1:] / (2.0 * h_safe[:-1]), 0.0)
    half_inv_r = jnp.concatenate([jnp.zeros((1,), h.dtype), half_inv_r])
    if order == 1:
        half_inv_r = jnp.zeros_like(half_inv_r)

    key_init = jax.random.split(key)[0] if x_init is None else None
    x = initial_x(key_init, shape, s.betas.dtype, x_init)
    xs = (jnp.asarray(model_ts.astype(np.int32)), coef_x, coef_d, half_inv_r)

    def step(carry, inp):
        x, x0_prev = carry
        t, cx, cd, w = inp
        t_b = batch_t(t, batch)
        out, _ = diffusion.split_model_output(model_fn(x, t_b), x.shape, var_type)
        x0 = diffusion.apply_clip(diffusion.predict_x0(s, out, x, t_b, mean_type), clip_x0)
        d = x0 + w * (x0 - x0_prev)  # = (1 + 1/(2r)) x0 - 1/(2r) x0_prev
        x_new = (cx * x + cd * d).astype(x.dtype)
        return x_new, x0

    return scan_trajectory(step, (x, jnp.zeros_like(x)), xs, return_trajectory, state=lambda c: c[0])
