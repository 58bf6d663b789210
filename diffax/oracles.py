"""Analytic models: Gaussian mixtures whose noised marginals, scores and posteriors are exact.

If x_0 ~ sum_k w_k N(mu_k, Sigma_k) (Sigma_k diagonal), then under x = c x_0 + sigma z,

    x ~ sum_k w_k N(c mu_k, c^2 Sigma_k + sigma^2 I),

so every quantity a diffusion model learns has a closed form:
  - DDPM/DDIM marginal q(x_t):   c = sqrt(alpha-bar_t), sigma^2 = 1 - alpha-bar_t  (Ho et al. 2020, eq. 4);
  - NCSN perturbation q_sigma(x): c = 1, sigma = the noise level                  (Song & Ermon 2019);
  - the exact score, the exact eps = -sqrt(1 - alpha-bar_t) score, and E[x_0 | x_t] (Tweedie);
  - any continuous process of `diffax.processes` (c = alpha(t), sigma = sigma(t)): `marginal_log_prob`,
    `marginal_score`, `denoiser` (E[x_0 | x_t], EDM's D(x; sigma) for `processes.edm`), `noise_prediction`
    (E[eps | x_t]) and `velocity` (E[dx_t/dt | x_t] = alpha' E[x_0 | x_t] + sigma' E[eps | x_t]; for
    rectified flow E[eps - x_0 | x_t], the flow-matching target).
These are the tests' ground truth and double as users' debugging tools: plug ``mix.eps`` into any
sampler to check it in isolation from training.
"""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from diffax import diffusion
from diffax.schedules import Schedule

Array = jnp.ndarray

__all__ = [
    "GaussianMixture",
    "seed_mixture_1d",
    "anisotropic_mixture_2d",
    "marginal_log_prob",
    "marginal_score",
    "denoiser",
    "noise_prediction",
    "velocity",
]


