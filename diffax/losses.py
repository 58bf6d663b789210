"""Training objectives for diffusion and score-based models.

Every loss returns PER-EXAMPLE values of shape (B,); the caller takes the mean (or a weighted
mean, or a ``pmean``), so losses compose with importance weights and data parallelism.

  regression_target       the eps / x0 / v target of a denoiser at (x0, x_t, t, noise)
  simple                  L_simple (Ho et al. 2020, eq. 14), also for x0- and v-targets
  hybrid                  improved DDPM's L_simple + lambda L_vlb and friends (Nichol & Dhariwal 2021)
  dsm                     denoising score matching over noise levels (Song & Ermon 2019, eqs. 5-6)
  sliced_score_matching   SSM and SSM-VR (Song et al. 2019), Jacobian-vector products only
  exact_score_matching    Hyvarinen (2005) score matching with the full per-example Jacobian

Randomness: each stochastic loss takes one ``key`` and splits it once per use; the same key
gives the same value, bitwise. Nothing here jits: callers jit the train step.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffax import diffusion
from diffax._util import ModelFn, check_choice, check_int, check_positive, expand_to, mean_flat, sum_flat
from diffax.diffusion import MEAN_TYPES, VAR_TYPES
from diffax.schedules import Schedule

Array = jnp.ndarray

LOSS_TYPES = ("simple", "vlb", "rescaled_vlb", "hybrid", "rescaled_mse")
PROJECTIONS = ("gaussian", "rademacher")

__all__ = [
    "LOSS_TYPES",
    "PROJECTIONS",
    "regression_target",
    "simple",
    "hybrid",
    "dsm",
    "sliced_score_matching",
    "exact_score_matching",
]


# --------------------------------------------------------------------------- helpers


def _draw_t_noise(s: Schedule, key: Array, x0: Array, t: Array | None) -> tuple[Array, Array]:
    """t ~ U{0..T-1} of shape (B,) (unless given) and eps ~ N(0, I) of x0's shape, from one key."""
    k_t, k_noise = jax.random.split(key)
    if t is None:
        t = jax.random.randint(k_t, (x0.shape[0],), 0, s.num_timesteps)
    else:
        t = jnp.broadcast_to(jnp.asarray(t), (x0.shape[0],))
    noise = jax.random.normal(k_noise, x0.shape, dtype=x0.dtype)
    return t, noise


# --------------------------------------------------------------------------- DDPM objectives


def regression_target(
    s: Schedule, x0: Array, x_t: Array, t: Array, noise: Array, mean_type: str
) -> Array:
    """The regression target of a denoiser whose x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

    'eps': noise (Ho et al. 2020, eq. 14);  'x0': x0;
    'v':   sqrt(abar_t) noise - sqrt(1 - abar_t) x0  (Salimans & Ho 2022, sec. 4).
    `x_t` is accepted for a uniform signature; the targets are exact functions of (x0, noise).
    """
    check_choice("mean_type", mean_type, MEAN_TYPES)
    if mean_type == "eps":
        return noise
    if mean_type == "x0":
        return x0
    acp = diffusion.extract(s.alphas_cumprod, t, x_t.ndim)
    return jnp.sqrt(acp) * noise - jnp.sqrt(1.0 - acp) * x0


def simple(
    model_fn: ModelFn,
    s: Schedule,
    key: Array,
    x0: Array,
    *,
    mean_type: str = "eps",
    t: Array | None = None,
) -> Array:
    """L_simple, per example (Ho et al. 2020, eq. 14):

        L(x0) = mean_dims || model_fn(x_t, t) - target ||^2,   x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,

    with t ~ U{0..T-1} (unless `t` is given) and eps ~ N(0, I) drawn from `key` (split once for
    each), and target = eps, x0 or v (`regression_target`). The squared error is AVERAGED over the
    non-batch dimensions (improved-diffusion's ``mean_flat``). If the model output has 2C channels
    on the last axis (a learned variance), only its first half (the mean part) enters the MSE.

    Returns: (B,) per-example losses.
    """
    check_choice("mean_type", mean_type, MEAN_TYPES)
    t, noise = _draw_t_noise(s, key, x0, t)
    x_t = diffusion.q_sample(s, x0, t, noise)
    out, _ = diffusion.split_model_output(model_fn(x_t, t), x0.shape)  # C, or 2C (learned variance)
    target = regression_target(s, x0, x_t, t, noise, mean_type)
    return mean_flat((out - target) ** 2)


