"""Continuous-time noise processes: x_tau = alpha(tau) x_0 + sigma(tau) z on tau in [0, 1], as pytrees.

The home of every continuous-time process in diffax (the discrete-time counterpart is
`diffax.schedules`). Today it holds the variance-preserving one, `ContinuousVP`, with
alpha(tau) = sqrt(abar(tau)) and sigma(tau)^2 = 1 - abar(tau); the probability-flow ODE that
runs on it is `diffax.ode`, its exact likelihood `diffax.ode_likelihood`.

The VP SDE (Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 11 and
App. B)  dx = -1/2 beta(tau) x dtau + sqrt(beta(tau)) dw  on tau in [0, 1] has the marginals
x_tau = sqrt(abar(tau)) x_0 + sqrt(1 - abar(tau)) z  with

    abar(tau) = exp(-int_0^tau beta(u) du).

Mapping to the discrete schedule (`ContinuousVP.from_schedule`). The discrete index k in
{0..T-1} (paper step k+1) sits at tau_k = (k+1)/T, and tau = 0 is the data (abar = 1). log abar
is the piecewise-LINEAR interpolation in tau of the knots

    log abar(j/T) = log alphas_cumprod[j-1]  (j = 1..T),   log abar(0) = 0,

i.e. beta(tau) is piecewise constant, beta = -d log abar/dtau = -T log(1 - betas[k]) on
((k)/T, (k+1)/T], so abar(tau_k) == alphas_cumprod[k] exactly. For DDPM's linear schedule with
betas = linspace(beta_min/T, beta_max/T, T), -T log(1 - betas[k]) -> beta_min + tau (beta_max -
beta_min) as T -> infinity: this is score_sde's VPSDE with beta_min = 0.1, beta_max = 20 (DDPM's
1e-4..0.02 at T = 1000), available in closed form as `ContinuousVP.linear()`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffax.schedules import Schedule

Array = jnp.ndarray

__all__ = ["ContinuousVP"]


class ContinuousVP(NamedTuple):
    """A VP diffusion in continuous time tau in [0, 1] (Song et al. 2021, eq. 11 / App. B).

    beta(tau) = beta_min + tau (beta_max - beta_min)  +  beta_pl(tau), where beta_pl is the
    piecewise-constant rate of the piecewise-linear log abar through `log_alpha_bar_knots` (N+1
    values on the uniform grid tau_j = j / N, the first 0). Hence

        log abar(tau) = -(beta_min tau + 1/2 (beta_max - beta_min) tau^2) + interp(tau; knots).

    `linear(beta_min, beta_max)` is score_sde's VPSDE (knots all 0); `from_schedule(s)` has
    beta_min = beta_max = 0 and the discrete schedule's knots (abar(tau_k) = alphas_cumprod[k]
    at tau_k = (k+1)/T). A NamedTuple, hence a pytree that crosses jit as an argument.
    """

    beta_min: Array
    beta_max: Array
    log_alpha_bar_knots: Array

    # ------------------------------------------------------------------ builders
    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0) -> "ContinuousVP":
        """score_sde's VPSDE: beta(tau) = beta_min + tau (beta_max - beta_min) (Song et al. 2021, eq. 33),
        abar(tau) = exp(-beta_min tau - 1/2 (beta_max - beta_min) tau^2)."""
        for name, v in (("beta_min", beta_min), ("beta_max", beta_max)):
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"ContinuousVP.linear: {name} must be finite and >= 0, got {v!r}")
        if beta_min + beta_max <= 0.0:
            raise ValueError(
                f"ContinuousVP.linear: need beta_min + beta_max > 0, got {beta_min!r}, {beta_max!r}"
            )
        dtype = jnp.asarray(0.0).dtype
        return cls(jnp.asarray(beta_min, dtype), jnp.asarray(beta_max, dtype), jnp.zeros((2,), dtype))

    @classmethod
    def from_schedule(cls, s: Schedule) -> "ContinuousVP":
        """The continuous VP whose abar(tau) interpolates the discrete schedule.

        knots: log abar(j / T) = log alphas_cumprod[j - 1] for j = 1..T and 0 at tau = 0, joined
        linearly in tau; so abar((k + 1) / T) = alphas_cumprod[k] and on (k/T, (k+1)/T]
        beta(tau) = -T log(1 - betas[k]) (piecewise constant). Computed in float64 NumPy.
        """
        acp = np.asarray(s.alphas_cumprod, dtype=np.float64)
        knots = np.concatenate([[0.0], np.log(acp)])
        dtype = jnp.asarray(0.0).dtype
        zero = jnp.zeros((), dtype)
        return cls(zero, zero, jnp.asarray(knots, dtype))

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