@jax.tree_util.register_pytree_node_class
class GaussianMixture:
    """A mixture sum_k w_k N(mu_k, diag(std_k^2)) in D dimensions, optionally bound to a Schedule.

    Args:
      weights: (K,) positive mixture weights (normalised here).
      means:   (K, D) component means (a (K,) array is read as D = 1).
      stds:    (K,) isotropic or (K, D) diagonal standard deviations (positive).
      schedule: the Schedule under which the t-indexed methods (`log_prob_t`, `score`, `eps`,
        `posterior_mean`) are exact; bind one later with `with_schedule`.

    Each class label y in {0..K-1} is a component, so the mixture is also a labelled data set
    (`sample_labeled`, `class_log_probs_t`, `eps_given_class`).
    """

    def __init__(self, weights, means, stds, schedule: Schedule | None = None):
        w = jnp.asarray(weights)
        mu = jnp.asarray(means)
        if mu.ndim == 1:
            mu = mu[:, None]
        sd = jnp.asarray(stds)
        if sd.ndim == 1:
            sd = jnp.broadcast_to(sd[:, None], mu.shape)
        if w.ndim != 1 or mu.ndim != 2 or sd.shape != mu.shape or w.shape[0] != mu.shape[0]:
            raise ValueError(
                f"GaussianMixture: expected weights (K,), means (K, D), stds (K,) or (K, D); got "
                f"{w.shape}, {mu.shape}, {jnp.shape(stds)}"
            )
        if not isinstance(w, jax.core.Tracer):
            if not bool(jnp.all(w > 0)):
                raise ValueError(f"GaussianMixture: weights must be positive, got {w}")
            if not bool(jnp.all(sd > 0)):
                raise ValueError(f"GaussianMixture: stds must be positive, got {sd}")
        self.weights = w / jnp.sum(w)
        self.means = mu
        self.stds = sd
        self.schedule = schedule

    # pytree protocol: arrays are leaves (the schedule too), so a mixture can cross jit.
    def tree_flatten(self):
        return (self.weights, self.means, self.stds, self.schedule), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.weights, obj.means, obj.stds, obj.schedule = children
        return obj

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def with_schedule(self, schedule: Schedule) -> "GaussianMixture":
        """The same mixture bound to `schedule` (for the t-indexed methods)."""
        return GaussianMixture.tree_unflatten(None, (self.weights, self.means, self.stds, schedule))

    # ------------------------------------------------------------------ data distribution
    def sample_labeled(self, key: Array, n: int) -> tuple[Array, Array]:
        """Draw n points and their component labels: returns (x (n, D), y (n,) int)."""
        k_comp, k_noise = jax.random.split(key)
        y = jax.random.categorical(k_comp, jnp.log(self.weights), shape=(n,))
        z = jax.random.normal(k_noise, (n, self.dim), dtype=self.means.dtype)
        return self.means[y] + self.stds[y] * z, y

    def sample(self, key: Array, n: int) -> Array:
        """Draw n points, shape (n, D)."""
        return self.sample_labeled(key, n)[0]

    def log_prob(self, x: Array) -> Array:
        """log p(x) for x of shape (..., D)."""
        return self.log_prob_scaled(x, 1.0, 0.0)

    # ------------------------------------------------------------------ general perturbation
    def _component_log_probs(self, x: Array, scale, noise_var) -> Array:
        """log w_k + log N(x; c mu_k, c^2 S_k + s^2 I) for x (..., D); returns (..., K)."""
        scale = jnp.asarray(scale)[..., None, None]
        noise_var = jnp.asarray(noise_var)[..., None, None]
        var = scale**2 * self.stds**2 + noise_var  # (..., K, D)
        diff = x[..., None, :] - scale * self.means  # (..., K, D)
        ll = -0.5 * jnp.sum(diff**2 / var + jnp.log(2 * math.pi * var), axis=-1)
        return jnp.log(self.weights) + ll

    def log_prob_scaled(self, x: Array, scale, noise_var) -> Array:
        """log density of c x_0 + sigma z at x (shape (..., D)); `scale` = c and `noise_var` = sigma^2
        broadcast against x's batch dimensions."""
        return logsumexp(self._component_log_probs(x, scale, noise_var), axis=-1)

    def score_scaled(self, x: Array, scale, noise_var) -> Array:
        """grad_x log density of c x_0 + sigma z:  sum_k r_k(x) (c mu_k - x) / (c^2 S_k + sigma^2)."""
        lp = self._component_log_probs(x, scale, noise_var)
        r = jax.nn.softmax(lp, axis=-1)[..., None]  # responsibilities (..., K, 1)
        c = jnp.asarray(scale)[..., None, None]
        var = c**2 * self.stds**2 + jnp.asarray(noise_var)[..., None, None]
        return jnp.sum(r * (c * self.means - x[..., None, :]) / var, axis=-2)

    def posterior_mean_scaled(self, x: Array, scale, noise_var) -> Array:
        """E[x_0 | c x_0 + sigma z = x], by per-component Gaussian conditioning:
        sum_k r_k(x) (mu_k / S_k + c x / sigma^2) / (1 / S_k + c^2 / sigma^2)."""
        lp = self._component_log_probs(x, scale, noise_var)
        r = jax.nn.softmax(lp, axis=-1)[..., None]
        c = jnp.asarray(scale)[..., None, None]
        nv = jnp.asarray(noise_var)[..., None, None]
        s2 = self.stds**2
        # Written in the product form to stay finite as sigma -> 0:
        # (mu sigma^2 + c S x) / (sigma^2 + c^2 S)
        post = (self.means * nv + c * s2 * x[..., None, :]) / (nv + c**2 * s2)
        return jnp.sum(r * post, axis=-2)

    # ------------------------------------------------------------------ under a Schedule
    def _t_coefs(self, x: Array, t: Array) -> tuple[Array, Array]:
        if self.schedule is None:
            raise ValueError("this GaussianMixture has no schedule: call .with_schedule(s) first")
        t = jnp.asarray(t)
        acp = diffusion.extract(self.schedule.alphas_cumprod, t, t.ndim)  # checks a concrete t's range
        acp = jnp.broadcast_to(acp, x.shape[:-1])
        return jnp.sqrt(acp), 1.0 - acp

    def log_prob_t(self, x: Array, t: Array) -> Array:
        """log q(x_t) at index t: the mixture of N(sqrt(abar_t) mu_k, abar_t S_k + (1 - abar_t) I)."""
        return self.log_prob_scaled(x, *self._t_coefs(x, t))

    def score(self, x: Array, t: Array) -> Array:
        """The exact score grad_x log q(x_t) at index t."""
        return self.score_scaled(x, *self._t_coefs(x, t))

    def eps(self, x: Array, t: Array) -> Array:
        """The exact (MMSE) noise prediction E[eps | x_t] = -sqrt(1 - abar_t) grad log q(x_t)."""
        score = self.score(x, t)
        return diffusion.score_to_eps(self.schedule, x, t, score)

    def posterior_mean(self, x: Array, t: Array) -> Array:
        """The exact E[x_0 | x_t] at index t."""
        return self.posterior_mean_scaled(x, *self._t_coefs(x, t))

    # ------------------------------------------------------------------ labels (a class per component)
    def class_log_probs_t(self, x: Array, t: Array) -> Array:
        """log p(y = k | x_t) for every class k: shape (..., K)."""
        lp = self._component_log_probs(x, *self._t_coefs(x, t))
        return lp - logsumexp(lp, axis=-1, keepdims=True)

    def class_log_probs(self, x: Array) -> Array:
        """log p(y = k | x) for every class k under the clean data distribution: shape (..., K)."""
        lp = self._component_log_probs(x, 1.0, 0.0)
        return lp - logsumexp(lp, axis=-1, keepdims=True)

    def component(self, y: int) -> "GaussianMixture":
        """The single component y as a one-component mixture (same schedule)."""
        return GaussianMixture.tree_unflatten(
            None, (jnp.ones((1,), self.weights.dtype), self.means[y : y + 1], self.stds[y : y + 1], self.schedule)
        )

    def eps_given_class(self, x: Array, t: Array, y: Array) -> Array:
        """The exact conditional eps(x_t, t, y) = -sqrt(1 - abar_t) grad log q(x_t | y), per example."""
        c, nv = self._t_coefs(x, t)
        c2 = c[..., None, None]
        nv2 = nv[..., None, None]
        var = c2**2 * self.stds**2 + nv2  # (..., K, D)
        mu = c2 * self.means
        y = jnp.broadcast_to(jnp.asarray(y), x.shape[:-1])
        onehot = jax.nn.one_hot(y, self.num_components, dtype=x.dtype)[..., None]
        score = jnp.sum(onehot * (mu - x[..., None, :]) / var, axis=-2)
        return -jnp.sqrt(nv)[..., None] * score

    # ------------------------------------------------------------------ NCSN (sigma-indexed)
    def log_prob_sigma(self, x: Array, sigma) -> Array:
        """log q_sigma(x) for x = x_0 + sigma z (Song & Ermon 2019)."""
        sigma = jnp.broadcast_to(jnp.asarray(sigma), x.shape[:-1])
        return self.log_prob_scaled(x, jnp.ones_like(sigma), sigma**2)

    def score_sigma(self, x: Array, sigma) -> Array:
        """The exact score grad_x log q_sigma(x) of the sigma-perturbed data (NCSN's target)."""
        sigma = jnp.broadcast_to(jnp.asarray(sigma), x.shape[:-1])
        return self.score_scaled(x, jnp.ones_like(sigma), sigma**2)


