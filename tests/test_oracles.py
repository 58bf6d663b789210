"""Tests for diffax.oracles: the analytic mixtures against autodiff, quadrature and Bayes' rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import diffusion, oracles, schedules


def _mixtures(s):
    return {"seed_1d": oracles.seed_mixture_1d(s), "aniso_2d": oracles.anisotropic_mixture_2d(s)}


def _points(mix, n, key):
    """Evaluation points spread over the data and beyond."""
    return 3.0 * jax.random.normal(key, (n, mix.dim))


@pytest.mark.parametrize("which", ["seed_1d", "aniso_2d"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_score_equals_grad_log_prob_t(which, name, x64):
    s = schedules.get(name, 100)
    mix = _mixtures(s)[which]
    x = _points(mix, 16, jax.random.key(0))
    t = jnp.array([0, 1, 10, 50, 99] * 3 + [70])
    sig = jnp.linspace(0.05, 5.0, 16)

    @jax.jit  # one compile for all the quantities compared below
    def compute(mix, x, t, sig):
        autodiff = jax.vmap(jax.grad(lambda xi, ti: mix.log_prob_t(xi, ti)))(x, t)
        auto_sig = jax.vmap(jax.grad(lambda xi, si: mix.log_prob_sigma(xi, si)))(x, sig)
        return autodiff, mix.score(x, t), mix.eps(x, t), auto_sig, mix.score_sigma(x, sig)

    autodiff, score, eps, auto_sig, score_sig = compute(mix, x, t, sig)
    np.testing.assert_allclose(score, autodiff, rtol=1e-5, atol=1e-8)
    # eps = -sqrt(1 - abar) score
    abar = np.cumprod(1 - np.asarray(s.betas, np.float64))[np.asarray(t)][:, None]
    np.testing.assert_allclose(eps, -np.sqrt(1 - abar) * np.asarray(autodiff), rtol=1e-5, atol=1e-8)
    # NCSN scores likewise
    np.testing.assert_allclose(score_sig, auto_sig, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("which", ["seed_1d", "aniso_2d"])
def test_posterior_mean_equals_tweedie(which, x64):
    s = schedules.cosine(100)
    mix = _mixtures(s)[which]
    x = _points(mix, 12, jax.random.key(1))
    t = jnp.array([0, 5, 20, 40, 60, 80, 95, 99, 3, 33, 66, 90])
    abar = jnp.take(s.alphas_cumprod, t)[:, None]
    tweedie = (x + (1 - abar) * mix.score(x, t)) / jnp.sqrt(abar)  # Efron 2011 / Tweedie's formula
    # Tolerance 1e-6 relative plus 1e-6 absolute times the 1/sqrt(abar) amplification at large t.
    np.testing.assert_allclose(mix.posterior_mean(x, t), tweedie, rtol=1e-6,
                               atol=1e-9 / float(jnp.sqrt(abar.min())))
    # Same as the model-free conversion of the exact eps.
    np.testing.assert_allclose(diffusion.eps_to_x0(s, x, t, mix.eps(x, t)), tweedie, rtol=1e-6,
                               atol=1e-9 / float(jnp.sqrt(abar.min())))


def test_log_prob_integrates_to_one_1d(x64):
    s = schedules.linear(100)
    mix = oracles.seed_mixture_1d(s)
    grid = jnp.linspace(-12.0, 12.0, 200_001)[:, None]
    # Trapezoid on a 1.2e-4 step over +-12 (>= 16 std from each mode): quadrature error << 1e-8.
    for dens in (jnp.exp(mix.log_prob(grid)), jnp.exp(mix.log_prob_t(grid, 60)),
                 jnp.exp(mix.log_prob_sigma(grid, 0.3))):
        np.testing.assert_allclose(float(jnp.trapezoid(dens, grid[:, 0])), 1.0, atol=1e-8)
    # And the density is the stated one: 0.5 N(-2, 0.25) + 0.5 N(2, 0.25) at a few points.
    xs = np.array([-2.0, 0.0, 1.3, 2.0])
    npdf = lambda x, m, v: np.exp(-0.5 * (x - m) ** 2 / v) / np.sqrt(2 * np.pi * v)  # noqa: E731
    want = 0.5 * npdf(xs, -2, 0.25) + 0.5 * npdf(xs, 2, 0.25)
    np.testing.assert_allclose(np.exp(mix.log_prob(jnp.asarray(xs)[:, None])), want, rtol=1e-12)


def test_log_prob_t_approaches_standard_normal(x64):
    s = schedules.cosine(1000)  # abar_{T-1} = 2.4e-9
    mix = oracles.anisotropic_mixture_2d(s)
    x = _points(mix, 20, jax.random.key(2))
    std_normal = -0.5 * jnp.sum(x**2, axis=-1) - math.log(2 * math.pi)
    # |log q(x_T) - log N(x; 0, I)| is O(sqrt(abar) |x| |mu| + abar) ~ 1e-3 at most here.
    np.testing.assert_allclose(mix.log_prob_t(x, 999), std_normal, atol=1e-3)
    np.testing.assert_allclose(mix.score(x, 999), -x, atol=1e-3)
    # Negative control: at t = 0 the marginal is far from N(0, I).
    assert float(jnp.max(jnp.abs(mix.log_prob_t(x, 0) - std_normal))) > 1.0


def test_eps_given_class_equals_single_component_eps(x64):
    s = schedules.linear(100)
    mix = oracles.anisotropic_mixture_2d(s)
    x = _points(mix, 9, jax.random.key(3))
    t = jnp.array([0, 10, 20, 30, 40, 50, 60, 80, 99])
    wants = [mix.component(y).eps(x, t) for y in range(mix.num_components)]
    for y in range(mix.num_components):
        np.testing.assert_allclose(mix.eps_given_class(x, t, y), wants[y], rtol=1e-10, atol=1e-12)
    # Per-example labels pick the matching row of each single-component answer.
    ys = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    per = np.asarray(mix.eps_given_class(x, t, jnp.asarray(ys)))
    np.testing.assert_allclose(per, np.stack([np.asarray(wants[y])[i] for i, y in enumerate(ys)]),
                               rtol=1e-10, atol=1e-12)


def test_class_log_probs_are_bayes_rule(x64):
    s = schedules.cosine(100)
    mix = oracles.anisotropic_mixture_2d(s)
    x = _points(mix, 10, jax.random.key(4))
    t = jnp.arange(0, 100, 10)

    @jax.jit
    def both(mix, x, t):
        # Bayes: p(y|x_t) = w_y q(x_t|y) / q(x_t), each term from the one-component mixtures.
        log_joint = jnp.stack([jnp.log(mix.weights[k]) + mix.component(k).log_prob_t(x, t)
                               for k in range(mix.num_components)], axis=-1)
        return mix.class_log_probs_t(x, t), log_joint - mix.log_prob_t(x, t)[:, None]

    lp, bayes = both(mix, x, t)
    np.testing.assert_allclose(jnp.sum(jnp.exp(lp), axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(lp, bayes, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("which", ["seed_1d", "aniso_2d"])
def test_sample_moments(which, x64):
    mix = _mixtures(None)[which]
    n = 100_000
    x, y = mix.sample_labeled(jax.random.key(5), n)
    w, mu, sd = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.stds))
    mean = w @ mu
    second = w @ (sd**2 + mu**2)
    var = second - mean**2
    # 5-sigma bound on the sample mean (per dim): SE = sqrt(var / n); false failure ~6e-7 per dim.
    np.testing.assert_array_less(np.abs(np.asarray(x).mean(0) - mean), 5 * np.sqrt(var / n))
    # Sample variance: SE = sqrt((m4 - var^2) / n) with m4 the central 4th moment, bounded here by
    # E(x - mean)^4 computed from the samples themselves (a plug-in, conservative at 5 sigma).
    xc = np.asarray(x) - mean
    se_var = np.sqrt((np.mean(xc**4, 0) - var**2) / n)
    np.testing.assert_array_less(np.abs(np.asarray(x).var(0) - var), 5 * se_var)
    # Label frequencies match the weights (binomial SE, 5 sigma).
    freq = np.bincount(np.asarray(y), minlength=len(w)) / n
    np.testing.assert_array_less(np.abs(freq - w), 5 * np.sqrt(w * (1 - w) / n))
    # Negative control: the bound rejects a 5% variance error.
    assert np.any(np.abs(np.asarray(x).var(0) - 1.05 * var) > 5 * se_var)


def test_invalid_mixture_raises():
    with pytest.raises(ValueError, match="positive"):
        oracles.GaussianMixture([0.5, -0.5], [[0.0], [1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        oracles.GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [1.0, 0.0])
    with pytest.raises(ValueError, match="schedule"):
        oracles.seed_mixture_1d().score(jnp.zeros((1, 1)), 0)
