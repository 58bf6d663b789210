"""The Gaussian diffusion: forward process, posterior, parameterizations, reverse-step moments.

Notation (Ho et al. 2020; 0-based index t is the paper's step t+1):
  a_t = sqrt(alpha-bar_t), b_t = sqrt(1 - alpha-bar_t), so that x_t = a_t x_0 + b_t eps, eps ~ N(0, I).
Three equivalent parameterizations of a denoiser's output are supported:
  eps  (Ho et al. 2020),  x0  (the clean sample),  v = a_t eps - b_t x_0  (Salimans & Ho 2022),
and the score of the marginal, s(x_t) = grad log q(x_t) = -eps / b_t (Song et al. 2021; Vincent 2011).

Every function is pure, works batch-first with ``t`` an int array of shape (B,) (a scalar t is
broadcast), and is safe under jit/vmap/grad. Every table lookup goes through `extract`, which
rejects a concrete t outside [0, T-1] with a ValueError naming the bad values; a traced t cannot
be checked and an out-of-range one gives NaN (see `extract`).
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from diffax._util import ModelFn, check_choice, check_timestep_range, expand_to
from diffax.schedules import Schedule

Array = jnp.ndarray
ClipX0 = float | Callable[[Array], Array] | None

MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")

__all__ = [
    "MEAN_TYPES",
    "VAR_TYPES",
    "ModelFn",
    "ClipX0",
    "extract",
    "q_mean_variance",
    "q_sample",
    "q_step_sample",
    "q_posterior",
    "eps_to_x0",
    "x0_to_eps",
    "eps_to_v",
    "v_to_eps",
    "predict_eps",
    "v_to_x0",
    "eps_to_score",
    "score_to_eps",
    "predict_x0",
    "split_variance_output",
    "split_model_output",
    "model_variance",
    "apply_clip",
    "p_mean_variance",
]


def extract(table: Array, t: Array, ndim: int) -> Array:
    """table[t] reshaped to broadcast against a batch-first array of rank `ndim`.

    t of shape (B,) gives (B, 1, ..., 1); a scalar t gives shape (1,) * ndim.

    Range: a CONCRETE t (a Python int, NumPy or JAX array outside a trace) must lie in
    [0, T-1], T = len(table); otherwise ValueError naming the bad values and the allowed range
    (a NumPy-style t = -1 would silently read the last entry, t = T past the end). Under
    jit / vmap / scan t is a tracer and no check is possible; there an out-of-range index gives
    NaN (for float tables): t >= T through the out-of-bounds fill of ``jnp.take``, and t < 0
    is sent out of bounds on purpose instead of wrapping around.
    """
    n = table.shape[0]
    check_timestep_range(t, n)
    t = jnp.asarray(t)
    vals = jnp.take(table, jnp.where(t < 0, n, t), mode="fill")  # NaN fill for float tables
    return expand_to(vals, ndim)


def _coefs(s: Schedule, t: Array, ndim: int) -> tuple[Array, Array]:
    """(a_t, b_t) = (sqrt(alpha-bar_t), sqrt(1 - alpha-bar_t)) broadcast to rank `ndim`."""
    acp = extract(s.alphas_cumprod, t, ndim)
    return jnp.sqrt(acp), jnp.sqrt(1.0 - acp)


# --------------------------------------------------------------------------- forward process


def q_mean_variance(s: Schedule, x0: Array, t: Array) -> tuple[Array, Array, Array]:
    """Moments of q(x_t | x_0) = N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I) (Ho et al. 2020, eq. 4).

    Returns (mean, variance, log_variance); the last two broadcast against x0.
    """
    acp = extract(s.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(acp) * x0, 1.0 - acp, jnp.log1p(-acp)


def q_sample(s: Schedule, x0: Array, t: Array, noise: Array) -> Array:
    """Draw x_t ~ q(x_t | x_0) by reparameterization: x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps.

    (Ho et al. 2020, eq. 4.) `noise` is eps ~ N(0, I) with x0's shape; the caller draws it
    with an explicit key.
    """
    a, b = _coefs(s, t, x0.ndim)
    return a * x0 + b * noise


def q_step_sample(s: Schedule, x_prev: Array, t: Array, noise: Array) -> Array:
    """One forward step x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (Ho et al. 2020, eq. 2).

    Composing t+1 of these from x_0 gives q(x_t | x_0) in distribution (eq. 4).
    """
    beta = extract(s.betas, t, x_prev.ndim)
    return jnp.sqrt(1.0 - beta) * x_prev + jnp.sqrt(beta) * noise


def q_posterior(s: Schedule, x0: Array, x_t: Array, t: Array) -> tuple[Array, Array, Array]:
    """Posterior q(x_{t-1} | x_t, x_0) = N(mean, variance I) (Ho et al. 2020, eqs. 6-7).

    mean = coef1_t x_0 + coef2_t x_t,  variance = beta-tilde_t = beta_t (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t).
    Returns (mean, variance, log_variance), the log variance clipped at t = 0 (where beta-tilde = 0)
    to log beta-tilde_1, as improved-diffusion does. Variances broadcast to x_t's shape.
    """
    nd = x_t.ndim
    mean = extract(s.posterior_mean_coef1, t, nd) * x0 + extract(s.posterior_mean_coef2, t, nd) * x_t
    var = jnp.broadcast_to(extract(s.posterior_variance, t, nd), x_t.shape)
    log_var = jnp.broadcast_to(extract(s.posterior_log_variance_clipped, t, nd), x_t.shape)
    return mean, var, log_var


# --------------------------------------------------------------------------- parameterizations
# All conversions share the signature (s, x_t, t, value) -> value'.


def eps_to_x0(s: Schedule, x_t: Array, t: Array, eps: Array) -> Array:
    """x_0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t)  (inverse of eq. 4; Ho et al. 2020, eq. 15)."""
    a, b = _coefs(s, t, x_t.ndim)
    return (x_t - b * eps) / a


def x0_to_eps(s: Schedule, x_t: Array, t: Array, x0: Array) -> Array:
    """eps = (x_t - sqrt(alpha-bar_t) x_0) / sqrt(1 - alpha-bar_t)."""
    a, b = _coefs(s, t, x_t.ndim)
    return (x_t - a * x0) / b


def eps_to_v(s: Schedule, x_t: Array, t: Array, eps: Array) -> Array:
    """v = sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x_0 = (eps - sqrt(1 - alpha-bar_t) x_t) / sqrt(alpha-bar_t).

    (Salimans & Ho 2022, sec. 4.)
    """
    a, b = _coefs(s, t, x_t.ndim)
    return (eps - b * x_t) / a


def v_to_eps(s: Schedule, x_t: Array, t: Array, v: Array) -> Array:
    """eps = sqrt(alpha-bar_t) v + sqrt(1 - alpha-bar_t) x_t  (Salimans & Ho 2022)."""
    a, b = _coefs(s, t, x_t.ndim)
    return a * v + b * x_t


def v_to_x0(s: Schedule, x_t: Array, t: Array, v: Array) -> Array:
    """x_0 = sqrt(alpha-bar_t) x_t - sqrt(1 - alpha-bar_t) v  (Salimans & Ho 2022)."""
    a, b = _coefs(s, t, x_t.ndim)
    return a * x_t - b * v


def eps_to_score(s: Schedule, x_t: Array, t: Array, eps: Array) -> Array:
    """score = grad_x log q(x_t) = -eps / sqrt(1 - alpha-bar_t)  (Song et al. 2021, eq. 4 / Tweedie)."""
    _, b = _coefs(s, t, x_t.ndim)
    return -eps / b


def score_to_eps(s: Schedule, x_t: Array, t: Array, score: Array) -> Array:
    """eps = -sqrt(1 - alpha-bar_t) score."""
    _, b = _coefs(s, t, x_t.ndim)
    return -b * score


# --------------------------------------------------------------------------- reverse step


def predict_x0(s: Schedule, model_output: Array, x_t: Array, t: Array, mean_type: str = "eps") -> Array:
    """The model's estimate of x_0 from its output under `mean_type` ('eps', 'x0' or 'v')."""
    check_choice("mean_type", mean_type, MEAN_TYPES)
    if mean_type == "eps":
        return eps_to_x0(s, x_t, t, model_output)
    if mean_type == "v":
        return v_to_x0(s, x_t, t, model_output)
    return model_output