def hybrid(
    model_fn: ModelFn,
    s: Schedule,
    key: Array,
    x0: Array,
    *,
    mean_type: str = "eps",
    var_type: str = "learned_range",
    loss_type: str = "hybrid",
    lambda_vlb: float = 0.001,
    t: Array | None = None,
    t_weights: Array | None = None,
    return_terms: bool = False,
):
    """Improved-DDPM objectives, per example (Nichol & Dhariwal 2021, sec. 3.1).

    With t ~ U{0..T-1} (unless given), eps ~ N(0, I), x_t = q_sample(x0, t, eps), and
    L_t = `diffax.likelihood.vb_terms_bpd` (KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0,
    the discretized decoder NLL at t = 0; bits/dim, averaged over dims):

      'simple'        MSE = mean_dims (mean_part - target)^2                (L_simple, eq. 14)
      'vlb'           L_t                    (improved-diffusion's KL; trains mean and variance)
      'rescaled_vlb'  T L_t                  (improved-diffusion's RESCALED_KL; an unbiased
                                              estimate of L_vlb in bits/dim when t is uniform)
      'hybrid'        MSE + lambda T L_t[sg(mean)]                          (L_hybrid, eq. 16)
      'rescaled_mse'  'hybrid' with lambda = 0.001, improved-diffusion's RESCALED_MSE (vb T/1000)

    In 'hybrid' / 'rescaled_mse' the mean part of the output is stop-gradiented inside L_t
    (frozen = concat(sg(mean_part), var_part) on the last axis), so L_vlb trains only Sigma_theta
    and the mean is trained by the MSE alone. As in improved-diffusion, for a fixed variance
    (var_type 'fixed_small' / 'fixed_large') the frozen L_t has no trainable part and is omitted:
    'hybrid' then equals 'simple'. `t_weights` (B,), e.g. the importance weights 1 / (T p_t) of a
    non-uniform t sampler, multiplies the whole per-example loss (as improved-diffusion's
    ``(losses * weights).mean()``), so that for t ~ p, E[w_t loss_t] is the uniform-t objective for
    every loss type (MSE included): the estimator stays unbiased.

    Returns: (B,) per-example losses, or (losses, terms) with ``return_terms=True``, terms =
    dict(mse, vb (= L_t in bits/dim, unscaled and unweighted; zeros where it is omitted), t).
    """
    check_choice("mean_type", mean_type, MEAN_TYPES)
    check_choice("var_type", var_type, VAR_TYPES)
    check_choice("loss_type", loss_type, LOSS_TYPES)
    check_positive("lambda_vlb", lambda_vlb, allow_zero=True)
    if loss_type == "rescaled_mse":
        lambda_vlb = 0.001
    from diffax.likelihood import vb_terms_bpd  # lazy: likelihood depends on diffusion only

    num_t = s.num_timesteps
    t, noise = _draw_t_noise(s, key, x0, t)
    x_t = diffusion.q_sample(s, x0, t, noise)
    output = model_fn(x_t, t)
    mean_part, var_part = diffusion.split_model_output(output, x0.shape, var_type)
    weights = 1.0 if t_weights is None else jnp.asarray(t_weights)
    learned = var_part is not None

    target = regression_target(s, x0, x_t, t, noise, mean_type)
    mse = mean_flat((mean_part - target) ** 2)
    zeros = jnp.zeros_like(mse)

    if loss_type in ("vlb", "rescaled_vlb"):
        vb = vb_terms_bpd(s, output, x0, x_t, t, mean_type=mean_type, var_type=var_type)
        scale = num_t if loss_type == "rescaled_vlb" else 1.0
        loss = scale * vb
    elif loss_type == "simple" or not learned:
        vb = zeros
        loss = mse
    else:  # hybrid / rescaled_mse with a learned variance
        frozen = jnp.concatenate([jax.lax.stop_gradient(mean_part), var_part], axis=-1)
        vb = vb_terms_bpd(s, frozen, x0, x_t, t, mean_type=mean_type, var_type=var_type)
        loss = mse + lambda_vlb * num_t * vb
    loss = weights * loss
    if return_terms:
        return loss, dict(mse=mse, vb=vb, t=t)
    return loss


# --------------------------------------------------------------------------- score matching


