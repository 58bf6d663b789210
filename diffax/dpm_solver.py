"""Multistep DPM-Solver++ (orders 1, 2, 3): fast deterministic sampling of the discrete-schedule diffusion ODE.

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
whose carry is (x, previous x_theta) (and the one before for order 3). `dpm_solver_pp` adds the
third-order multistep update and diffusers' step-order rules; `dpm_solver_pp_2m` is its order 2.

spacing of the n grid indices (n = num_steps, or num_steps + 1 for final_step='none'), see
`dpm_solver_timesteps`:
  'time_uniform' : round(linspace(T - 1, e, num_steps + 1)), e = 0 for 'none'; for 'denoise' e = -1
                   (the abar = 1 end point, so the last model index is ~T/M - 1 and the solver never
                   takes a near-singular step into index 0 before denoising, as diffusers' 'linspace'),
  'logSNR'       : the indices nearest to lambda = linspace(lambda_{T-1}, lambda_0, n) (Lu et al. 2022's
                   recommendation for unconditional sampling; deduplicated, see `dpm_solver_timesteps`),
  'edm'          : EDM's rho = 7 schedule in sigma = sqrt((1 - abar) / abar) mapped to the nearest indices,
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

SPACINGS = ("time_uniform", "logSNR", "edm", "leading", "linspace", "trailing")
FINAL_STEPS = ("denoise", "none")

__all__ = ["dpm_solver_pp", "dpm_solver_pp_2m", "dpm_solver_timesteps", "SPACINGS", "FINAL_STEPS"]


def _strictly_decreasing(ts: np.ndarray, lo: int) -> np.ndarray:
    """The nearest strictly decreasing sequence >= lo: each index that repeats (or passes) its
    predecessor moves to the predecessor minus one; any that then fall below lo are pushed back up from
    the end (last = max(last, lo), each earlier one at least its successor plus one). Unchanged when
    ``ts`` is already strictly decreasing and >= lo; needs len(ts) <= ts[0] - lo + 1."""
    ts = ts.copy()
    for i in range(1, len(ts)):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    ts[-1] = max(ts[-1], lo)
    for i in range(len(ts) - 2, -1, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return ts


def _nearest_in_lambda(lam: np.ndarray, target: np.ndarray) -> np.ndarray:
    """For each target value of lambda the index k with the nearest lambda_k (lambda decreasing in k)."""
    return np.argmin(np.abs(lam[None, :] - target[:, None]), axis=1).astype(np.int64)


def dpm_solver_timesteps(
    s: Schedule,
    num_steps: int | None = None,
    spacing: str = "time_uniform",
    final_step: str = "denoise",
    *,
    timesteps=None,
) -> np.ndarray:
    """The DESCENDING integer indices a multistep solver visits (NumPy; the schedule must be concrete).

    ``timesteps`` (strictly monotone ints in [0, T-1], either order; at least 2 for final_step='none')
    overrides ``num_steps`` and ``spacing`` and is returned descending; passing both is an error.
    Otherwise, for final_step='none' these are n = num_steps + 1 grid points, the last one the end point; for
    'denoise' n = num_steps model indices, the end point abar = 1 (index "-1", alphas_cumprod_prev[0])
    being implicit:
      'time_uniform': round(linspace(T-1, e, num_steps + 1)) with e = 0 ('none'), or e = -1 ('denoise':
                      uniform over the extended index range, its last point, abar = 1, dropped);
      'logSNR':       uniform in lambda = 1/2 log(abar / (1 - abar)) (half the log-SNR; uniform in
                      log-SNR is the same grid): the indices nearest to linspace(lambda_{T-1}, lambda_0, n);
      'edm':          EDM's rho-schedule (Karras et al. 2022, eq. 5, rho = 7) in sigma_EDM =
                      sqrt((1 - abar) / abar): sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho,
                      i = 0..n-1, smax / smin = sigma_EDM at indices T-1 / 0; each mapped to the index with the
                      nearest log sigma_EDM (= nearest lambda);
      'leading' | 'linspace' | 'trailing': `schedules.space_timesteps(T, n, spacing)` reversed (DDIM's grids;
                      'trailing' is also diffusers' DPMSolverMultistepScheduler's; its 'linspace' and 'leading'
                      drop index 0 from n + 1 points instead: pass those as ``timesteps``).
    'logSNR' and 'edm' start at T-1 and end at index 0. Where two targets map to one index (the schedule's
    lambda is steep near index 0, e.g. linear T = 1000 jumps 0.4 in lambda from index 0 to 1), the grid is
    deduplicated to the nearest strictly decreasing one: a repeated index moves to the next free index
    below it, and those pushed below 0 are moved back up (so there are still exactly n points and
    NFE = num_steps; the grid is then index-spaced, not uniform, at that end). n > T is an error.
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
    elif spacing in ("logSNR", "edm"):
        acp = np.asarray(s.alphas_cumprod, dtype=np.float64)
        lam = 0.5 * (np.log(acp) - np.log1p(-acp))  # increasing as the index decreases
        if spacing == "logSNR" or n == 1:
            target = np.linspace(lam[-1], lam[0], n)
        else:
            rho = 7.0
            smax, smin = np.exp(-lam[-1]), np.exp(-lam[0])  # sigma_EDM = e^{-lambda}
            ramp = np.arange(n) / (n - 1)
            sig = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
            target = -np.log(sig)
        ts = _strictly_decreasing(_nearest_in_lambda(lam, target), 0)
    else:
        ts = schedules.space_timesteps(T, n, spacing)[::-1].astype(np.int64)
    return ts


