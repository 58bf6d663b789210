"""The exact models of Gaussian data N(mu, diag sd^2) under a discrete schedule, shared by the exactness
tests of the samplers (tests/test_samplers_gaussian.py, tests/test_unipc.py).

With x_t = a x_0 + b eps (a = sqrt(abar_t), b = sqrt(1 - abar_t)), x_t ~ N(a mu, a^2 sd^2 + b^2) and

    E[x_0 | x_t] = (b^2 mu + a sd^2 x_t) / (a^2 sd^2 + b^2),    E[eps | x_t] = b (x_t - a mu) / (a^2 sd^2 + b^2),

both affine in x_t, so every deterministic sampler is an affine map of x_T that NumPy can compose exactly.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def exact_model(s, mean_type: str, mu, sd, offset):
    """The exact eps / x0 / v model of N(mu, diag sd^2) under s, called at index clip(t + offset).

    mu, sd and offset may be traced (one compile serves both Gaussians and the controls)."""

    def fn(x, t):
        t = jnp.clip(t + offset, 0, s.num_timesteps - 1)
        abar = jnp.take(s.alphas_cumprod, t)[:, None]
        a, b = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
        var = a**2 * sd**2 + b**2
        eps = b * (x - a * mu) / var
        x0 = (b**2 * mu + a * sd**2 * x) / var
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[mean_type]

    return fn


def x0_np(x, abar, mu, sd):
    """E[x_0 | x_t = x] in NumPy float64 at abar."""
    a, b2 = np.sqrt(abar), 1.0 - abar
    return (b2 * mu + a * sd**2 * x) / (a**2 * sd**2 + b2)