def dsm(score_fn: Callable[[Array, Array], Array], sigmas: Array, key: Array, x0: Array) -> Array:
    """Denoising score matching over noise levels, per example (Song & Ermon 2019, eqs. 5-6).

    Per example a level sigma is drawn uniformly from `sigmas`, x~ = x0 + sigma z, z ~ N(0, I), and

        l(x0) = 1/2 lambda(sigma) || s(x~, sigma) + z / sigma ||^2 = 1/2 || sigma s(x~, sigma) + z ||^2,

    with lambda(sigma) = sigma^2 (eq. 6's weighting). The squared norm is SUMMED over the
    non-batch dimensions, as in NCSN's ``anneal_dsm_score_estimation``. `score_fn(x, sigma)`
    takes sigma of shape (B,). At the exact score of Gaussian data N(mu, s_d^2 I) in d dimensions
    the expected value is 1/2 d s_d^2 / (s_d^2 + sigma^2) per level (see tests).

    Returns: (B,) per-example losses.
    """
    sigmas = jnp.asarray(sigmas)
    if sigmas.ndim != 1 or sigmas.shape[0] < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D array, got shape {sigmas.shape}")
    k_level, k_noise = jax.random.split(key)
    idx = jax.random.randint(k_level, (x0.shape[0],), 0, sigmas.shape[0])
    sigma = sigmas[idx].astype(x0.dtype)
    z = jax.random.normal(k_noise, x0.shape, dtype=x0.dtype)
    sig_b = expand_to(sigma, x0.ndim)
    score = score_fn(x0 + sig_b * z, sigma)
    return 0.5 * sum_flat((sig_b * score + z) ** 2)


def sliced_score_matching(
    score_fn: Callable[[Array], Array],
    key: Array,
    x: Array,
    *,
    num_projections: int = 1,
    projection: str = "gaussian",
    variance_reduction: bool = False,
) -> Array:
    """Sliced score matching, per example (Song, Garg, Shi & Ermon 2019, sec. 3):

        SSM:    E_v[ v^T (grad_x s(x)) v + 1/2 (v^T s(x))^2 ]
        SSM-VR: E_v[ v^T (grad_x s(x)) v ] + 1/2 ||s(x)||^2

    with v ~ N(0, I) ('gaussian') or uniform on {-1, +1}^D ('rademacher'), so E[v v^T] = I and both
    equal `exact_score_matching` in expectation over v. The expectation is the mean over
    `num_projections` draws. v^T J v comes from one ``jax.jvp`` per projection (no Jacobian).
    `score_fn(x)` maps a batch (B, ...) to scores of the same shape and must act on each example
    independently (its Jacobian block-diagonal over the batch). Sums run over non-batch dims.

    Returns: (B,) per-example losses.
    """
    check_choice("projection", projection, PROJECTIONS)
    num_projections = check_int("num_projections", num_projections, 1)
    shape = (num_projections,) + x.shape
    if projection == "gaussian":
        v = jax.random.normal(key, shape, dtype=x.dtype)
    else:
        v = jax.random.rademacher(key, shape, dtype=x.dtype)

    def one(v_i):
        s, jv = jax.jvp(score_fn, (x,), (v_i,))
        return s, sum_flat(v_i * jv), sum_flat(v_i * s)

    s, vjv, vs = jax.vmap(one)(v)  # s: (M, B, ...), vjv and vs: (M, B)
    if variance_reduction:
        return jnp.mean(vjv, axis=0) + 0.5 * sum_flat(s[0] ** 2)
    return jnp.mean(vjv + 0.5 * vs**2, axis=0)


def exact_score_matching(score_fn: Callable[[Array], Array], x: Array) -> Array:
    """Score matching (Hyvarinen 2005, Theorem 1), per example:  1/2 ||s(x)||^2 + tr(grad_x s(x)).

    Its expectation equals 1/2 E||s - grad log p||^2 up to a constant independent of s. The
    per-example Jacobian (D x D, D = prod of non-batch dims) comes from ``jax.jacfwd`` vmapped over
    single examples x[None], so this is for low dimension only; use `sliced_score_matching` otherwise.
    `score_fn(x)` maps a batch (B, ...) to scores of the same shape.

    Returns: (B,) per-example losses.
    """

    def one(x_i):
        f = lambda xi: score_fn(xi[None])[0].reshape(-1)  # noqa: E731
        s = f(x_i)
        jac = jax.jacfwd(f)(x_i).reshape(s.shape[0], s.shape[0])
        return 0.5 * jnp.sum(s**2) + jnp.trace(jac)

    return jax.vmap(one)(x)
