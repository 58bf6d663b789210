"""EDM (Karras et al. 2022): preconditioning, the sigma-sampled loss, the sigma grid and the Heun sampler.

"Elucidating the Design Space of Diffusion-Based Generative Models" (Karras, Aittala, Aila, Laine,
NeurIPS 2022; reference code NVlabs/edm). Data y, noise level sigma, noised input x = y + sigma n,
n ~ N(0, I). A denoiser D(x; sigma) ~ E[y | x] is built from a raw network F as

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))   (EDM eq. 7)

with the coefficients of EDM Table 1 (`precondition`), trained with the loss of EDM eq. 8
(`edm_loss`, weight `loss_weight`), and sampled with EDM Algorithm 2 on the time steps of EDM
eq. 5 (`edm_sampler`, `edm_sigmas`). The probability-flow ODE in EDM's sigma(t) = t, s(t) = 1
form is dx/dsigma = (x - D(x; sigma)) / sigma (EDM eq. 3 with Table 1's "EDM" column).

`denoiser_from_discrete` turns any discrete-time diffax model (eps / x0 / v) into such a D
(EDM Appendix C.3, NVlabs' ``iDDPMPrecond``), so `edm_sampler` samples DDPM-trained models too.

Conventions: ``denoise_fn(x, sigma) -> D(x; sigma)`` with x of shape (B, ...) and sigma of shape
(B,). Everything here is pure JAX and never jits (callers do).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffax import diffusion
from diffax._util import check_choice, check_int, check_positive, expand_to, mean_flat
from diffax.schedules import Schedule

Array = jnp.ndarray
DenoiseFn = Callable[[Array, Array], Array]

__all__ = [
    "KINDS",
    "VP_BETA_D",
    "VP_BETA_MIN",
    "VP_M",
    "precondition",
    "vp_sigma_inv",
    "loss_weight",
    "edm_loss",
    "edm_sigmas",
    "edm_sampler",
    "denoiser_from_discrete",
]

KINDS = ("edm", "vp", "ve")
# VP preconditioning constants (EDM Table 1; NVlabs `VPPrecond` defaults).
VP_BETA_D = 19.9
VP_BETA_MIN = 0.1
VP_M = 1000


def vp_sigma_inv(sigma: Array, *, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> Array:
    """t = sigma^{-1}(sigma) of the VP schedule sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1):

        t = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d

    (EDM Table 1, "VP" column; NVlabs `VPPrecond.sigma_inv`; log1p for accuracy at small sigma.)
    """
    sigma = jnp.asarray(sigma)
    return (jnp.sqrt(beta_min**2 + 2.0 * beta_d * jnp.log1p(sigma**2)) - beta_min) / beta_d


def precondition(kind: str, sigma: Array, *, sigma_data: float = 0.5) -> tuple[Array, Array, Array, Array]:
    """(c_skip, c_out, c_in, c_noise) at noise level ``sigma`` (any shape), EDM Table 1.

    'vp' (Song et al. 2021's VP, NVlabs `VPPrecond`, beta_d = 19.9, beta_min = 0.1, M = 1000):
        c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) sigma^{-1}(sigma)
        (`vp_sigma_inv`; F is an eps-prediction: D = x - sigma F).
    've' (Song et al. 2021's VE, NVlabs `VEPrecond`):
        c_skip = 1, c_out = sigma, c_in = 1, c_noise = log(sigma / 2).
    'edm' (EDM's own, NVlabs `EDMPrecond`; ``sigma_data`` = the data's standard deviation):
        c_skip = sigma_d^2 / (sigma^2 + sigma_d^2), c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2),
        c_in = 1 / sqrt(sigma^2 + sigma_d^2), c_noise = log(sigma) / 4.
    ``sigma_data`` is used by 'edm' only. Every output has sigma's shape and float dtype.
    """
    check_choice("preconditioning kind", kind, KINDS)
    sigma = jnp.asarray(sigma)
    if not jnp.issubdtype(sigma.dtype, jnp.floating):
        sigma = sigma.astype(jnp.result_type(float))
    one = jnp.ones_like(sigma)
    if kind == "vp":
        return one, -sigma, 1.0 / jnp.sqrt(sigma**2 + 1.0), (VP_M - 1) * vp_sigma_inv(sigma)
    if kind == "ve":
        return one, sigma, one, jnp.log(0.5 * sigma)
    check_positive("sigma_data", sigma_data)
    sd2 = sigma_data**2
    c_skip = sd2 / (sigma**2 + sd2)
    c_out = sigma * sigma_data / jnp.sqrt(sigma**2 + sd2)
    c_in = 1.0 / jnp.sqrt(sigma**2 + sd2)
    return c_skip, c_out, c_in, jnp.log(sigma) / 4.0


def loss_weight(sigma: Array, *, sigma_data: float = 0.5) -> Array:
    """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 = 1 / c_out(sigma)^2 (EDM Table 1 and
    eq. 8): with it the optimal denoiser's expected loss is exactly 1 per dimension at every sigma when
    the data are N(., sigma_d^2 I)."""
    sigma = jnp.asarray(sigma)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(
    denoise_fn: DenoiseFn,
    key: Array,
    x0: Array,
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float = 0.5,
) -> Array:
    """Per-example EDM loss (B,) (EDM eq. 2 weighted as eq. 8; NVlabs `training/loss.py` `EDMLoss`):

        ln sigma ~ N(P_mean, P_std^2),  n ~ N(0, I),
        loss_b = lambda(sigma_b) * mean_over_dims (D(y_b + sigma_b n_b; sigma_b) - y_b)^2.

    Reduction: the MEAN over the non-batch dimensions (as diffax's other losses, `mean_flat`).
    NVlabs returns the elementwise loss and its training loop SUMS it over dims (and averages over
    the batch), so NVlabs' per-example loss is this one times the number of dimensions d (the same
    gradient direction; Adam's step is invariant to that constant, a learning rate tuned for SGD is not).
    ``key`` is split once: one part for sigma, one for n (never reused).
    """
    check_positive("p_std", p_std, allow_zero=True)
    k_sigma, k_noise = jax.random.split(key)
    b = x0.shape[0]
    sigma = jnp.exp(jax.random.normal(k_sigma, (b,), dtype=x0.dtype) * p_std + p_mean)
    n = jax.random.normal(k_noise, x0.shape, dtype=x0.dtype) * expand_to(sigma, x0.ndim)
    denoised = denoise_fn(x0 + n, sigma)
    return loss_weight(sigma, sigma_data=sigma_data) * mean_flat((denoised - x0) ** 2)


def _check_grid(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> int:
    n = check_int("num_steps", num_steps, 2)
    check_positive("sigma_min", sigma_min)
    check_positive("sigma_max", sigma_max)
    check_positive("rho", rho)
    if not float(sigma_max) > float(sigma_min):
        raise ValueError(f"sigma_max must be > sigma_min, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    return n


def edm_sigmas(num_steps: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Array:
    """EDM's time steps (EDM eq. 5), num_steps + 1 values, decreasing, the last 0:

        t_i = (sigma_max^{1/rho} + i / (N - 1) (sigma_min^{1/rho} - sigma_max^{1/rho}))^rho,  i < N;  t_N = 0.

    t_0 = sigma_max, t_{N-1} = sigma_min. num_steps N >= 2 (N = 1 divides by zero in eq. 5).
    """
    n = _check_grid(num_steps, sigma_min, sigma_max, rho)
    i = np.arange(n, dtype=np.float64)  # float64 on the host as NVlabs, then the default float dtype
    lo, hi = float(sigma_min) ** (1.0 / rho), float(sigma_max) ** (1.0 / rho)
    t = (hi + i / (n - 1) * (lo - hi)) ** rho
    return jnp.asarray(np.append(t, 0.0), dtype=jnp.result_type(float))


def edm_sampler(
    denoise_fn: DenoiseFn,
    latents: Array,
    *,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    key: Array | None = None,
) -> Array:
    """EDM Algorithm 2 (NVlabs `generate.py` `edm_sampler`): Heun's method on the probability-flow ODE
    dx/dsigma = (x - D(x; sigma)) / sigma over `edm_sigmas`, with optional stochastic churn.

    x_0 = latents * t_0 (latents ~ N(0, I), t_0 = sigma_max). For i = 0..N-1:
        gamma_i = min(S_churn / N, sqrt(2) - 1) if S_min <= t_i <= S_max else 0
        t_hat = t_i + gamma_i t_i;   x_hat = x_i + sqrt(t_hat^2 - t_i^2) S_noise eps_i
        d = (x_hat - D(x_hat; t_hat)) / t_hat;   x_{i+1} = x_hat + (t_{i+1} - t_hat) d       (Euler)
        if i < N - 1:  d' = (x_{i+1} - D(x_{i+1}; t_{i+1})) / t_{i+1}
                       x_{i+1} = x_hat + (t_{i+1} - t_hat) (d + d') / 2                  (Heun)
    One ``lax.scan`` over the N steps; the last step's correction is a ``lax.cond`` branch that is not
    taken, so the network is evaluated 2N - 1 times. With S_churn = 0 the sampler is deterministic and
    ``key`` is not needed (and ignored if given); with S_churn > 0 a ``key`` is required and step i
    draws eps_i from ``fold_in(key, i)``. Runs in the latents' dtype (NVlabs runs it in float64; pass
    float64 latents under x64 for that). Differences from NVlabs: no ``net.round_sigma`` (the identity
    for its VP / VE / EDM networks) and no clamping of sigma_min / sigma_max to the network's range.
    """
    n = _check_grid(num_steps, sigma_min, sigma_max, rho)
    for name, v in (("S_churn", S_churn), ("S_min", S_min), ("S_noise", S_noise)):
        check_positive(name, v, allow_zero=True)
    if not float(S_max) >= float(S_min):
        raise ValueError(f"S_max must be >= S_min, got S_max={S_max}, S_min={S_min}")
    stochastic = float(S_churn) > 0.0
    if stochastic and key is None:
        raise ValueError(
            f"edm_sampler: S_churn={S_churn} > 0 draws fresh noise each step and needs a key; got key=None"
        )

    latents = jnp.asarray(latents)
    dtype = latents.dtype
    b = latents.shape[0]
    t_steps = edm_sigmas(n, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho).astype(dtype)
    t_cur, t_next = t_steps[:-1], t_steps[1:]
    in_range = (t_cur >= S_min) & (t_cur <= S_max)
    gamma = jnp.where(in_range, min(float(S_churn) / n, math.sqrt(2.0) - 1.0), 0.0).astype(dtype)
    t_hat = t_cur + gamma * t_cur
    # sqrt(t_hat^2 - t_cur^2) written without cancellation (a fused multiply-add can make the
    # difference of squares slightly negative, hence NaN, when gamma = 0):
    churn_std = t_cur * jnp.sqrt(gamma * (2.0 + gamma)) * S_noise

    def denoise(x: Array, sigma: Array) -> Array:
        return denoise_fn(x, jnp.full((b,), sigma, dtype)).astype(dtype)

    def step(x: Array, inp) -> tuple[Array, None]:
        i, std, t_h, t_n = inp
        if stochastic:
            x = x + std * jax.random.normal(jax.random.fold_in(key, i), x.shape, dtype)
        d = (x - denoise(x, t_h)) / t_h
        x_euler = x + (t_n - t_h) * d

        def heun(_):
            d_prime = (x_euler - denoise(x_euler, t_n)) / t_n
            return x + (t_n - t_h) * (0.5 * d + 0.5 * d_prime)

        return jax.lax.cond(i < n - 1, heun, lambda _: x_euler, None), None

    xs = (jnp.arange(n, dtype=jnp.int32), churn_std, t_hat, t_next)
    x, _ = jax.lax.scan(step, latents * t_steps[0], xs)
    return x


def denoiser_from_discrete(model_fn: Callable[[Array, Array], Array], schedule: Schedule, *,
                           mean_type: str = "eps") -> DenoiseFn:
    """A discrete-time model ``model_fn(x_t, t)`` (t int32 of shape (B,)) as an EDM denoiser D(x; sigma).

    x_t = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps is x_sigma = x_0 + sigma_k eps scaled by
    sqrt(abar_k) = 1 / sqrt(1 + sigma_k^2), with sigma_k = sqrt(1 / abar_k - 1). So

        k(sigma) = argmin_k |sigma - sigma_k|   (NVlabs `iDDPMPrecond.round_sigma`),
        D(x; sigma) = x_0-prediction of model_fn(x / sqrt(1 + sigma^2), k)  under ``mean_type``,

    exact (for an exact model) when sigma = sigma_k (EDM Appendix C.3, "iDDPM" column of Table 1).
    A learned-variance output (2C channels) is split with `diffusion.split_model_output` (its mean
    half is used); eps / x0 / v go through `diffusion.predict_x0`. Class labels: close over them in
    ``model_fn``.
    """
    check_choice("mean_type", mean_type, diffusion.MEAN_TYPES)
    sigmas_k = jnp.sqrt(1.0 / schedule.alphas_cumprod - 1.0)

    def denoise_fn(x: Array, sigma: Array) -> Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
        k = jnp.argmin(jnp.abs(sigma[:, None] - sigmas_k[None, :].astype(x.dtype)), axis=-1).astype(jnp.int32)
        x_t = x / expand_to(jnp.sqrt(1.0 + sigma**2), x.ndim)
        out, _ = diffusion.split_model_output(model_fn(x_t, k), x.shape)
        return diffusion.predict_x0(schedule, out, x_t, k, mean_type)

    return denoise_fn
