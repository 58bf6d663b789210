"""Rectified flow / flow matching's straight path: alpha = 1 - t, sigma = t (Liu et al. 2023, Lipman et al. 2023)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffax.processes.base import Process, pytree_dataclass

Array = jnp.ndarray

__all__ = ["RectifiedFlow", "rectified_flow"]


# ============================================================================ rectified flow


@pytree_dataclass((), ())
class RectifiedFlow(Process):
    """Rectified flow / conditional flow matching (Liu et al. 2023; Lipman et al. 2023):
    x_t = (1 - t) x_0 + t eps on t in [0, 1], prior N(0, I) (exact: alpha(1) = 0). Its velocity
    dx_t/dt = eps - x_0 is `diffax.flow_matching`'s target; the score form of its ODE needs t < 1."""

    t_min = 0.0
    t_max = 1.0
    prior_std = 1.0

    def alpha(self, t: Array) -> Array:
        return 1.0 - jnp.asarray(t, self.dtype)

    def sigma(self, t: Array) -> Array:
        return jnp.asarray(t, self.dtype)

    def dalpha(self, t: Array) -> Array:
        return -jnp.ones_like(jnp.asarray(t, self.dtype))

    def dsigma(self, t: Array) -> Array:
        return jnp.ones_like(jnp.asarray(t, self.dtype))

    def log_snr(self, t: Array) -> Array:
        """2 (log(1 - t) - log t)."""
        t = jnp.asarray(t, self.dtype)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_of_log_snr(self, lam: Array) -> Array:
        """(1 - t)/t = exp(lambda/2): t = sigmoid(-lambda/2)."""
        return jax.nn.sigmoid(-0.5 * jnp.asarray(lam))


def rectified_flow() -> RectifiedFlow:
    """The rectified-flow process alpha = 1 - t, sigma = t."""
    return RectifiedFlow()