def dpm_solver_pp(
    model_fn: ModelFn,
    s: Schedule,
    key: Array,
    shape: tuple[int, ...],
    *,
    order: int = 2,
    num_steps: int | None = None,
    timesteps=None,
    spacing: str = "time_uniform",
    final_step: str = "denoise",
    x_init: Array | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: ClipX0 = None,
    return_trajectory: bool = False,
    diffusers_3m: bool = False,
):
    """Multistep DPM-Solver++ of order 1, 2 or 3 on the discrete schedule, one lax.scan; NFE = num_steps.

    Order per step (diffusers' `DPMSolverMultistepScheduler` with algorithm_type='dpmsolver++',
    solver_type='midpoint', lower_order_final=True, final_sigmas_type='zero'): step i (0-based, M model
    calls) uses order min(order, i + 1) (the history is short at the start); with final_step='denoise'
    the last step (to sigma = 0) is first order and, when M < 15, the one before it at most second
    order. final_step='none' (no diffusers counterpart) keeps full order to the end.

    Updates (x = current state at grid point s0, m0, m1, m2 = x_theta at s0 and the two previous grid
    points, h = lambda_next - lambda_s0, h0, h1 the two previous steps, r0 = h0 / h, r1 = h1 / h):
      order 1: x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) m0                        (= DDIM, eta = 0)
      order 2: the same with m0 -> m0 + (m0 - m1) / (2 r0)                            (Algorithm 2)
      order 3: x' = (sigma'/sigma) x + alpha' [(1 - e^{-h}) m0 + (h - 1 + e^{-h}) b1
                                                + (h^2 - 2h + 2 - 2 e^{-h}) b2],
               x_theta(lambda_s0 + u) ~ m0 + b1 u + b2 u^2 the quadratic through (m0, m1, m2) in lambda,
               integrated exactly against e^lambda (the third-order multistep form; in diffusers'
               notation D1 = h b1, D2 = 2 h^2 b2 -- diffusers' and the reference code's multistep
               third-order update use D2 = h^2 b2, half the weight: local error O(h^3), a globally
               SECOND-order method -- measured slopes 2.09 / 1.92 against 2.97 / 2.81 here at M = 100..800
               on the 1-D / 2-D oracle mixtures, though both ~2.9 / 2.8 at M = 10..80, where the half
               weight's errors were 0.7-0.8x these; experiments/compare_diffusers_solvers.py).
    ``diffusers_3m=True`` uses that half weight (the b2 term times 1/2), i.e. diffusers'
    `DPMSolverMultistepScheduler(solver_order=3)` and DPM-Solver's reference `multistep_dpm_solver_third_update`
    exactly (to ~1e-6 on the same grid and x_T, tests/test_dpm_solver.py): for reproducing numbers made with
    those; it changes nothing at orders 1 and 2.

    Everything else (grid, ``final_step``, mean_type, var_type, clip_x0, key/x_init, the
    trajectory) as `dpm_solver_pp_2m`.
    """
    check_choice("mean_type", mean_type, diffusion.MEAN_TYPES)
    check_choice("var_type", var_type, diffusion.VAR_TYPES)
    check_choice("final_step", final_step, FINAL_STEPS)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    shape = check_shape(shape)
    ts = dpm_solver_timesteps(s, num_steps, spacing, final_step, timesteps=timesteps)
    batch = shape[0]

    # Per-grid-point (alpha, sigma), descending; 'denoise' appends the end point abar = 1 (which
    # is abar_prev of the smallest index). All static-size tables of length M+1.
    abar, abar_prev = alphas_cumprod_on_grid(s, ts[::-1])
    acp = (abar if final_step == "none" else jnp.concatenate([abar_prev[:1], abar]))[::-1]
    alpha, sigma = jnp.sqrt(acp), jnp.sqrt(1.0 - acp)
    model_ts = ts if final_step == "denoise" else ts[:-1]  # the M evaluation indices
    n_steps = len(model_ts)
    a_cur, s_cur, a_next, s_next = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    # x_next = (sigma_next / sigma_cur) x + alpha_next (1 - e^{-h}) D, with e^{-h} = sigma_next alpha_cur / (alpha_next sigma_cur).
    coef_x = s_next / s_cur
    coef_d = a_next - s_next * a_cur / s_cur
    # Step orders (see the docstring), static.
    step_order = np.minimum(order, np.arange(n_steps) + 1)
    if final_step == "denoise":
        step_order[-1] = 1
        if n_steps < 15 and n_steps >= 2:
            step_order[-2] = min(step_order[-2], 2)
    # h_i = lambda_next - lambda_cur; D = m0 + w1 (m0 - m1) + w2 (m1 - m2). Order 2: w1 = 1/(2 r0) =
    # h / (2 h0), w2 = 0. Zero weights at first-order steps (incl. a step to sigma = 0, h = infinity).
    lam = jnp.log(alpha) - jnp.log(sigma)
    h = lam[1:] - lam[:-1]
    finite = jnp.isfinite(h)
    h_safe = jnp.where(finite, h, 1.0)
    half_inv_r = jnp.where(finite[1:], h_safe[1:] / (2.0 * h_safe[:-1]), 0.0)
    half_inv_r = jnp.concatenate([jnp.zeros((1,), h.dtype), half_inv_r])
    w1 = jnp.where(jnp.asarray(step_order == 2), half_inv_r, 0.0)
    xs = [jnp.asarray(model_ts.astype(np.int32)), coef_x, coef_d, w1]
    if order == 3:
        # Order 3: with divided differences q0 = (m0 - m1)/h0, q1 = (m1 - m2)/h1, b2 = (q0 - q1)/(h0 + h1),
        # b1 = q0 + h0 b2; the bracket / (1 - e^{-h}) gives D = m0 + w1 (m0 - m1) + w2 (m1 - m2) with
        # c1 = (h - 1 + e^{-h}) / (1 - e^{-h}), c2 = (h^2 - 2h + 2 - 2e^{-h}) / (1 - e^{-h}):
        # w1 = c1 (1/h0 + 1/(h0 + h1)) + c2 / (h0 (h0 + h1)),  w2 = -(c1 h0 + c2) / (h1 (h0 + h1)).
        h0 = jnp.concatenate([jnp.ones((1,), h.dtype), h_safe[:-1]])
        h1 = jnp.concatenate([jnp.ones((2,), h.dtype), h_safe[:-2]])
        em = -jnp.expm1(-h_safe)  # 1 - e^{-h}
        c1 = (h_safe - em) / em
        # h^2 - 2h + 2 - 2e^{-h} = 2 (e^{-h} - 1 + h - h^2/2) (-1): series below h = 0.1 (cancellation)
        direct = h_safe**2 - 2.0 * h_safe + 2.0 * em
        series = h_safe**3 / 3.0 - h_safe**4 / 12.0 + h_safe**5 / 60.0 - h_safe**6 / 360.0 + h_safe**7 / 2520.0
        c2 = jnp.where(h_safe < 0.1, series, direct) / em * (0.5 if diffusers_3m else 1.0)
        w1_3 = c1 * (1.0 / h0 + 1.0 / (h0 + h1)) + c2 / (h0 * (h0 + h1))
        w2_3 = -(c1 * h0 + c2) / (h1 * (h0 + h1))
        third = jnp.asarray(step_order == 3)
        xs[3] = jnp.where(third, w1_3, w1)
        xs.append(jnp.where(third, w2_3, 0.0))

    key_init = jax.random.split(key)[0] if x_init is None else None
    x = initial_x(key_init, shape, s.betas.dtype, x_init)

    def model_x0(x, t):
        t_b = batch_t(t, batch)
        out, _ = diffusion.split_model_output(model_fn(x, t_b), x.shape, var_type)
        return diffusion.apply_clip(diffusion.predict_x0(s, out, x, t_b, mean_type), clip_x0)

    def step(carry, inp):
        x, x0_prev = carry[0], carry[1]
        t, cx, cd, w = inp[:4]
        x0 = model_x0(x, t)
        d = x0 + w * (x0 - x0_prev)  # order 2: = (1 + 1/(2r)) x0 - 1/(2r) x0_prev
        if order == 3:
            d = d + inp[4] * (x0_prev - carry[2])
            return (cx * x + cd * d).astype(x.dtype), x0, x0_prev
        return (cx * x + cd * d).astype(x.dtype), x0

    init = (x, jnp.zeros_like(x)) + ((jnp.zeros_like(x),) if order == 3 else ())
    return scan_trajectory(step, init, tuple(xs), return_trajectory, state=lambda c: c[0])


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

    `dpm_solver_pp` with ``order=2`` (the default here; ``order=1`` gives DPM-Solver++(1) = DDIM(eta = 0)
    on the same grid; order 3 is not accepted here). See the module docstring for the update, the grid
    (``spacing`` / ``timesteps``) and ``final_step`` ('denoise': end at abar = 1 with a first-order last
    step; 'none': end at the last grid index). x_theta = `diffusion.predict_x0` of the model output
    (``mean_type`` 'eps' | 'x0' | 'v'), optionally clipped (``clip_x0``: a bound c or a function,
    DPM-Solver++'s thresholding). ``var_type`` only tells how to split a learned-variance output (the
    first half is used).

    key: x_T ~ N(0, I) is drawn from ``jax.random.split(key)[0]``, as `samplers.ddim` does, so the
    same key starts both from the same x_T; ``x_init`` replaces that draw (``key`` is then unused).

    Returns x of `shape`, or (x, trajectory) with trajectory (num_steps + 1, *shape), x_T first.
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r} (dpm_solver_pp takes order 3)")
    return dpm_solver_pp(model_fn, s, key, shape, order=order, num_steps=num_steps, timesteps=timesteps,
                         spacing=spacing, final_step=final_step, x_init=x_init, mean_type=mean_type,
                         var_type=var_type, clip_x0=clip_x0, return_trajectory=return_trajectory)
