"""Variance-preserving processes: the VP SDE (score_sde's linear beta, or a discrete schedule's) and the cosine VP.

VP mapping to the discrete schedule (`VP.from_schedule`). The discrete index k in {0..T-1} (paper
step k+1) sits at tau_k = (k+1)/T, and tau = 0 is the data (abar = 1). log abar is the
piecewise-LINEAR interpolation in tau of the knots

    log abar(j/T) = log alphas_cumprod[j-1]  (j = 1..T),   log abar(0) = 0,

i.e. beta(tau) is piecewise constant, beta = -d log abar/dtau = -T log(1 - betas[k]) on
((k)/T, (k+1)/T], so abar(tau_k) == alphas_cumprod[k] exactly. For DDPM's linear schedule with
betas = linspace(beta_min/T, beta_max/T, T), -T log(1 - betas[k]) -> beta_min + tau (beta_max -
beta_min) as T -> infinity: this is score_sde's VPSDE with beta_min = 0.1, beta_max = 20 (DDPM's
1e-4..0.02 at T = 1000), available in closed form as `vp_linear()`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from diffax.processes.base import Process, check_finite_positive, float_dtype, pytree_dataclass
from diffax.schedules import Schedule

Array = jnp.ndarray

__all__ = ["VP", "vp_linear", "CosineVP", "vp_cosine"]


# ============================================================================ VP


@pytree_dataclass(("beta_min", "beta_max", "log_alpha_bar_knots"), ())
class VP(Process):
    """A VP diffusion in continuous time tau in [0, 1] (Song et al. 2021, eq. 11 / App. B):
    alpha = sqrt(abar(tau)), sigma = sqrt(1 - abar(tau)).

    beta(tau) = beta_min + tau (beta_max - beta_min)  +  beta_pl(tau), where beta_pl is the
    piecewise-constant rate of the piecewise-linear log abar through `log_alpha_bar_knots` (N+1
    values on the uniform grid tau_j = j / N, the first 0). Hence

        log abar(tau) = -(beta_min tau + 1/2 (beta_max - beta_min) tau^2) + interp(tau; knots).

    `vp_linear(beta_min, beta_max)` is score_sde's VPSDE (knots all 0); `from_schedule(s)` has
    beta_min = beta_max = 0 and the discrete schedule's knots (abar(tau_k) = alphas_cumprod[k]
    at tau_k = (k+1)/T).
    """

    beta_min: Array
    beta_max: Array
    log_alpha_bar_knots: Array

    t_min = 0.0
    t_max = 1.0
    prior_std = 1.0

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_schedule(cls, s: Schedule) -> "VP":
        """The continuous VP whose abar(tau) interpolates the discrete schedule.

        knots: log abar(j / T) = log alphas_cumprod[j - 1] for j = 1..T and 0 at tau = 0, joined
        linearly in tau; so abar((k + 1) / T) = alphas_cumprod[k] and on (k/T, (k+1)/T]
        beta(tau) = -T log(1 - betas[k]) (piecewise constant). Computed in float64 NumPy.
        """
        acp = np.asarray(s.alphas_cumprod, dtype=np.float64)
        knots = np.concatenate([[0.0], np.log(acp)])
        dtype = float_dtype()
        zero = jnp.zeros((), dtype)
        return cls(zero, zero, jnp.asarray(knots, dtype))

    @property
    def dtype(self):
        return jnp.asarray(self.log_alpha_bar_knots).dtype


    # ------------------------------------------------------------------ tables
    @property
    def num_knot_intervals(self) -> int:
        """N, the number of linear pieces of the interpolated part (T for `from_schedule`)."""
        return int(self.log_alpha_bar_knots.shape[0]) - 1

    def _piece(self, tau: Array) -> tuple[Array, Array]:
        """(value, slope) of the piecewise-linear part at tau (the right-hand slope at a knot)."""
        n = self.num_knot_intervals
        knots = self.log_alpha_bar_knots
        tau = jnp.asarray(tau, dtype=jnp.result_type(tau, knots.dtype))
        j = jnp.clip(jnp.floor(tau * n), 0, n - 1)
        left = jnp.take(knots, j.astype(jnp.int32))
        slope = (jnp.take(knots, j.astype(jnp.int32) + 1) - left) * n
        return left + slope * (tau - j / n), slope

    def log_alpha_bar(self, tau: Array) -> Array:
        """log abar(tau) = -int_0^tau beta(u) du."""
        tau = jnp.asarray(tau)
        value, _ = self._piece(tau)
        return -(self.beta_min * tau + 0.5 * (self.beta_max - self.beta_min) * tau**2) + value

    def alpha_bar(self, tau: Array) -> Array:
        """abar(tau) = exp(-int_0^tau beta): the squared signal scale of q(x_tau | x_0)."""
        return jnp.exp(self.log_alpha_bar(tau))

    def beta(self, tau: Array) -> Array:
        """beta(tau) = -d log abar / dtau (right derivative at the knots of `from_schedule`)."""
        tau = jnp.asarray(tau)
        _, slope = self._piece(tau)
        return self.beta_min + tau * (self.beta_max - self.beta_min) - slope

    def tau_from_log_alpha_bar(self, log_alpha_bar: Array, *, iterations: int = 64) -> Array:
        """The inverse of `log_alpha_bar` on [0, 1] (it is strictly decreasing), by bisection.

        `iterations` halvings of [0, 1] (64 reach float64 resolution); values outside
        [log abar(1), 0] map to the nearest end. Elementwise; differentiable nowhere (not needed:
        it only places a model's time input).
        """
        target = jnp.asarray(log_alpha_bar)
        dtype = jnp.result_type(target.dtype, self.log_alpha_bar_knots.dtype)
        lo = jnp.zeros(target.shape, dtype)
        hi = jnp.ones(target.shape, dtype)

        def halve(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = self.log_alpha_bar(mid) > target  # abar(mid) still too large: go right
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, iterations, halve, (lo, hi))
        return 0.5 * (lo + hi)

    def marginal_coefs(self, tau: Array) -> tuple[Array, Array]:
        """(sqrt(abar(tau)), 1 - abar(tau)): scale and noise variance of q(x_tau | x_0) (eq. 29)."""
        log_ab = self.log_alpha_bar(tau)
        return jnp.exp(0.5 * log_ab), -jnp.expm1(log_ab)

    # ------------------------------------------------------------------ the Process interface
    def alpha(self, t: Array) -> Array:
        """sqrt(abar(t))."""
        return jnp.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Array) -> Array:
        """sqrt(1 - abar(t)), as sqrt(-expm1(log abar)) (accurate as t -> 0)."""
        return jnp.sqrt(-jnp.expm1(self.log_alpha_bar(t)))

    def dalpha(self, t: Array) -> Array:
        """d sqrt(abar)/dt = -1/2 beta sqrt(abar)."""
        return -0.5 * self.beta(t) * self.alpha(t)

    def dsigma(self, t: Array) -> Array:
        """d sqrt(1 - abar)/dt = 1/2 beta abar / sigma."""
        return 0.5 * self.beta(t) * self.alpha_bar(t) / self.sigma(t)

    def log_snr(self, t: Array) -> Array:
        """lambda = log abar - log(1 - abar)."""
        log_ab = self.log_alpha_bar(t)
        return log_ab - jnp.log(-jnp.expm1(log_ab))

    def t_of_log_snr(self, lam: Array) -> Array:
        """abar = sigmoid(lambda), so log abar = log_sigmoid(lambda), inverted by `tau_from_log_alpha_bar`."""
        return self.tau_from_log_alpha_bar(jax.nn.log_sigmoid(jnp.asarray(lam)))

    def rho(self, t: Array) -> Array:
        """rho = -log abar (= softplus(-lambda) since alpha^2 + sigma^2 = 1)."""
        return -self.log_alpha_bar(jnp.asarray(t))

    def t_of_rho(self, r: Array) -> Array:
        return self.tau_from_log_alpha_bar(-jnp.asarray(r))

    def pf_coefs(self, t: Array, time_variable: str = "tau") -> tuple[Array, Array]:
        """'tau': (beta, 1), eq. 13's -1/2 beta (x + score); 'rho': (1, 1) (alpha^2 + sigma^2 = 1, drho = beta dt)."""
        beta = self.beta(t)
        one = jnp.ones_like(beta)
        return (beta if time_variable == "tau" else one), one


def vp_linear(beta_min: float = 0.1, beta_max: float = 20.0) -> VP:
    """score_sde's VPSDE: beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, eq. 33),
    alpha(t) = exp(-1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min), sigma = sqrt(1 - alpha^2)."""
    for name, v in (("beta_min", beta_min), ("beta_max", beta_max)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0.0):
            raise ValueError(f"vp_linear: {name} must be finite and >= 0, got {v!r}")
    if beta_min + beta_max <= 0.0:
        raise ValueError(f"vp_linear: need beta_min + beta_max > 0, got {beta_min!r}, {beta_max!r}")
    dtype = float_dtype()
    return VP(jnp.asarray(beta_min, dtype), jnp.asarray(beta_max, dtype), jnp.zeros((2,), dtype))


# ============================================================================ cosine VP


@pytree_dataclass((), ("s", "t_max"))
class CosineVP(Process):
    """Nichol & Dhariwal's cosine schedule in continuous t (2021, eq. 17):
    abar(t) = cos^2(phi(t)) / cos^2(phi(0)),  phi(t) = (t + s)/(1 + s) pi/2,
    alpha = cos(phi(t)) / cos(phi(0)), sigma^2 = 1 - alpha^2 = sin(phi - phi0) sin(phi + phi0) / cos^2(phi0)
    (cos^2 a - cos^2 b = sin(b - a) sin(b + a), accurate as t -> 0). t in [0, t_max]; abar(1) = 0, so
    t_max < 1 (DPM-Solver's `NoiseScheduleVP` T = 0.9946, Lu et al. 2022; `vp_cosine`)."""

    s: float
    t_max: float

    t_min = 0.0
    prior_std = 1.0

    def _phi(self, t: Array) -> Array:
        return (jnp.asarray(t) + self.s) / (1.0 + self.s) * (math.pi / 2)

    @property
    def _phi0(self) -> float:
        return self.s / (1.0 + self.s) * (math.pi / 2)

    def alpha(self, t: Array) -> Array:
        return jnp.cos(self._phi(t)) / math.cos(self._phi0)

    def sigma(self, t: Array) -> Array:
        phi, phi0 = self._phi(t), self._phi0
        return jnp.sqrt(jnp.sin(phi - phi0) * jnp.sin(phi + phi0)) / math.cos(phi0)

    def dalpha(self, t: Array) -> Array:
        """-sin(phi) phi' / cos(phi0), phi' = pi / (2 (1 + s))."""
        return -jnp.sin(self._phi(t)) * (math.pi / (2 * (1.0 + self.s))) / math.cos(self._phi0)

    def dsigma(self, t: Array) -> Array:
        """From alpha^2 + sigma^2 = 1: sigma' = -alpha alpha' / sigma."""
        return -self.alpha(t) * self.dalpha(t) / self.sigma(t)

    def t_of_log_snr(self, lam: Array) -> Array:
        """abar = sigmoid(lambda): phi = arccos(sqrt(abar) cos(phi0)), t = phi 2 (1 + s) / pi - s."""
        sqrt_ab = jnp.exp(0.5 * jax.nn.log_sigmoid(jnp.asarray(lam)))
        return jnp.arccos(sqrt_ab * math.cos(self._phi0)) * (2 * (1.0 + self.s) / math.pi) - self.s


def vp_cosine(s: float = 0.008, t_max: float = 0.9946) -> CosineVP:
    """The cosine VP (Nichol & Dhariwal 2021, eq. 17; their offset s = 0.008) on [0, t_max]."""
    check_finite_positive("vp_cosine", s=s, t_max=t_max)
    if not t_max < 1.0:
        raise ValueError(f"vp_cosine: t_max must be < 1 (abar(1) = 0), got {t_max!r}")
    return CosineVP(float(s), float(t_max))
