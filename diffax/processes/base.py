"""The `Process` interface: everything a continuous-time process derives from alpha(t), sigma(t) and their
derivatives (log-SNR, the probability-flow coefficients, the prior), and the pytree dataclass helper."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import dataclasses

from diffax._util import sum_flat

Array = jnp.ndarray

__all__ = ["Process", "TIME_VARIABLES", "pytree_dataclass", "float_dtype", "check_finite_positive"]

TIME_VARIABLES = ("rho", "tau")


def pytree_dataclass(data_fields: tuple[str, ...], meta_fields: tuple[str, ...]):
    """Freeze a dataclass and register it as a pytree (arrays in ``data_fields`` are leaves)."""

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        return jax.tree_util.register_dataclass(cls, data_fields=list(data_fields), meta_fields=list(meta_fields))

    return wrap


def float_dtype():
    return jnp.asarray(0.0).dtype


def check_finite_positive(where: str, **values) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0.0):
            raise ValueError(f"{where}: {name} must be a finite float > 0, got {v!r}")


class Process:
    """The generic part of every process: everything derived from alpha, sigma and their derivatives.

    Subclasses define `alpha`, `sigma`, `dalpha`, `dsigma`, `t_of_log_snr`, `t_min`, `t_max`,
    `prior_std` and may override the rest with a closed form (more accurate, or bitwise what it was).
    """

    t_min: float
    t_max: float
    prior_std: float

    def alpha(self, t: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def dalpha(self, t: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def dsigma(self, t: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    def t_of_log_snr(self, lam: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dtype(self):
        """The float dtype of the process's arithmetic (float64 under x64)."""
        return float_dtype()

    def marginal_coefs(self, t: Array) -> tuple[Array, Array]:
        """(alpha(t), sigma(t)^2): scale and noise variance of q(x_t | x_0)."""
        return self.alpha(t), self.sigma(t) ** 2

    def log_snr(self, t: Array) -> Array:
        """lambda(t) = log(alpha^2 / sigma^2) = 2 (log alpha - log sigma)."""
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def rho(self, t: Array) -> Array:
        """rho(t) = log(1 + sigma^2 / alpha^2) = softplus(-lambda(t)), increasing in t."""
        return jax.nn.softplus(-self.log_snr(t))

    def t_of_rho(self, r: Array) -> Array:
        """The inverse of `rho`: lambda = -log(expm1(r)), then `t_of_log_snr`."""
        return self.t_of_log_snr(-jnp.log(jnp.expm1(jnp.asarray(r))))

    def pf_coefs(self, t: Array, time_variable: str = "tau") -> tuple[Array, Array]:
        """(c, k) of the probability-flow ODE dx/dv = -1/2 c (k x + score) in v = t ('tau') or rho.

        'tau': c = g^2 = 2 sigma sigma' - 2 (alpha'/alpha) sigma^2; 'rho': c = alpha^2 + sigma^2;
        both k = -alpha' / (sigma (alpha sigma' - alpha' sigma)) (module doc).
        """
        a, s, da, ds = self.alpha(t), self.sigma(t), self.dalpha(t), self.dsigma(t)
        k = -da / (s * (a * ds - da * s))
        if time_variable == "tau":
            return 2.0 * s * ds - 2.0 * (da / a) * s**2, k
        return a**2 + s**2, k

    def prior_sample(self, key: Array, shape: tuple[int, ...], dtype=None) -> Array:
        """z ~ N(0, prior_std^2 I): the latent at t_max (module doc)."""
        dtype = self.dtype if dtype is None else dtype
        z = jax.random.normal(key, tuple(shape), dtype=dtype)
        return z if self.prior_std == 1.0 else self.prior_std * z

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, prior_std^2 I) summed over all but the batch axis:
        -D/2 log(2 pi prior_std^2) - |z|^2 / (2 prior_std^2)."""
        d = math.prod(z.shape[1:])
        var = float(self.prior_std) ** 2
        return -0.5 * d * math.log(2 * math.pi * var) - 0.5 * sum_flat(z**2) / var
