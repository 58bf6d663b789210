"""Interpolation in the latent spaces of a diffusion model.

  slerp              spherical linear interpolation per example (Shoemake 1985; White 2016)
  ddpm_interpolate   DDPM's stochastic-encoder interpolation (Ho et al. 2020, sec. 4.3, Fig. 8)
  ddim_encode        the deterministic DDIM ODE run backwards, x_0 -> x_T (Song et al. 2021, sec. 4.3/5.4)
  ddim_interpolate   encode with DDIM, slerp the latents, decode with DDIM (Song et al. 2021, Fig. 6)

All functions are pure and batch-first; the samplers are `diffax.samplers.ddpm` / ``ddim`` and
nothing here jits (the caller wraps the call in ``jax.jit``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffax import diffusion, samplers
from diffax._util import (
    ModelFn,
    alphas_cumprod_on_grid,
    batch_t,
    check_choice,
    check_int,
    expand_to,
    scan_trajectory,
)
from diffax.schedules import Schedule

Array = jnp.ndarray

__all__ = ["slerp", "ddpm_interpolate", "ddim_encode", "ddim_interpolate"]


def _check_pair(x0a: Array, x0b: Array) -> None:
    if jnp.shape(x0a) != jnp.shape(x0b) or jnp.ndim(x0a) < 2:
        raise ValueError(
            f"x0a and x0b must have the same batch-first shape (B, ...), got {jnp.shape(x0a)} and {jnp.shape(x0b)}"
        )


def _check_lambdas(lambdas) -> Array:
    lam = jnp.asarray(lambdas)
    if lam.ndim != 1 or lam.shape[0] < 1:
        raise ValueError(f"lambdas must be a non-empty 1-D array of weights, got shape {lam.shape}")
    return lam


def slerp(z0: Array, z1: Array, alpha) -> Array:
    """Spherical linear interpolation, per example (Shoemake 1985; White 2016 for generative models):

        slerp(z0, z1; alpha) = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1,
        theta = arccos(<z0, z1> / (|z0| |z1|)),

    with the inner product and norms over each example's non-batch dimensions. If |z0| = |z1|
    the path keeps that norm (a great-circle arc; for Gaussian latents in high dimension it stays
    in the typical shell, unlike the linear path). For (nearly) parallel z0, z1 (sin theta < 1e-6)
    it falls back to the linear (1 - alpha) z0 + alpha z1, its limit.

    Args:
      z0, z1: arrays of the same shape (B, ...).
      alpha: a scalar or a (B,) array of weights (0 gives z0, 1 gives z1).
    """
    z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
    if z0.shape != z1.shape or z0.ndim < 1:
        raise ValueError(f"z0 and z1 must have the same batch-first shape, got {z0.shape} and {z1.shape}")
    alpha = jnp.asarray(alpha, dtype=z0.dtype)
    if alpha.ndim > 1 or (alpha.ndim == 1 and alpha.shape[0] != z0.shape[0]):
        raise ValueError(f"alpha must be a scalar or of shape ({z0.shape[0]},), got shape {alpha.shape}")
    axes = tuple(range(1, z0.ndim))
    alpha = expand_to(jnp.broadcast_to(alpha, (z0.shape[0],)), z0.ndim)
    n0 = jnp.sqrt(jnp.sum(z0**2, axis=axes, keepdims=True))
    n1 = jnp.sqrt(jnp.sum(z1**2, axis=axes, keepdims=True))
    cos = jnp.clip(jnp.sum(z0 * z1, axis=axes, keepdims=True) / (n0 * n1), -1.0, 1.0)
    theta = jnp.arccos(cos)
    sin = jnp.sin(theta)
    parallel = sin < 1e-6
    safe_sin = jnp.where(parallel, 1.0, sin)
    c0 = jnp.where(parallel, 1.0 - alpha, jnp.sin((1.0 - alpha) * theta) / safe_sin)
    c1 = jnp.where(parallel, alpha, jnp.sin(alpha * theta) / safe_sin)
    return c0 * z0 + c1 * z1


def ddpm_interpolate(
    model_fn: ModelFn,
    s: Schedule,
    key: Array,
    x0a: Array,
    x0b: Array,
    *,
    t: int,
    lambdas,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0=None,
) -> Array:
    """Interpolation through the stochastic encoder q(x_t | x_0) (Ho et al. 2020, sec. 4.3, Fig. 8):

        x_t = q_sample(x0a, eps_a),  x'_t = q_sample(x0b, eps_b)          (eq. 4, independent noise),
        x-bar_t(lambda) = (1 - lambda) x_t + lambda x'_t,
        x-bar_0(lambda) ~ p_theta(x_0 | x-bar_t(lambda))   (ancestral sampling from index t down to 0).

    As in the paper, the reverse-process noise is the same for every lambda (only the starting
    point varies). The reverse chain is `samplers.ddpm` with ``timesteps = range(t + 1)``, i.e. the
    original chain's steps t, ..., 0 (the model sees the original indices).

    Args:
      model_fn: (x_t, t) -> output (``mean_type`` / ``var_type`` as in `samplers.ddpm`).
      s: the schedule (concrete: the chain is cut with `schedules.respace`).
      key: split into (noise of x0a, noise of x0b, reverse-process noise).
      x0a, x0b: the two sources, (B, ...).
      t: the 0-based diffusion index in [0, T-1] to encode to (the paper uses t = 500 of 1000).
      lambdas: (L,) interpolation weights (0 gives x0a's reconstruction, 1 x0b's).

    Returns:
      (L, B, ...) decoded interpolants, one row per lambda.
    """
    _check_pair(x0a, x0b)
    T = s.num_timesteps
    t = check_int("t", t, 0, T - 1)
    lam = _check_lambdas(lambdas)
    k_a, k_b, k_dec = jax.random.split(key, 3)
    b = x0a.shape[0]
    t_b = batch_t(t, b)
    xt_a = diffusion.q_sample(s, x0a, t_b, jax.random.normal(k_a, x0a.shape, dtype=x0a.dtype))
    xt_b = diffusion.q_sample(s, x0b, t_b, jax.random.normal(k_b, x0b.shape, dtype=x0b.dtype))
    timesteps = np.arange(int(t) + 1)

    def decode(lam_i):
        x_bar = ((1.0 - lam_i) * xt_a + lam_i * xt_b).astype(x0a.dtype)
        return samplers.ddpm(
            model_fn, s, k_dec, x0a.shape, x_init=x_bar, mean_type=mean_type, var_type=var_type,
            clip_x0=clip_x0, timesteps=timesteps,
        )  # fmt: skip

    return jax.vmap(decode)(lam.astype(x0a.dtype))


def ddim_encode(
    model_fn: ModelFn,
    s: Schedule,
    x0: Array,
    *,
    num_steps: int | None = None,
    timesteps=None,
    spacing: str = "leading",
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    return_trajectory: bool = False,
):
    """DDIM inversion: the deterministic DDIM update (eta = 0; Song et al. 2021, eq. 12) run from
    x_0 up to x_{tau_{K-1}}, the latent that `samplers.ddim` (eta = 0) decodes back to ~x_0.

    On the ascending subsequence tau_0 < ... < tau_{K-1}, step k moves x from level tau_{k-1}
    (alpha-bar_cur; the data, alpha-bar = 1, for k = 0) to level tau_k:

        eps_hat = eps_theta(x, tau_{max(k-1, 0)}),
        x0_hat  = (x - sqrt(1 - abar_cur) eps_hat) / sqrt(abar_cur),
        x      <- sqrt(abar_{tau_k}) x0_hat + sqrt(1 - abar_{tau_k}) eps_hat,

    the Euler step of the probability-flow ODE d(x / sqrt(abar)) = eps d(sqrt((1 - abar) / abar))
    taken forward in noise (sec. 4.3), with eps evaluated at the start of the step; the model is not
    defined at the data level, so the first step uses eps at (x_0, tau_0). Decoding evaluates eps
    at the other end of each step, so encode -> decode is exact only as K -> T and the error is
    first order in the step size (see tests). One ``lax.scan`` over the K steps.

    Args:
      model_fn: (x_t, t) -> output under ``mean_type`` (learned-variance outputs: the first half).
      s: the schedule.
      x0: the data, (B, ...).
      num_steps / timesteps / spacing: the subsequence, as in `samplers.ddim` (all T steps by default).
      return_trajectory: also return the (K+1, B, ...) states, x_0 first.

    Returns:
      x_{tau_{K-1}} of x0's shape, or (x_T, trajectory).
    """
    check_choice("mean_type", mean_type, diffusion.MEAN_TYPES)
    check_choice("var_type", var_type, diffusion.VAR_TYPES)
    if x0.ndim < 1:
        raise ValueError(f"x0 must be batch-first (B, ...), got shape {x0.shape}")
    ts = samplers.ddim_timesteps(s, num_steps, spacing, timesteps=timesteps)
    abar, abar_cur = alphas_cumprod_on_grid(s, ts)
    model_ts = np.concatenate([ts[:1], ts[:-1]]).astype(np.int32)
    b = x0.shape[0]
    xs = (jnp.asarray(model_ts), jnp.sqrt(abar_cur), jnp.sqrt(1.0 - abar_cur), jnp.sqrt(abar), jnp.sqrt(1.0 - abar))

    def step(x, inp):
        t_model, a_cur, b_cur, a_next, b_next = inp
        t_b = batch_t(t_model, b)
        out, _ = diffusion.split_model_output(model_fn(x, t_b), x.shape, var_type)
        if mean_type == "eps":
            eps = out
        else:  # the eps implied by the model's x0 / v prediction, reading x as x_{t_model}
            eps = diffusion.x0_to_eps(s, x, t_b, diffusion.predict_x0(s, out, x, t_b, mean_type))
        x0_hat = (x - b_cur * eps) / a_cur
        return (a_next * x0_hat + b_next * eps).astype(x.dtype)

    return scan_trajectory(step, x0, xs, return_trajectory)


def ddim_interpolate(
    model_fn: ModelFn,
    s: Schedule,
    x0a: Array,
    x0b: Array,
    *,
    num_steps: int,
    lambdas,
    spacing: str = "leading",
    mean_type: str = "eps",
    var_type: str = "fixed_small",
) -> Array:
    """Semantic interpolation through DDIM latents (Song et al. 2021, sec. 5.4 and Fig. 6):

        x_T = ddim_encode(x0a), x'_T = ddim_encode(x0b),
        x-bar_0(lambda) = ddim_decode(slerp(x_T, x'_T; lambda))   (eta = 0, the same K steps).

    Deterministic: encoding and decoding are the eta = 0 DDIM maps on the same subsequence
    (``space_timesteps(T, num_steps, spacing)``), so lambda = 0 / 1 give the DDIM reconstructions
    of x0a / x0b. Both sources are encoded in one batched scan, all L * B latents decoded in one.

    Returns:
      (L, B, ...) decoded interpolants, one row per lambda.
    """
    _check_pair(x0a, x0b)
    lam = _check_lambdas(lambdas)
    ts = samplers.ddim_timesteps(s, num_steps, spacing)
    b = x0a.shape[0]
    z = ddim_encode(
        model_fn, s, jnp.concatenate([x0a, x0b], axis=0), timesteps=ts, mean_type=mean_type, var_type=var_type
    )
    za, zb = z[:b], z[b:]
    latents = jax.vmap(lambda l: slerp(za, zb, l))(lam.astype(za.dtype))  # (L, B, ...)
    flat = latents.reshape((-1,) + x0a.shape[1:])
    # eta = 0: the key only feeds noise that is multiplied by sigma = 0, so any fixed key is exact.
    x = samplers.ddim(
        model_fn, s, jax.random.key(0), flat.shape, timesteps=ts, eta=0.0, x_init=flat,
        mean_type=mean_type, var_type=var_type,
    )  # fmt: skip
    return x.reshape(latents.shape)
