"""UniPC: the unified predictor-corrector sampler of the diffusion ODE, data (x_0) prediction.

Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", Algorithms 1-3 (UniP-p, UniC-p, B(h) = h (``'bh1'``) or e^h - 1 (``'bh2'``)), in the data-
prediction form. With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t /
sigma_t), m_j = x_theta(x_j, t_j) the model's x_0 prediction at grid point j, a step from point s = j
to point t = j + 1 with h = lambda_t - lambda_s, hh = -h:

    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m_s - alpha_t B(h) sum_k rho_k D_k,
    D_k = (m_{s-k} - m_s) / r_k,   r_k = (lambda_{s-k} - lambda_s) / h,

with the coefficients rho solving R rho = b, R_{ik} = r_k^{i-1} (r_p = 1 for the corrector's
newest point), b_i = i! hh phi_{i+1}(hh) / B(h) (phi_k the exponential-integrator phi-functions,
phi_1(z) = (e^z - 1)/z, phi_{k+1}(z) = (phi_k(z) - 1/k!)/z; computed as diffusers does by the recursion
g_1 = (e^{hh} - 1)/hh - 1, g_{i+1} = g_i / hh - 1/(i+1)!, so g_i = hh phi_{i+1}(hh), b_i = i! g_i / B(h)).
UniP-p (the predictor) uses the p - 1 previous points (rho = 1/2 for p = 2, as
the paper's and diffusers' simplified second order); UniC-p (the corrector) re-does the step just
taken with the model value m_t at the PREDICTED x_t added as the newest point (D_p = m_t - m_s,
r_p = 1; rho = 1/2 for p = 1), raising the order to p + 1 (the paper's Theorem 3.3). The corrected
x_t replaces the predicted one, but m_t (evaluated at the predicted x_t) is kept, so the corrector
costs no model call: NFE = num_steps, and the sampler is ONE lax.scan.

Step-order rules, those of diffusers' ``UniPCMultistepScheduler(predict_x0=True, solver_type=variant,
lower_order_final=True, final_sigmas_type='zero', disable_corrector=[])`` on the same timesteps:
  * step i (0-based, of M) predicts with order p_i = min(order, i + 1, M - i) (warm-up while the
    history is short; lower order at the final steps, at EVERY M, unlike DPM-Solver's < 15 rule);
    ``lower_order_final=False`` drops the M - i term (diffusers' lower_order_final=False);
  * the corrector runs at the start of step i >= 1, on the output of step i - 1, with order p_{i-1};
    there is none at step 0 and none after the final step (no model call follows it): the returned
    sample is the last PREDICTOR output, as diffusers' last ``step`` returns.
The last step to abar = 1 (final_step='denoise', sigma = 0, lambda = +inf) is p = 1 and gives x = m;
diffusers' 'bh1' there multiplies B(h) = -inf by 0 and returns NaN, diffax returns the limit (with
lower_order_final=False a step to sigma = 0 is also x = m: the higher terms have r_k = 0 there). Measured
against diffusers 0.42.1 on a Gaussian eps (experiments/compare_diffusers_unipc.py, orders 1-3, 10 and 20
steps): max |diffax - diffusers| / max |diffusers| <= 5.5e-7 (bh2; bh1 over its first M - 1 steps), the
float32 of diffusers' sigma table.

Grid: `dpm_solver.dpm_solver_timesteps` (``spacing``, ``final_step``, ``timesteps``), exactly as
`dpm_solver.dpm_solver_pp_2m`. diffusers' timestep_spacing='linspace' corresponds to
``timesteps=round(linspace(0, T-1, M+1))[::-1][:-1]`` here with final_step='denoise'.

The coefficient tables are computed in float64 NumPy from the concrete schedule (the schedule must not
be traced) and cast to the schedule's dtype; each step is then x_c = w x_pred + c_x x_prev + sum_k
C_k m_{i-k} (corrector) and x_next = e_x x_c + sum_k E_k m_{i-k} (predictor), both linear in the
history.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffax import diffusion
from diffax._util import ModelFn, batch_t, check_choice, check_shape, initial_x, scan_trajectory
from diffax.diffusion import ClipX0
from diffax.dpm_solver import FINAL_STEPS, dpm_solver_timesteps
from diffax.schedules import Schedule

Array = jnp.ndarray

VARIANTS = ("bh1", "bh2")
ORDERS = (1, 2, 3)

__all__ = ["unipc", "unipc_coefficients", "unipc_orders", "VARIANTS", "ORDERS"]


def unipc_orders(num_steps: int, order: int, lower_order_final: bool = True) -> np.ndarray:
    """The predictor order p_i = min(order, i + 1[, num_steps - i]) of each step i (diffusers' rule)."""
    i = np.arange(num_steps)
    p = np.minimum(order, i + 1)
    return np.minimum(p, num_steps - i) if lower_order_final else p


def _rhos(rks: list[float], hh: float, b_h: float, p: int, corrector: bool) -> np.ndarray:
    """rho of UniP-p (len p - 1) or UniC-p (len p): R rho = b, R_{ik} = r_k^{i-1}, b as in the docstring."""
    if corrector and p == 1:
        return np.array([0.5])
    if not corrector and p == 2:
        return np.array([0.5])
    if not corrector and p == 1:
        return np.zeros(0)
    g, b = np.expm1(hh) / hh - 1.0, []
    for i in range(1, p + 1):
        b.append(math.factorial(i) * g / b_h)
        g = g / hh - 1.0 / math.factorial(i + 1)
    rk = np.asarray(rks + [1.0])
    R = np.stack([rk**k for k in range(p)])
    if corrector:
        return np.linalg.solve(R, np.asarray(b))
    return np.linalg.solve(R[:-1, :-1], np.asarray(b[:-1]))


def _step_weights(lam: np.ndarray, alpha: np.ndarray, sigma: np.ndarray, j: int, p: int, variant: str,
                  corrector: bool, n_hist: int) -> tuple[float, np.ndarray]:  # fmt: skip
    """(coefficient of x_j, weights on [m_new, m_j, m_{j-1}, ...]) of the step from point j to j + 1.

    The predictor has no m_new (weight 0); the corrector's m_new is the model at the predicted x_{j+1}."""
    w = np.zeros(n_hist + 1)
    a_t, s_t, a_s, s_s = alpha[j + 1], sigma[j + 1], alpha[j], sigma[j]
    cx = s_t / s_s
    w[1] = a_t - s_t * a_s / s_s  # alpha_t (1 - e^{-h}), finite at sigma_t = 0
    n_prev = p - 1
    if (corrector or n_prev > 0) and np.isfinite(lam[j + 1]):
        h = lam[j + 1] - lam[j]
        hh = -h
        b_h = hh if variant == "bh1" else np.expm1(hh)
        rks = [(lam[j - k] - lam[j]) / h for k in range(1, p)]
        rho = _rhos(rks, hh, b_h, p, corrector)
        scale = -a_t * b_h
        for k in range(1, p):  # D_k = (m_{j-k} - m_j) / r_k
            w[1 + k] += scale * rho[k - 1] / rks[k - 1]
            w[1] -= scale * rho[k - 1] / rks[k - 1]
        if corrector:  # D_p = m_new - m_j
            w[0] += scale * rho[-1]
            w[1] -= scale * rho[-1]
    return cx, w


def unipc_coefficients(s: Schedule, ts: np.ndarray, final_step: str, order: int, variant: str,
                       lower_order_final: bool = True) -> dict[str, np.ndarray]:  # fmt: skip
    """float64 tables of the M steps over the descending grid ``ts`` (from `dpm_solver_timesteps`):

    corr_pred (M,), corr_x (M,), corr_m (M, order + 1): x_c = corr_pred x_pred + corr_x x_prev +
      corr_m . [m_i, m_{i-1}, ..., m_{i-order}] (row 0: x_c = x_pred, no corrector);
    pred_x (M,), pred_m (M, order + 1): x_next = pred_x x_c + pred_m . [m_i, ..., m_{i-order}].
    """
    acp = np.asarray(s.alphas_cumprod, np.float64)[np.asarray(ts)]
    if final_step == "denoise":
        acp = np.concatenate([acp, [1.0]])
    M = len(acp) - 1
    alpha, sigma = np.sqrt(acp), np.sqrt(1.0 - acp)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    p = unipc_orders(M, order, lower_order_final)
    n = order + 1
    tab = dict(corr_pred=np.zeros(M), corr_x=np.zeros(M), corr_m=np.zeros((M, n)), pred_x=np.zeros(M),
               pred_m=np.zeros((M, n)))  # fmt: skip
    tab["corr_pred"][0] = 1.0
    for i in range(M):
        if i > 0:  # corrector of step i - 1: weights on [m_i, m_{i-1}, ...]
            cx, w = _step_weights(lam, alpha, sigma, i - 1, int(p[i - 1]), variant, True, order)
            tab["corr_x"][i], tab["corr_m"][i, : order + 1] = cx, w[: order + 1]
        cx, w = _step_weights(lam, alpha, sigma, i, int(p[i]), variant, False, order)
        tab["pred_x"][i], tab["pred_m"][i, :order] = cx, w[1 : order + 1]
    return tab


def unipc(
    model_fn: ModelFn,
    s: Schedule,
    key: Array,
    shape: tuple[int, ...],
    *,
    order: int = 2,
    variant: str = "bh2",
    num_steps: int | None = None,
    timesteps=None,
    spacing: str = "time_uniform",
    final_step: str = "denoise",
    lower_order_final: bool = True,
    x_init: Array | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: ClipX0 = None,
    return_trajectory: bool = False,
):
    """UniPC-p (Zhao et al. 2023; UniP-p + UniC-p, data prediction) on the discrete schedule; NFE = num_steps.

    ``order`` p in {1, 2, 3}: with the corrector the method has order p + 1 (Theorem 3.3) when every step
    runs at order p; with ``lower_order_final=True`` (the default, diffusers' rule) the final step is
    first order without a corrector, so the global error is O(h^2) for every p (and O(h^{p+1}) with
    ``lower_order_final=False``). ``variant``: B(h) = h ('bh1') or e^h - 1 ('bh2'). The grid (``num_steps``,
    ``timesteps``, ``spacing``, ``final_step``), ``mean_type``, ``var_type``, ``clip_x0``, ``key`` / ``x_init``
    (x_T from ``jax.random.split(key)[0]``, as `samplers.ddim`) are those of `dpm_solver.dpm_solver_pp_2m`;
    see the module docstring for the update and the diffusers settings it equals.

    Returns x of `shape`, or (x, trajectory) with trajectory (num_steps + 1, *shape), x_T first, entry
    i + 1 the PREDICTOR output of step i (diffusers' ``prev_sample``; the corrected value of entry i + 1
    is only formed at step i + 1).
    """
    check_choice("mean_type", mean_type, diffusion.MEAN_TYPES)
    check_choice("var_type", var_type, diffusion.VAR_TYPES)
    check_choice("final_step", final_step, FINAL_STEPS)
    check_choice("order", order, ORDERS)
    check_choice("variant", variant, VARIANTS)
    shape = check_shape(shape)
    ts = dpm_solver_timesteps(s, num_steps, spacing, final_step, timesteps=timesteps)
    model_ts = ts if final_step == "denoise" else ts[:-1]
    tab = unipc_coefficients(s, ts, final_step, order, variant, lower_order_final)
    dtype = s.betas.dtype
    batch = shape[0]

    key_init = jax.random.split(key)[0] if x_init is None else None
    x = initial_x(key_init, shape, dtype, x_init)
    xs = (jnp.asarray(model_ts.astype(np.int32)),) + tuple(
        jnp.asarray(tab[k], dtype) for k in ("corr_pred", "corr_x", "corr_m", "pred_x", "pred_m")
    )

    def step(carry, inp):
        x_pred, x_prev, hist = carry  # hist: (order, *shape) = [m_{i-1}, ..., m_{i-order}]
        t, c_pred, c_x, c_m, p_x, p_m = inp
        t_b = batch_t(t, batch)
        out, _ = diffusion.split_model_output(model_fn(x_pred, t_b), x_pred.shape, var_type)
        m = diffusion.apply_clip(diffusion.predict_x0(s, out, x_pred, t_b, mean_type), clip_x0)
        ms = jnp.concatenate([m[None], hist], axis=0)  # [m_i, m_{i-1}, ..., m_{i-order}]
        x_c = c_pred * x_pred + c_x * x_prev + jnp.tensordot(c_m, ms, axes=1)
        x_next = p_x * x_c + jnp.tensordot(p_m, ms, axes=1)
        return x_next.astype(x_pred.dtype), x_c.astype(x_pred.dtype), ms[:-1]

    hist0 = jnp.zeros((order,) + shape, x.dtype)
    return scan_trajectory(step, (x, jnp.zeros_like(x), hist0), xs, return_trajectory, state=lambda c: c[0])