def seed_mixture_1d(schedule: Schedule | None = None) -> GaussianMixture:
    """The seed experiment's 1-D data: 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2)."""
    return GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [0.5, 0.5], schedule)


def anisotropic_mixture_2d(schedule: Schedule | None = None) -> GaussianMixture:
    """A 2-D test mixture with unequal weights and anisotropic (diagonal) components."""
    return GaussianMixture(
        [0.3, 0.5, 0.2],
        [[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]],
        [[0.15, 0.4], [0.5, 0.1], [0.25, 0.25]],
        schedule,
    )


# ============================================================================ under any continuous process


def _process_coefs(process, x: Array, t) -> tuple[Array, Array]:
    """(alpha(t), sigma(t)^2) of ``process`` broadcast to x's batch shape x.shape[:-1]."""
    alpha, var = process.marginal_coefs(jnp.asarray(t))
    return jnp.broadcast_to(alpha, x.shape[:-1]), jnp.broadcast_to(var, x.shape[:-1])


def marginal_log_prob(mix: GaussianMixture, process, x: Array, t) -> Array:
    """log p_t(x) of x_t = alpha(t) x_0 + sigma(t) eps, x_0 ~ mix, for any `diffax.processes` process;
    x (..., D), t a scalar or of shape x.shape[:-1]."""
    return mix.log_prob_scaled(x, *_process_coefs(process, x, t))


def marginal_score(mix: GaussianMixture, process, x: Array, t) -> Array:
    """The exact score grad_x log p_t(x) under any process (shapes as `marginal_log_prob`)."""
    return mix.score_scaled(x, *_process_coefs(process, x, t))


def denoiser(mix: GaussianMixture, process, x: Array, t) -> Array:
    """The exact E[x_0 | x_t = x] under any process (per-component Gaussian conditioning, finite as
    sigma -> 0 and as alpha -> 0). Tweedie: = (x + sigma^2 score) / alpha where alpha > 0. For
    `processes.edm` (alpha = 1, sigma = t) it is EDM's ideal denoiser D(x; sigma) (Karras et al. 2022, eq. 3)."""
    return mix.posterior_mean_scaled(x, *_process_coefs(process, x, t))


def noise_prediction(mix: GaussianMixture, process, x: Array, t) -> Array:
    """The exact E[eps | x_t = x] = -sigma(t) score (Tweedie; = (x - alpha E[x_0 | x]) / sigma)."""
    sigma = jnp.broadcast_to(process.sigma(jnp.asarray(t)), x.shape[:-1])
    return -sigma[..., None] * marginal_score(mix, process, x, t)


def velocity(mix: GaussianMixture, process, x: Array, t) -> Array:
    """The exact flow velocity E[dx_t/dt | x_t = x] = alpha'(t) E[x_0 | x] + sigma'(t) E[eps | x]: the
    probability-flow ODE's field (Song et al. 2021, eq. 13; = `ode.drift`), and for rectified flow
    (alpha' = -1, sigma' = 1) E[eps - x_0 | x], the flow-matching regression target (Lipman et al. 2023,
    eq. 9; Liu et al. 2023). Finite at alpha = 0 (rectified flow at t = 1: x - E[x_0])."""
    t = jnp.asarray(t)
    da = jnp.broadcast_to(process.dalpha(t), x.shape[:-1])[..., None]
    ds = jnp.broadcast_to(process.dsigma(t), x.shape[:-1])[..., None]
    return da * denoiser(mix, process, x, t) + ds * noise_prediction(mix, process, x, t)
