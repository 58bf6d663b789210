"""Noise schedules: betas -> a `Schedule` pytree of every per-timestep table.

Conventions (see README "Conventions"): discrete time with T steps and a 0-based
index t in {0, ..., T-1}; index t is the paper's step t+1 (as improved-diffusion
and diffusers do), so

    alphas_cumprod[t]      = prod_{s <= t} (1 - betas[s])      (alpha-bar_{t+1})
    alphas_cumprod_prev[0] = 1                                  (alpha-bar_0 = 1)

All tables are computed once, in float64 NumPy, then cast to JAX's default float
dtype (float32, or float64 under ``jax_enable_x64``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

__all__ = [
    "Schedule",
    "from_betas",
    "linear",
    "cosine",
    "quadratic",
    "sigmoid",
    "respace",
    "space_timesteps",
    "get",
    "geometric_sigmas",
    "SCHEDULES",
]


class Schedule(NamedTuple):
    """Per-timestep tables of a discrete Gaussian diffusion, each of shape (T,).

    Fields (Ho et al. 2020, eqs. 4, 6, 7; index t is the paper's step t+1):
      betas:                          beta_t, the forward step variances.
      alphas:                         alpha_t = 1 - beta_t.
      alphas_cumprod:                 alpha-bar_t = prod_{s<=t} alpha_s.
      alphas_cumprod_prev:            alpha-bar_{t-1}, with alpha-bar_{-1} = 1.
      posterior_variance:             beta-tilde_t = beta_t (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t).
      posterior_log_variance_clipped: log beta-tilde_t, with beta-tilde_0 (= 0) replaced by
                                      beta-tilde_1 (improved-diffusion's clipping).
      posterior_mean_coef1:           beta_t sqrt(alpha-bar_{t-1}) / (1 - alpha-bar_t)   (multiplies x_0).
      posterior_mean_coef2:           (1 - alpha-bar_{t-1}) sqrt(alpha_t) / (1 - alpha-bar_t)  (multiplies x_t).

    A NamedTuple, hence a JAX pytree: it can be passed through ``jax.jit``,
    ``vmap`` and ``scan`` as an ordinary argument.
    """

    betas: Array
    alphas: Array
    alphas_cumprod: Array
    alphas_cumprod_prev: Array
    posterior_variance: Array
    posterior_log_variance_clipped: Array
    posterior_mean_coef1: Array
    posterior_mean_coef2: Array

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps (static: read from the table's shape)."""
        return int(self.betas.shape[0])


def _check_num_timesteps(num_timesteps: int) -> int:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)):
        raise ValueError(f"num_timesteps must be an int >= 1, got {num_timesteps!r}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    return int(num_timesteps)


def _check_beta_range(name: str, beta_start: float, beta_end: float) -> None:
    for label, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise ValueError(f"{name}: {label} must be a finite number in (0, 1), got {value!r}")


def from_betas(betas) -> Schedule:
    """Build a `Schedule` from a 1-D array of betas, each in the open interval (0, 1).

    Derived tables follow Ho et al. (2020), eqs. 4 and 6-7:
      alpha-bar_t = prod_{s<=t} (1 - beta_s),
      beta-tilde_t = beta_t (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t),
      mu-tilde_t(x_t, x_0) = coef1_t x_0 + coef2_t x_t.

    For T = 1, beta-tilde has no nonzero entry to clip to; log beta_0 is used instead.

    Raises:
      ValueError: if betas is not 1-D and non-empty, has non-finite entries, or has an
        entry outside (0, 1) (the offending index and value are named).
    """
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 1 or b.shape[0] < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
    bad = np.flatnonzero(~np.isfinite(b))
    if bad.size:
        raise ValueError(f"betas must be finite; betas[{bad[0]}] = {b[bad[0]]!r}")
    bad = np.flatnonzero((b <= 0.0) | (b >= 1.0))
    if bad.size:
        raise ValueError(
            f"betas must lie in the open interval (0, 1); betas[{bad[0]}] = {b[bad[0]]!r}"
        )
    alphas = 1.0 - b
    acp = np.cumprod(alphas)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = b * (1.0 - acp_prev) / (1.0 - acp)
    clip_to = post_var[1] if b.shape[0] > 1 else b[0]
    post_log_var = np.log(np.append(clip_to, post_var[1:]))
    coef1 = b * np.sqrt(acp_prev) / (1.0 - acp)
    coef2 = (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp)
    tables = (b, alphas, acp, acp_prev, post_var, post_log_var, coef1, coef2)
    dtype = jnp.asarray(0.0).dtype  # float32, or float64 under jax_enable_x64
    return Schedule(*(jnp.asarray(a, dtype=dtype) for a in tables))


def linear(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """DDPM's linear schedule (Ho et al. 2020, sec. 4): beta_t = linspace(beta_start, beta_end, T).

    The defaults are the paper's (1e-4 to 0.02 for T = 1000). Unlike improved-diffusion,
    the endpoints are not rescaled by 1000/T: pass them explicitly for other T.
    """
    t = _check_num_timesteps(num_timesteps)
    _check_beta_range("linear", beta_start, beta_end)
    return from_betas(np.linspace(beta_start, beta_end, t, dtype=np.float64))


def quadratic(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Quadratic schedule: beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (DDIM/diffusers)."""
    t = _check_num_timesteps(num_timesteps)
    _check_beta_range("quadratic", beta_start, beta_end)
    return from_betas(np.linspace(beta_start**0.5, beta_end**0.5, t, dtype=np.float64) ** 2)


def sigmoid(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, scale: float = 6.0
) -> Schedule:
    """Sigmoid schedule (GeoDiff, Xu et al. 2022): beta_t = lo + (hi - lo) * sigmoid(linspace(-scale, scale, T))."""
    t = _check_num_timesteps(num_timesteps)
    _check_beta_range("sigmoid", beta_start, beta_end)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"sigmoid: scale must be a finite positive number, got {scale!r}")
    z = np.linspace(-scale, scale, t, dtype=np.float64)
    return from_betas(beta_start + (beta_end - beta_start) / (1.0 + np.exp(-z)))


def cosine(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    alpha-bar(u) = f(u) / f(0),  f(u) = cos(((u + s) / (1 + s)) * pi / 2)^2,  u = t / T,
    beta_i = min(1 - alpha-bar((i + 1) / T) / alpha-bar(i / T), max_beta).
    """
    t = _check_num_timesteps(num_timesteps)
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"cosine: s must be a finite number >= 0, got {s!r}")
    if not (math.isfinite(max_beta) and 0.0 < max_beta < 1.0):
        raise ValueError(f"cosine: max_beta must lie in (0, 1), got {max_beta!r}")

    def f(u):
        return np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2

    u = np.arange(t + 1, dtype=np.float64) / t
    abar = f(u) / f(0.0)
    return from_betas(np.minimum(1.0 - abar[1:] / abar[:-1], max_beta))


SCHEDULES = {"linear": linear, "cosine": cosine, "quadratic": quadratic, "sigmoid": sigmoid}


def get(name: str, num_timesteps: int, **kwargs) -> Schedule:
    """Build a schedule by name ('linear', 'cosine', 'quadratic' or 'sigmoid')."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; allowed: {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_timesteps, **kwargs)


def space_timesteps(num_timesteps: int, num_steps: int, spacing: str = "leading") -> np.ndarray:
    """An ascending subsequence of {0..T-1} with `num_steps` entries (as a NumPy int array).

    spacing:
      'leading'  : range(0, T, T // N)[:N] (the DDIM paper's and improved-diffusion's ``ddimN``),
      'linspace' : round(linspace(0, T - 1, N)),
      'trailing' : round(arange(T, 0, -T / N)) - 1, reversed (Lin et al. 2024: includes T - 1).
    """
    t = _check_num_timesteps(num_timesteps)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= t:
        raise ValueError(f"num_steps must be an int in [1, {t}], got {num_steps!r}")
    n = int(num_steps)
    if spacing == "leading":
        steps = np.arange(0, t, t // n)[:n]
    elif spacing == "linspace":
        steps = np.round(np.linspace(0, t - 1, n)).astype(np.int64)
    elif spacing == "trailing":
        steps = (np.round(np.arange(t, 0, -t / n)).astype(np.int64) - 1)[::-1]
    else:
        raise ValueError(
            f"unknown spacing {spacing!r}; allowed: 'leading', 'linspace', 'trailing'"
        )
    steps = np.unique(steps.astype(np.int64))
    if steps.shape[0] != n:
        raise ValueError(f"spacing {spacing!r} gives duplicate timesteps for T={t}, N={n}")
    return steps


def respace(s: Schedule, timesteps) -> Schedule:
    """The schedule of a sub-sequence of timesteps (improved-diffusion's ``respace``).

    Keeps alpha-bar on the (ascending) subsequence tau_0 < ... < tau_{K-1} and recomputes
    beta_k = 1 - alpha-bar_{tau_k} / alpha-bar_{tau_{k-1}} (alpha-bar_{tau_{-1}} = 1), so that
    sampling the new K-step chain visits the same marginals q(x_{tau_k} | x_0). A model trained
    on the full chain is called with the original index tau_k (see `samplers.ddpm`'s `timesteps`).
    """
    ts = np.asarray(timesteps)
    if ts.ndim != 1 or ts.shape[0] < 1 or not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(f"timesteps must be a non-empty 1-D int array, got {timesteps!r}")
    if np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] >= s.num_timesteps:
        raise ValueError(
            f"timesteps must be strictly increasing within [0, {s.num_timesteps - 1}], got {ts.tolist()}"
        )
    acp = np.asarray(s.alphas_cumprod, dtype=np.float64)[ts]
    prev = np.append(1.0, acp[:-1])
    return from_betas(1.0 - acp / prev)


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> Array:
    """NCSN's noise levels: a geometric sequence sigma_1 > ... > sigma_L (Song & Ermon 2019, sec. 4.2).

    sigma_i = exp(linspace(log sigma_max, log sigma_min, L))_i.
    """
    if not (math.isfinite(sigma_max) and math.isfinite(sigma_min) and 0 < sigma_min < sigma_max):
        raise ValueError(
            f"need finite 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}"
        )
    if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or num_levels < 1:
        raise ValueError(f"num_levels must be an int >= 1, got {num_levels!r}")
    return jnp.asarray(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_levels)),
                       dtype=jnp.asarray(0.0).dtype)
