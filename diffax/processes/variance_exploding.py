"""Variance-exploding processes (alpha = 1): score_sde's VE SDE and EDM's sigma(t) = t."""

from __future__ import annotations

import math

import jax.numpy as jnp

from diffax.processes.base import Process, check_finite_positive, pytree_dataclass

Array = jnp.ndarray

__all__ = ["VE", "ve", "EDM", "edm"]


# ============================================================================ VE


@pytree_dataclass((), ("sigma_min", "sigma_max"))
class VE(Process):
    """score_sde's VESDE (Song et al. 2021, eq. 9 / 30; `sde_lib.VESDE`): alpha = 1,
    sigma(t) = sigma_min (sigma_max / sigma_min)^t on t in [0, 1], prior N(0, sigma_max^2 I)."""

    sigma_min: float
    sigma_max: float

    t_min = 0.0
    t_max = 1.0

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Array) -> Array:
        return jnp.ones_like(jnp.asarray(t, self.dtype))

    def sigma(self, t: Array) -> Array:
        return self.sigma_min * jnp.exp(jnp.asarray(t) * self._log_ratio)

    def dalpha(self, t: Array) -> Array:
        return jnp.zeros_like(jnp.asarray(t, self.dtype))

    def dsigma(self, t: Array) -> Array:
        """sigma(t) log(sigma_max / sigma_min)."""
        return self.sigma(t) * self._log_ratio

    def log_snr(self, t: Array) -> Array:
        """-2 log sigma = -2 (log sigma_min + t log(sigma_max / sigma_min))."""
        return -2.0 * (math.log(self.sigma_min) + jnp.asarray(t) * self._log_ratio)

    def t_of_log_snr(self, lam: Array) -> Array:
        return (-0.5 * jnp.asarray(lam) - math.log(self.sigma_min)) / self._log_ratio


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> VE:
    """score_sde's VESDE with its CIFAR-10 defaults sigma_min = 0.01, sigma_max = 50."""
    check_finite_positive("ve", sigma_min=sigma_min, sigma_max=sigma_max)
    if not sigma_min < sigma_max:
        raise ValueError(f"ve: need sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    return VE(float(sigma_min), float(sigma_max))


# ============================================================================ EDM


@pytree_dataclass((), ("sigma_min", "sigma_max"))
class EDM(Process):
    """Karras et al. 2022 (Table 1, "ours"): alpha = 1, sigma(t) = t on t in [sigma_min, sigma_max],
    prior N(0, sigma_max^2 I); the probability-flow ODE is dx/dt = (x - D(x; t)) / t (eq. 3)."""

    sigma_min: float
    sigma_max: float

    @property
    def t_min(self) -> float:
        return self.sigma_min

    @property
    def t_max(self) -> float:
        return self.sigma_max

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def alpha(self, t: Array) -> Array:
        return jnp.ones_like(jnp.asarray(t, self.dtype))

    def sigma(self, t: Array) -> Array:
        return jnp.asarray(t, self.dtype)

    def dalpha(self, t: Array) -> Array:
        return jnp.zeros_like(jnp.asarray(t, self.dtype))

    def dsigma(self, t: Array) -> Array:
        return jnp.ones_like(jnp.asarray(t, self.dtype))

    def log_snr(self, t: Array) -> Array:
        return -2.0 * jnp.log(jnp.asarray(t, self.dtype))

    def t_of_log_snr(self, lam: Array) -> Array:
        return jnp.exp(-0.5 * jnp.asarray(lam))


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0) -> EDM:
    """EDM's process with its sampler's defaults sigma_min = 0.002, sigma_max = 80."""
    check_finite_positive("edm", sigma_min=sigma_min, sigma_max=sigma_max)
    if not sigma_min < sigma_max:
        raise ValueError(f"edm: need sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    return EDM(float(sigma_min), float(sigma_max))
