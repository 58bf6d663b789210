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
    "terminal_alpha_bar",
    "check_terminal_snr",
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


def _scaled_default_betas(num_timesteps: int, beta_start: float | None, beta_end: float | None) -> tuple[float, float]:
    """(beta_start, beta_end), a None replaced by improved-diffusion's T-scaled default.

    scale = 1000 / T,  beta_start = scale * 1e-4,  beta_end = scale * 0.02
    (Nichol & Dhariwal 2021, improved-diffusion's ``get_named_beta_schedule('linear', T)``): the
    DDPM endpoints at T = 1000, and for other T the same sum of betas (so about the same
    terminal alpha-bar, ~4e-5) instead of a chain that leaves signal at x_T.
    """
    scale = 1000.0 / num_timesteps
    return (
        scale * 1e-4 if beta_start is None else beta_start,
        scale * 0.02 if beta_end is None else beta_end,
    )


def _check_endpoints(name: str, num_timesteps: int, beta_start, beta_end, defaulted: tuple[bool, bool]) -> None:
    """Each endpoint must be a finite number in (0, 1); a bad one that came from the T-scaled default says so."""
    pairs = (("beta_start", beta_start, defaulted[0]), ("beta_end", beta_end, defaulted[1]))
    for label, value, was_default in pairs:  # explicit values first: name the caller's bad value
        if not was_default and not (math.isfinite(value) and 0.0 < value < 1.0):
            raise ValueError(f"{name}: {label} must be a finite number in (0, 1), got {value!r}")
    for label, value, was_default in pairs:
        if was_default and not 0.0 < value < 1.0:
            raise ValueError(
                f"{name}: the default {label} scaled by 1000/T is {value!r} >= 1 for T={num_timesteps} "
                "(the scaled defaults need T >= 21); pass beta_start and beta_end explicitly"
            )


def linear(num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None) -> Schedule:
    """DDPM's linear schedule (Ho et al. 2020, sec. 4): beta_t = linspace(beta_start, beta_end, T).

    A None endpoint takes improved-diffusion's T-scaled default (Nichol & Dhariwal 2021; their
    ``get_named_beta_schedule('linear', T)``): with scale = 1000 / T,

        beta_start = scale * 1e-4,   beta_end = scale * 0.02,

    which is exactly DDPM's 1e-4 .. 0.02 at T = 1000 and keeps the terminal alpha-bar near 4e-5 for
    other T (unscaled, alpha-bar_{T-1} would be 0.60 / 0.36 / 0.13 at T = 50 / 100 / 200). Explicit
    values are used as given. For T <= 20 the scaled beta_end is >= 1: pass the endpoints explicitly.
    """
    t = _check_num_timesteps(num_timesteps)
    defaulted = (beta_start is None, beta_end is None)
    beta_start, beta_end = _scaled_default_betas(t, beta_start, beta_end)
    _check_endpoints("linear", t, beta_start, beta_end, defaulted)
    return from_betas(np.linspace(beta_start, beta_end, t, dtype=np.float64))


def quadratic(num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None) -> Schedule:
    """Quadratic schedule: beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (DDIM/diffusers).

    A None endpoint takes the T-scaled default of `linear` (1000/T times 1e-4 or 0.02), which scales
    every beta by 1000/T and so keeps the sum of betas (and alpha-bar_{T-1} ~ 7e-4) of T = 1000.
    """
    t = _check_num_timesteps(num_timesteps)
    defaulted = (beta_start is None, beta_end is None)
    beta_start, beta_end = _scaled_default_betas(t, beta_start, beta_end)
    _check_endpoints("quadratic", t, beta_start, beta_end, defaulted)
    return from_betas(np.linspace(beta_start**0.5, beta_end**0.5, t, dtype=np.float64) ** 2)


def sigmoid(
    num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None, scale: float = 6.0
) -> Schedule:
    """Sigmoid schedule (GeoDiff, Xu et al. 2022): beta_t = lo + (hi - lo) * sigmoid(linspace(-scale, scale, T)).

    A None endpoint takes the T-scaled default of `linear` (1000/T times 1e-4 or 0.02), so the sum
    of betas (and alpha-bar_{T-1} ~ 4e-5) is that of T = 1000.
    """
    t = _check_num_timesteps(num_timesteps)
    defaulted = (beta_start is None, beta_end is None)
    beta_start, beta_end = _scaled_default_betas(t, beta_start, beta_end)
    _check_endpoints("sigmoid", t, beta_start, beta_end, defaulted)
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


def _spacing_error(t: int, n: int, reason: str) -> ValueError:
    return ValueError(
        f"spacing 'leading' cannot give {n} of T={t} steps: {reason}; use spacing='linspace' or "
        "'trailing' (both end at T - 1 for every N <= T), or a number of steps that divides T or is <= T/2"
    )