def predict_eps(s: Schedule, model_output: Array, x_t: Array, t: Array, mean_type: str = "eps") -> Array:
    """The eps implied by the model's output under `mean_type` at (x_t, t): the output itself ('eps'),
    `x0_to_eps` ('x0') or `v_to_eps` ('v')."""
    check_choice("mean_type", mean_type, MEAN_TYPES)
    if mean_type == "x0":
        return x0_to_eps(s, x_t, t, model_output)
    if mean_type == "v":
        return v_to_eps(s, x_t, t, model_output)
    return model_output


def split_variance_output(model_output: Array, var_type: str) -> tuple[Array, Array | None]:
    """Split a learned-variance output (2C channels on the last axis) into (mean part, variance part).

    For fixed variances the output is returned whole, with None for the variance part.
    """
    check_choice("var_type", var_type, VAR_TYPES)
    if var_type in ("learned", "learned_range"):
        c = model_output.shape[-1]
        if c % 2:
            raise ValueError(
                f"var_type={var_type!r} needs 2*C output channels on the last axis, got {c}"
            )
        return model_output[..., : c // 2], model_output[..., c // 2 :]
    return model_output, None


def split_model_output(
    model_output: Array, x_shape: tuple[int, ...], var_type: str | None = None
) -> tuple[Array, Array | None]:
    """(mean part, variance part or None) of a model output for samples x of shape ``x_shape``.

    With ``var_type``: `split_variance_output` (the first half of 2C channels for 'learned' /
    'learned_range'), and the mean part must have x's shape. With ``var_type=None`` the split is
    read from the shape: an output of x's shape has no variance part; one with 2C channels on the
    last axis (C = x_shape[-1]) is a learned-variance output, split in halves.
    Raises ValueError naming both shapes otherwise.
    """
    x_shape = tuple(x_shape)
    if var_type is None:
        if model_output.shape == x_shape:
            return model_output, None
        c = x_shape[-1] if x_shape else 0
        if x_shape and model_output.shape[:-1] == x_shape[:-1] and model_output.shape[-1] == 2 * c:
            return model_output[..., :c], model_output[..., c:]
        raise ValueError(
            f"model output has shape {model_output.shape}; expected x's shape {x_shape} or, for a "
            f"learned variance, {x_shape[:-1] + (2 * c,)}"
        )
    mean_part, var_part = split_variance_output(model_output, var_type)
    if mean_part.shape != x_shape:
        raise ValueError(
            f"model output (mean part) has shape {mean_part.shape}, expected x's shape {x_shape} "
            f"(var_type={var_type!r})"
        )
    return mean_part, var_part


def model_variance(
    s: Schedule, var_values: Array | None, x_t: Array, t: Array, var_type: str
) -> tuple[Array, Array]:
    """(variance, log_variance) of p(x_{t-1} | x_t), broadcast to x_t's shape.

    fixed_small:   beta-tilde_t (posterior variance; log clipped at t = 0)     (Ho et al. 2020, sec. 3.2)
    fixed_large:   beta_t, with beta-tilde_1 at t = 0 (improved-diffusion)     (Ho et al. 2020, sec. 3.2)
    learned:       log Sigma = model output directly
    learned_range: log Sigma = frac log beta_t + (1 - frac) log beta-tilde_t,  frac = (v + 1) / 2
                   (Nichol & Dhariwal 2021, eq. 15)
    """
    check_choice("var_type", var_type, VAR_TYPES)
    nd = x_t.ndim
    if var_type == "fixed_small":
        var = extract(s.posterior_variance, t, nd)
        log_var = extract(s.posterior_log_variance_clipped, t, nd)
    elif var_type == "fixed_large":
        table = jnp.concatenate([s.posterior_variance[1:2], s.betas[1:]]) if s.num_timesteps > 1 else s.betas
        var = extract(table, t, nd)
        log_var = jnp.log(var)
    elif var_type == "learned":
        log_var = var_values
        var = jnp.exp(log_var)
    else:
        min_log = extract(s.posterior_log_variance_clipped, t, nd)
        max_log = extract(jnp.log(s.betas), t, nd)
        frac = (var_values + 1.0) / 2.0
        log_var = frac * max_log + (1.0 - frac) * min_log
        var = jnp.exp(log_var)
    return jnp.broadcast_to(var, x_t.shape), jnp.broadcast_to(log_var, x_t.shape)


def apply_clip(x0: Array, clip_x0: ClipX0) -> Array:
    """pred_x0 after the optional clipping of a sampler's ``clip_x0`` option:

    None -> x0 unchanged;  a bound c -> clip(x0, -c, c) (Ho et al. 2020's clipping to the data
    range [-1, 1] for c = 1);  a function -> clip_x0(x0) (e.g. dynamic thresholding).
    """
    if clip_x0 is None:
        return x0
    if callable(clip_x0):
        return clip_x0(x0)
    return jnp.clip(x0, -clip_x0, clip_x0)


def p_mean_variance(
    s: Schedule,
    model_output: Array,
    x_t: Array,
    t: Array,
    *,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: ClipX0 = None,
) -> dict[str, Array]:
    """Moments of the reverse step p_theta(x_{t-1} | x_t) = N(mean, variance I).

    The model's output is turned into pred_x0 (``mean_type``: 'eps' | 'x0' | 'v'), optionally
    clipped (``clip_x0``: None, a bound c for clip(x0, -c, c), or a function), and the mean is the
    posterior mean at that estimate:  mean = coef1_t pred_x0 + coef2_t x_t  (Ho et al. 2020, eqs. 7, 11;
    for eps without clipping this equals (x_t - beta_t / sqrt(1 - alpha-bar_t) eps) / sqrt(alpha_t)).
    The variance follows ``var_type`` (see `model_variance`); for 'learned' and 'learned_range' the
    output carries 2C channels on the last axis, the second half being the variance part.

    Returns dict(mean, variance, log_variance, pred_x0, pred_eps), all of x_t's shape; pred_eps
    is the eps implied by the (clipped) pred_x0, as DDIM uses it.
    """
    check_choice("mean_type", mean_type, MEAN_TYPES)
    out, var_values = split_model_output(model_output, x_t.shape, var_type)
    variance, log_variance = model_variance(s, var_values, x_t, t, var_type)
    pred_x0 = apply_clip(predict_x0(s, out, x_t, t, mean_type), clip_x0)
    mean, _, _ = q_posterior(s, pred_x0, x_t, t)
    pred_eps = out if (mean_type == "eps" and clip_x0 is None) else x0_to_eps(s, x_t, t, pred_x0)
    return dict(
        mean=mean, variance=variance, log_variance=log_variance, pred_x0=pred_x0, pred_eps=pred_eps
    )
