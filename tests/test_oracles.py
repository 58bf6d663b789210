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


# --------------------------------------------------------------------------- under any continuous process (issue 22)

from diffax import ode, processes  # noqa: E402

# (process, t): an interior time of each process where the marginal is neither the data nor the prior.
_PROCESS_TIMES = {
    "vp_linear": (processes.vp_linear, 0.3),
    "vp_cosine": (processes.vp_cosine, 0.5),
    "ve": (processes.ve, 0.45),
    "edm": (processes.edm, 0.7),
    "rectified_flow": (processes.rectified_flow, 0.5),
}


def _process_points():
    return jnp.array([[0.0, 0.0], [1.0, 0.8], [-1.2, 0.6], [0.4, -1.3]])


@pytest.mark.parametrize("name", sorted(_PROCESS_TIMES))
def test_process_score_is_the_gradient_of_the_log_density(name, x64):
    """marginal_score = grad_x marginal_log_prob by central differences, h = 1e-5: truncation h^2/6 |d^3 log p|
    <~ 1e-9 (third derivatives <~ 1e2 at these sigma >= 0.3), roundoff 1e-16 |log p| / h <~ 1e-10; tolerance
    atol 1e-7. Negative control: the score at t (1 + 1e-2) fails it."""
    make, t = _PROCESS_TIMES[name]
    p, mix, x = make(), oracles.anisotropic_mixture_2d(), _process_points()
    h = 1e-5
    eye = jnp.eye(2)
    fd = jnp.stack(
        [(oracles.marginal_log_prob(mix, p, x + h * e, t) - oracles.marginal_log_prob(mix, p, x - h * e, t)) / (2 * h)
         for e in eye], axis=-1)  # fmt: skip
    np.testing.assert_allclose(oracles.marginal_score(mix, p, x, t), fd, atol=1e-7)
    assert not np.allclose(np.asarray(oracles.marginal_score(mix, p, x, t * 1.01)), np.asarray(fd), atol=1e-7)


@pytest.mark.parametrize("name", sorted(_PROCESS_TIMES))
def test_process_denoiser_matches_monte_carlo(name, x64):
    """E[x_0 | x_t = x] against self-normalised importance sampling with N = 400k draws x0_i ~ mix,
    weights N(x; alpha x0_i, sigma^2 I): |IS - denoiser| <= 4.5 SE per coordinate (delta-method SE
    sqrt(sum w_i^2 (x0_i - IS)^2); two-sided 4.5 sigma, p ~ 7e-6 each; measured max 2.1 SE). For
    rectified flow the velocity E[eps - x_0 | x] is checked the same way, eps_i = (x - alpha x0_i)/sigma.
    Negative control: the denoiser at t (1 + 1e-2) is > 4.5 SE off (measured >= 7.8 SE)."""
    make, t = _PROCESS_TIMES[name]
    p, mix, x = make(), oracles.anisotropic_mixture_2d(), _process_points()
    x0 = mix.sample(jax.random.PRNGKey(0), 400_000)
    a, s = float(p.alpha(t)), float(p.sigma(t))
    w = jax.nn.softmax(-0.5 * jnp.sum((x[:, None, :] - a * x0[None]) ** 2, -1) / s**2, axis=1)

    def is_mean(f):  # (B, N, D) -> estimate and SE, (B, D) each
        est = jnp.einsum("bn,bnd->bd", w, f)
        return est, jnp.sqrt(jnp.einsum("bn,bnd->bd", w**2, (f - est[:, None]) ** 2))

    est, se = is_mean(jnp.broadcast_to(x0[None], (x.shape[0],) + x0.shape))
    assert float(jnp.max(jnp.abs(est - oracles.denoiser(mix, p, x, t)) / se)) <= 4.5
    assert float(jnp.max(jnp.abs(est - oracles.denoiser(mix, p, x, t * 1.01)) / se)) > 4.5
    if name == "rectified_flow":
        eps = (x[:, None, :] - a * x0[None]) / s
        v_est, v_se = is_mean(eps - x0[None])
        assert float(jnp.max(jnp.abs(v_est - oracles.velocity(mix, p, x, t)) / v_se)) <= 4.5


@pytest.mark.parametrize("name", sorted(_PROCESS_TIMES))
def test_process_tweedie_identities(name, x64):
    """Tweedie (Efron 2011; Karras et al. 2022, eq. 3): denoiser = (x + sigma^2 score) / alpha (for alpha = 1,
    x + sigma^2 score); noise_prediction = -sigma score = (x - alpha denoiser) / sigma; velocity =
    alpha' denoiser + sigma' noise_prediction = `ode.drift` of the exact score (two code paths). All to 1e-12
    (a few float64 operations on O(1) values)."""
    make, t = _PROCESS_TIMES[name]
    p, mix, x = make(), oracles.anisotropic_mixture_2d(), _process_points()
    tb = jnp.full((x.shape[0],), t)
    a, s = p.alpha(tb)[:, None], p.sigma(tb)[:, None]
    score = oracles.marginal_score(mix, p, x, tb)
    d = oracles.denoiser(mix, p, x, tb)
    eps = oracles.noise_prediction(mix, p, x, tb)
    np.testing.assert_allclose(d, (x + s**2 * score) / a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(eps, (x - a * d) / s, rtol=1e-12, atol=1e-12)
    v = oracles.velocity(mix, p, x, tb)
    np.testing.assert_allclose(v, p.dalpha(tb)[:, None] * d + p.dsigma(tb)[:, None] * eps, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(v, ode.drift(ode.oracle_score_fn(mix, p), p, x, tb), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(_PROCESS_TIMES))
def test_process_velocity_solves_the_continuity_equation(name, x64):
    """The velocity transports the marginals: d/dt log p_t(x) + div v(x, t) + v . grad log p_t(x) = 0
    (autodiff in t and x, exact up to roundoff: |residual| <= 1e-9 against terms of O(1..10)). An
    independent check of `velocity` (and so of `ode.drift`): it uses only the marginal density.
    Negative control: the velocity at t (1 + 1e-2) leaves a residual > 1e-4."""
    make, t = _PROCESS_TIMES[name]
    p, mix, x = make(), oracles.anisotropic_mixture_2d(), _process_points()

    def residual(xi, tv):
        dlogp_dt = jax.grad(lambda u: oracles.marginal_log_prob(mix, p, xi, u))(jnp.asarray(t))
        v = oracles.velocity(mix, p, xi, tv)
        div = jnp.trace(jax.jacfwd(lambda y: oracles.velocity(mix, p, y, tv))(xi))
        return dlogp_dt + div + v @ oracles.marginal_score(mix, p, xi, t)

    res = jax.vmap(lambda xi: residual(xi, t))(x)
    assert float(jnp.max(jnp.abs(res))) <= 1e-9, res
    assert float(jnp.min(jnp.abs(jax.vmap(lambda xi: residual(xi, t * 1.01))(x)))) > 1e-4


def test_rectified_flow_velocity_at_t_1_is_x_minus_the_data_mean(x64):
    """At t = 1 (alpha = 0, x_1 = eps) E[eps - x_0 | x_1] = x - E[x_0]: finite where the score form is not."""
    mix, x = oracles.anisotropic_mixture_2d(), _process_points()
    want = x - jnp.sum(mix.weights[:, None] * mix.means, axis=0)
    np.testing.assert_allclose(oracles.velocity(mix, processes.rectified_flow(), x, 1.0), want, rtol=1e-14, atol=1e-15)