def space_timesteps(num_timesteps: int, num_steps: int, spacing: str = "leading") -> np.ndarray:
    """An ascending subsequence of {0..T-1} with `num_steps` entries (as a NumPy int array).

    spacing (T timesteps, N = num_steps):
      'leading'  : range(0, T, T // N)[:N], i.e. arange(N) * (T // N): diffusers' 'leading' (the DDIM
                   paper's steps where N divides T). The first (largest) step is (N - 1) (T // N): T - T/N
                   when N divides T, lower otherwise (N = 300 / 400 of T = 1000 start at 897 / 798, where
                   alpha-bar is 2.9e-4 / 1.6e-3 against 4e-5 at 999; accepted as diffusers does, and the
                   sampler's config reader, `diffax.training.sampler_builders`, logs a warning naming the first step).
                   Refused, with a ValueError naming the alternatives: exactly T/2 < N < T, where the
                   stride T // N is 1 and the steps would be 0..N-1 (600 of 1000 would start at 599).
                   improved-diffusion's ``ddimN`` differs: it takes the smallest integer stride i with
                   len(range(0, T, i)) = ceil(T / i) = N and returns range(0, T, i), and refuses every N
                   not of that form. The two agree where N divides T. Otherwise improved-diffusion refuses N
                   that 'leading' accepts (300 or 400 of 1000), accepts one N that it refuses (for odd T,
                   N = (T + 1) / 2 with stride 2, ending at T - 1: 500 of 999), and may pick a larger
                   stride (T = 10, N = 3: {0, 4, 8} against {0, 3, 6}).
      'linspace' : round(linspace(0, T - 1, N)) (always includes 0 and, for N > 1, T - 1),
      'trailing' : round(T - k T / N) - 1 for k = 0..N-1, reversed (Lin et al. 2024; diffusers'
                   'trailing'): includes T - 1.
    'linspace' and 'trailing' give N distinct steps for every 1 <= N <= T.

    Raises:
      ValueError: num_steps not an int in [1, T], an unknown spacing, or 'leading' with T/2 < N < T.
    """
    t = _check_num_timesteps(num_timesteps)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= t:
        raise ValueError(f"num_steps must be an int in [1, {t}], got {num_steps!r}")
    n = int(num_steps)
    if spacing == "leading":
        stride = t // n
        if stride == 1 and n < t:
            raise _spacing_error(t, n, f"the stride T // N is 1, so the steps would be 0..{n - 1}")
        steps = np.arange(n, dtype=np.int64) * stride
    elif spacing == "linspace":
        steps = np.round(np.linspace(0, t - 1, n)).astype(np.int64)
    elif spacing == "trailing":
        # arange(T, 0, -T/N) (diffusers' form) can have N + 1 entries in floating point (e.g.
        # T = 15, N = 13); its first N are the k = 0..N-1 values.
        steps = (np.round(np.arange(t, 0, -t / n)).astype(np.int64) - 1)[:n][::-1]
    else:
        raise ValueError(
            f"unknown spacing {spacing!r}; allowed: 'leading', 'linspace', 'trailing'"
        )
    steps = np.unique(steps.astype(np.int64))
    if steps.shape[0] != n:  # not reached for the rules above (checked for all N <= T <= 1000)
        raise ValueError(f"spacing {spacing!r} gives duplicate timesteps for T={t}, N={n}")
    return steps


def terminal_alpha_bar(s: Schedule) -> float:
    """alpha-bar_{T-1}, the fraction of signal variance left at the last timestep (a float)."""
    return float(np.asarray(s.alphas_cumprod, dtype=np.float64)[-1])


def check_terminal_snr(s: Schedule, max_alpha_bar: float = 1e-3) -> float:
    """Refuse a schedule whose last step keeps signal: returns alpha-bar_{T-1} if <= max_alpha_bar.

    Every sampler starts from x_T ~ N(0, I), but q(x_T | x_0) = N(sqrt(abar_{T-1}) x_0,
    (1 - abar_{T-1}) I); with abar_{T-1} well above 0 the sampler starts off the marginal it was
    trained on (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed").
    E.g. DDPM's unscaled linear betas 1e-4..0.02 at T = 100 end at abar = 0.36.

    Raises:
      ValueError: naming T, alpha-bar_{T-1} and the remedies, when alpha-bar_{T-1} > max_alpha_bar.
    """
    if not (math.isfinite(max_alpha_bar) and 0.0 <= max_alpha_bar <= 1.0):
        raise ValueError(f"max_alpha_bar must be a number in [0, 1], got {max_alpha_bar!r}")
    abar = terminal_alpha_bar(s)
    if not abar <= max_alpha_bar:
        raise ValueError(
            f"the schedule with T={s.num_timesteps} steps ends at alpha-bar_(T-1) = {abar:.3g} > "
            f"{max_alpha_bar:g}: x_T keeps sqrt(alpha-bar) = {math.sqrt(abar):.3g} of the data, so sampling "
            "from x_T ~ N(0, I) starts off the trained marginal. Use more timesteps, larger betas "
            "(e.g. linear(T) with the default, 1000/T-scaled beta_start/beta_end), or the cosine schedule"
        )
    return abar


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
