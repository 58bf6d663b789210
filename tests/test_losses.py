"""Tests for diffax.losses: analytic minima on Gaussian data, minimality at the oracle, code-path
equalities, and the stop-gradient structure of the hybrid loss.

Monte Carlo checks use 5-sigma bounds from the sample standard error (two-sided false-failure
probability ~6e-7 per check under a normal approximation); keys are fixed, so each run is
deterministic. "Exact-noise paired" comparisons evaluate two functions on the same (t, eps) draws
(common random numbers) by reusing one key.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import diffusion, losses, oracles, schedules


def _within(samples, want, k=5.0):
    """|mean(samples) - want| < k * SE + 1e-10 (1 + |want|), with SE the sample standard error of the
    mean; the small absolute term is a float64 rounding allowance for zero-variance estimators
    (e.g. Rademacher SSM-VR at a point where the Jacobian is diagonal, which is exact per draw)."""
    samples = np.asarray(samples, np.float64)
    se = samples.std(ddof=1) / math.sqrt(samples.shape[0])
    return abs(samples.mean() - want) < k * se + 1e-10 * (1 + abs(want)), (samples.mean(), want, se)


def _gaussian(s, dim=4, mu=0.5, sd=0.7):
    """N(mu 1, sd^2 I) as a one-component mixture (exact eps / score / posterior mean)."""
    return oracles.GaussianMixture([1.0], [[mu] * dim], [sd], s)


# Sampling through one jitted function (static n) avoids a compile per eager op in every test.
_sample = jax.jit(lambda mix, key, n: mix.sample(key, n), static_argnums=2)


class _Recorder:
    """Wraps a model function and records its inputs (eager use only), to pair noise across calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args):
        self.calls.append(args)
        return self.fn(*args)


# --------------------------------------------------------------------------- targets and L_simple


def test_regression_target(x64):
    s = schedules.cosine(50)
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(k1, (6, 3))
    noise = jax.random.normal(k2, (6, 3))
    t = jnp.array([0, 4, 10, 25, 40, 49])
    x_t = diffusion.q_sample(s, x0, t, noise)
    np.testing.assert_array_equal(losses.regression_target(s, x0, x_t, t, noise, "eps"), noise)
    np.testing.assert_array_equal(losses.regression_target(s, x0, x_t, t, noise, "x0"), x0)
    abar = np.cumprod(1 - np.asarray(s.betas, np.float64))[np.asarray(t)][:, None]
    v = np.sqrt(abar) * np.asarray(noise) - np.sqrt(1 - abar) * np.asarray(x0)
    np.testing.assert_allclose(losses.regression_target(s, x0, x_t, t, noise, "v"), v, rtol=1e-12)
    np.testing.assert_allclose(diffusion.eps_to_v(s, x_t, t, noise), v, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="'score'"):
        losses.regression_target(s, x0, x_t, t, noise, "score")


def _exact_predictor(mix, s, mean_type):
    """The MMSE predictor of the eps / x0 / v target under the mixture's exact marginal."""
    if mean_type == "eps":
        return mix.eps
    if mean_type == "x0":
        return mix.posterior_mean
    return lambda x, t: diffusion.eps_to_v(s, x, t, mix.eps(x, t))


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_simple_gaussian_data_analytic_value(mean_type, x64):
    """For x0 ~ N(mu, sd^2 I) and the exact predictor, E[L_simple | t] = Var(target | x_t) per dim:

    Var(eps | x_t) = 1 - (1 - abar) / (abar sd^2 + 1 - abar) = abar sd^2 / (abar sd^2 + 1 - abar),
    Var(x0 | x_t) = Var(eps | x_t) (1 - abar) / abar,   Var(v | x_t) = Var(eps | x_t) / abar
    (given x_t, x0 and v are affine in eps with slopes -sqrt((1 - abar)/abar) and 1/sqrt(abar)).
    With t ~ U{0..T-1} the expected loss is the average over t.
    """
    T, sd = 100, 0.7
    s = schedules.linear(T, beta_start=1e-3, beta_end=0.1)
    mix = _gaussian(s, sd=sd)
    n = 20_000
    k_data, k_loss = jax.random.split(jax.random.key(1))
    x0 = _sample(mix, k_data, n)
    abar = np.cumprod(1 - np.asarray(s.betas, np.float64))
    var_eps = abar * sd**2 / (abar * sd**2 + 1 - abar)
    want_t = {"eps": var_eps, "x0": var_eps * (1 - abar) / abar, "v": var_eps / abar}[mean_type]
    pred = _exact_predictor(mix, s, mean_type)

    @jax.jit
    def run(key, x0):  # random t, and a fixed t = 30
        return (losses.simple(pred, s, key, x0, mean_type=mean_type),
                losses.simple(pred, s, key, x0, mean_type=mean_type, t=jnp.full((n,), 30)))

    rand_t, fixed = run(k_loss, x0)
    ok, info = _within(rand_t, float(want_t.mean()))
    assert ok, info
    # At a fixed t (here 30) the value is Var(target | x_t) itself.
    ok, info = _within(fixed, float(want_t[30]))
    assert ok, info
    # Negative control: the bound separates t = 30 from t = 35.
    assert not _within(fixed, float(want_t[35]))[0]


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_simple_minimal_at_exact_predictor(mean_type, x64):
    """Exact-noise paired: L(f) - L(f*) has mean E||f - f*||^2 / d (the cross term has mean 0 since
    f* = E[target | x_t]); in particular it is positive for every perturbation."""
    s = schedules.cosine(100)
    mix = oracles.anisotropic_mixture_2d(s)
    n = 8192
    k_data, k_loss = jax.random.split(jax.random.key(2))
    x0 = _sample(mix, k_data, n)
    exact = _exact_predictor(mix, s, mean_type)
    perts = {"scale1.1": lambda x, t: 1.1 * exact(x, t), "shift0.1": lambda x, t: exact(x, t) + 0.1}

    @jax.jit
    def run(key, x0):
        rec = _Recorder(exact)  # records the (traced) x_t, t of this same trace
        base = losses.simple(rec, s, key, x0, mean_type=mean_type)
        x_t, t = rec.calls[0]
        out = {}
        for name, pert in perts.items():
            diff = losses.simple(pert, s, key, x0, mean_type=mean_type) - base
            out[name] = (diff, jnp.mean((pert(x_t, t) - exact(x_t, t)) ** 2, axis=-1))
        return out

    for name, (diff, excess) in run(k_loss, x0).items():
        assert float(np.mean(diff)) > 0, name
        ok, info = _within(diff - excess, 0.0)
        assert ok, (name, info)


def test_simple_key_determinism_and_learned_variance_half():
    s = schedules.linear(100)
    mix = oracles.anisotropic_mixture_2d(s)
    x0 = _sample(mix, jax.random.key(3), 64)
    key = jax.random.key(4)
    # A 2C-channel output (learned variance): only the first half enters the MSE.
    two_c = lambda x, t: jnp.concatenate([mix.eps(x, t), 1e3 * jnp.ones_like(x)], axis=-1)  # noqa: E731
    run = jax.jit(lambda k: (losses.simple(mix.eps, s, k, x0), losses.simple(two_c, s, k, x0)))
    a, a_two_c = run(key)
    np.testing.assert_array_equal(run(key)[0], a)  # same key, same bits
    assert a.shape == (64,)
    assert not np.array_equal(a, run(jax.random.key(5))[0])
    np.testing.assert_allclose(a_two_c, a, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        losses.simple(lambda x, t: jnp.zeros((64, 3)), s, key, x0)
    with pytest.raises(ValueError, match="'eps2'"):
        losses.simple(mix.eps, s, key, x0, mean_type="eps2")


# --------------------------------------------------------------------------- DSM


def test_dsm_gaussian_analytic_minimum(x64):
    """x0 ~ N(mu, sd^2 I) in d dims, exact score s(x) = -(x - mu) / (sd^2 + sigma^2). Then
    sigma s + z = (sd^2 z - sigma sd zeta) / (sd^2 + sigma^2) with z, zeta iid N(0, I), of variance
    sd^2 / (sd^2 + sigma^2) per dim, so E[l] = 1/2 d sd^2 / (sd^2 + sigma^2)
    = 1/2 d (1 - sigma^2 / (sd^2 + sigma^2)) per level; averaged over the uniformly drawn levels."""
    d, sd = 4, 0.7
    mix = _gaussian(None, dim=d, sd=sd)
    sigmas = schedules.geometric_sigmas(5.0, 0.05, 6)
    n = 20_000
    k_data, k_loss = jax.random.split(jax.random.key(6))
    x0 = _sample(mix, k_data, n)
    sig = np.asarray(sigmas, np.float64)
    per_level = 0.5 * d * sd**2 / (sd**2 + sig**2)

    @jax.jit
    def run(k, x):  # all levels; the largest alone; the smallest alone
        return [losses.dsm(mix.score_sigma, sig_, k, x) for sig_ in (sigmas, sigmas[:1], sigmas[5:])]

    vals, first, last = run(k_loss, x0)
    ok, info = _within(vals, float(per_level.mean()))
    assert ok, info
    for i, one in ((0, first), (5, last)):  # single levels
        ok, info = _within(one, float(per_level[i]))
        assert ok, (i, info)
    # Negative control: the largest level's value is rejected for the smallest level.
    assert not _within(last, float(per_level[0]))[0]


def test_dsm_minimal_at_exact_score(x64):
    """Exact-noise paired: l(s) - l(s*) has mean 1/2 E||sigma (s - s*)||^2 (cross term mean 0)."""
    mix = oracles.seed_mixture_1d()
    sigmas = schedules.geometric_sigmas(3.0, 0.1, 5)
    n = 8192
    k_data, k_loss = jax.random.split(jax.random.key(7))
    x0 = _sample(mix, k_data, n)
    perts = {"scale1.1": lambda x, s_: 1.1 * mix.score_sigma(x, s_),
             "shift0.1": lambda x, s_: mix.score_sigma(x, s_) + 0.1}

    @jax.jit
    def run(key, x0):
        rec = _Recorder(mix.score_sigma)  # records the (traced) x~, sigma of this same trace
        base = losses.dsm(rec, sigmas, key, x0)
        x_tilde, sigma = rec.calls[0]
        out = {}
        for name, pert in perts.items():
            diff = losses.dsm(pert, sigmas, key, x0) - base
            err = sigma[:, None] * (pert(x_tilde, sigma) - mix.score_sigma(x_tilde, sigma))
            out[name] = (diff, 0.5 * jnp.sum(err**2, axis=-1))
        return out

    for name, (diff, excess) in run(k_loss, x0).items():
        assert float(np.mean(diff)) > 0, name
        ok, info = _within(diff - excess, 0.0)
        assert ok, (name, info)
    with pytest.raises(ValueError, match="sigmas"):
        losses.dsm(mix.score_sigma, jnp.ones((2, 2)), k_loss, x0)


# --------------------------------------------------------------------------- exact and sliced SM


def test_exact_score_matching_gaussian(x64):
    """For N(mu, sd^2 I) and the true score s = -(x - mu)/sd^2:
    ESM(x) = 1/2 ||x - mu||^2 / sd^4 - d / sd^2 per example, with mean -d / (2 sd^2)
    (= -1/2 E||s||^2, since E[tr grad s] = -E||s||^2 by integration by parts)."""
    d, mu, sd = 3, 0.5, 0.7
    x = mu + sd * jax.random.normal(jax.random.key(8), (20_000, d))
    score = lambda x: -(x - mu) / sd**2  # noqa: E731
    vals = jax.jit(lambda x: losses.exact_score_matching(score, x))(x)
    want = 0.5 * np.sum((np.asarray(x) - mu) ** 2, -1) / sd**4 - d / sd**2
    np.testing.assert_allclose(vals, want, rtol=1e-12, atol=1e-12)
    ok, info = _within(vals, -d / (2 * sd**2))
    assert ok, info


def test_exact_score_matching_linear_field(x64):
    """A non-symmetric linear field s(x) = A x + b: ESM = 1/2 ||A x + b||^2 + tr A exactly."""
    a = jnp.array([[0.3, -1.2, 0.5], [0.7, -0.4, 0.0], [2.0, 0.1, -0.9]])
    b = jnp.array([0.1, -0.2, 0.3])
    x = jax.random.normal(jax.random.key(9), (5, 3))
    vals = jax.jit(lambda x: losses.exact_score_matching(lambda x: x @ a.T + b, x))(x)
    want = 0.5 * np.sum((np.asarray(x) @ np.asarray(a).T + np.asarray(b)) ** 2, -1) + float(jnp.trace(a))
    np.testing.assert_allclose(vals, want, rtol=1e-12)
    # Works for non-flat examples too: (B, 2, 2) with an elementwise field 2 x -> tr = 2 * 4.
    x4 = jax.random.normal(jax.random.key(10), (3, 2, 2))
    np.testing.assert_allclose(jax.jit(lambda x: losses.exact_score_matching(lambda y: 2 * y, x))(x4),
                               2 * np.sum(np.asarray(x4) ** 2, (1, 2)) + 8.0, rtol=1e-12)


def test_exact_score_matching_minimal_at_true_score(x64):
    """E[ESM(s)] - E[ESM(s*)] = 1/2 E||s - s*||^2 (Hyvarinen 2005, Thm. 1), on mixture data."""
    mix = oracles.anisotropic_mixture_2d()
    x = _sample(mix, jax.random.key(11), 8192)
    true = lambda x: mix.score_scaled(x, 1.0, 0.0)  # noqa: E731
    perts = {"scale1.1": lambda x: 1.1 * true(x), "shift0.1": lambda x: true(x) + 0.1}

    @jax.jit
    def run(x):
        base = losses.exact_score_matching(true, x)
        return {name: (losses.exact_score_matching(pert, x) - base, 0.5 * jnp.sum((pert(x) - true(x)) ** 2, -1))
                for name, pert in perts.items()}

    for name, (diff, excess) in run(x).items():
        assert float(np.mean(diff)) > 0, name
        ok, info = _within(diff - excess, 0.0)
        assert ok, (name, info)


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
def test_sliced_score_matching_expectation_equals_exact(projection, x64):
    """E_v[v^T J v + 1/2 (v^T s)^2] = tr J + 1/2 ||s||^2 when E[v v^T] = I (Song et al. 2019), per
    example; checked with 20000 projections of each of 4 points, 5-sigma bound per point. SSM-VR has
    the same expectation. (Its variance is not always smaller: measured larger here for gaussian v.)"""
    mix = oracles.anisotropic_mixture_2d()
    score = lambda x: mix.score_scaled(x, 1.0, 0.0)  # noqa: E731
    x = _sample(mix, jax.random.key(12), 4)
    esm = np.asarray(jax.jit(lambda x: losses.exact_score_matching(score, x))(x))
    m = 20_000
    x_rep = jnp.repeat(x, m, axis=0)  # one projection per copy: per-projection values for the SE

    @jax.jit
    def both(key):
        return (losses.sliced_score_matching(score, key, x_rep, projection=projection).reshape(4, m),
                losses.sliced_score_matching(score, key, x_rep, projection=projection,
                                             variance_reduction=True).reshape(4, m))

    ssm, vr = (np.asarray(a) for a in both(jax.random.key(13)))
    for i in range(4):
        for vals in (ssm[i], vr[i]):
            ok, info = _within(vals, float(esm[i]))
            assert ok, (i, info)
    # num_projections averages M draws: the (B,) result with M = 20000 is within the same bound.
    avg = jax.jit(lambda k: losses.sliced_score_matching(score, k, x, num_projections=m,
                                                         projection=projection))(jax.random.key(14))
    se = np.std(ssm, axis=1) / math.sqrt(m)
    np.testing.assert_array_less(np.abs(np.asarray(avg) - esm), 5 * se)


def test_sliced_score_matching_options():
    score = lambda x: -x  # noqa: E731
    x = jnp.ones((3, 2))
    key = jax.random.key(15)
    a = losses.sliced_score_matching(score, key, x, num_projections=4)
    np.testing.assert_array_equal(a, losses.sliced_score_matching(score, key, x, num_projections=4))
    assert a.shape == (3,)
    # For s = -x, J = -I: VR value is -||v||^2 averaged + 1/2 ||x||^2; with rademacher ||v||^2 = D exactly.
    vr = losses.sliced_score_matching(score, key, x, num_projections=3, projection="rademacher",
                                      variance_reduction=True)
    np.testing.assert_allclose(vr, -2.0 + 0.5 * 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="'uniform'"):
        losses.sliced_score_matching(score, key, x, projection="uniform")
    with pytest.raises(ValueError, match="num_projections"):
        losses.sliced_score_matching(score, key, x, num_projections=0)


# --------------------------------------------------------------------------- hybrid / VLB


def _grid_data(key, shape):
    """Data on the 8-bit grid in [-1, 1] (the discretized decoder's domain)."""
    return jax.random.randint(key, shape, 0, 256).astype(jnp.asarray(0.0).dtype) / 127.5 - 1.0


def test_hybrid_simple_equals_simple(x64):
    s = schedules.cosine(50)
    x0 = _grid_data(jax.random.key(16), (8, 2, 2, 3))
    w = jax.random.normal(jax.random.key(17), (8, 2, 2, 6))
    model = lambda x, t: w + jnp.concatenate([x, x], -1)  # noqa: E731

    @jax.jit
    def run(key):
        return {mt: (losses.hybrid(model, s, key, x0, mean_type=mt, loss_type="simple"),
                     losses.simple(model, s, key, x0, mean_type=mt)) for mt in ("eps", "x0", "v")}

    for mt, (h, ref) in run(jax.random.key(18)).items():
        np.testing.assert_allclose(h, ref, rtol=1e-12, err_msg=mt)  # two code paths, same formula


@jax.jit
def _vlb_at_perfect_mean(s, x0, v_val, key):
    """hybrid 'vlb' / 'rescaled_vlb' for the oracle pred_x0 = x0 with learned_range value v_val."""
    model = lambda x, t: jnp.concatenate([x0, jnp.full(x.shape, v_val)], -1)  # noqa: E731
    t = jnp.arange(s.num_timesteps)
    vb, terms = losses.hybrid(model, s, key, x0, mean_type="x0", loss_type="vlb", t=t, return_terms=True)
    rescaled = losses.hybrid(model, s, key, x0, mean_type="x0", loss_type="rescaled_vlb", t=t)
    return vb, terms["vb"], rescaled


@jax.jit
def _vlb_bpd_perfect_mean(s, x0, v_val, key):
    from diffax import likelihood

    model = lambda x, t: jnp.concatenate([x0, jnp.full(x.shape, v_val)], -1)  # noqa: E731
    return likelihood.vlb_bpd(model, s, key, x0, mean_type="x0", var_type="learned_range")


@pytest.mark.parametrize("v_val", [-1.0, 0.0, 0.6])
def test_vlb_at_perfect_mean_is_variance_kl(v_val, x64):
    """With pred_x0 = x0 exactly (an oracle that knows x0), p's mean equals q's posterior mean, so for
    t > 0  L_t = KL(N(m, bt) || N(m, sig2)) / ln 2 = 1/2 (log(sig2 / bt) + bt / sig2 - 1) / ln 2 per dim,
    log sig2 = f log beta + (1 - f) log bt_clipped, f = (v + 1)/2 (eq. 15): exactly 0 at v = -1.
    This is noise-free, so E_t[T L_t] over t = 0..T-1 ('rescaled_vlb') equals sum_t L_t from
    `likelihood.vlb_bpd` (total - prior) exactly."""
    T = 20
    s = schedules.linear(T, beta_start=1e-3, beta_end=0.2)
    x0 = _grid_data(jax.random.key(19), (1, 3, 2))
    vb, terms_vb, rescaled = _vlb_at_perfect_mean(s, jnp.repeat(x0, T, axis=0), v_val, jax.random.key(20))
    b = np.asarray(s.betas, np.float64)
    bt = np.asarray(s.posterior_variance, np.float64)
    bt_clip = np.exp(np.asarray(s.posterior_log_variance_clipped, np.float64))
    f = (v_val + 1) / 2
    sig2 = np.exp(f * np.log(b) + (1 - f) * np.log(bt_clip))
    kl = 0.5 * (np.log(sig2[1:] / bt[1:]) + bt[1:] / sig2[1:] - 1) / math.log(2)
    np.testing.assert_allclose(vb[1:], kl, rtol=1e-9, atol=1e-12)
    if v_val == -1.0:
        np.testing.assert_allclose(vb[1:], 0.0, atol=1e-12)
    else:  # negative control: a variance off beta-tilde costs > 1e-5 bits/dim at every t > 0
        assert float(np.min(vb[1:])) > 1e-5  # (smallest measured, at v = 0, t = T-1: 9.8e-5)
    np.testing.assert_array_equal(terms_vb, vb)
    np.testing.assert_allclose(rescaled, T * vb, rtol=1e-12)
    full = _vlb_bpd_perfect_mean(s, x0, v_val, jax.random.key(21))
    np.testing.assert_allclose(float(np.mean(rescaled)), float(full["total"][0] - full["prior"][0]),
                               rtol=1e-9)


def _hybrid_setup():
    s = schedules.cosine(30)
    x0 = _grid_data(jax.random.key(24), (6, 2, 2, 3))
    params = 0.3 * jax.random.normal(jax.random.key(25), (6, 2, 2, 6))
    t = jnp.array([0, 1, 5, 12, 20, 29])
    return s, x0, params, t


def _param_model(p):
    """A 'model' whose output is p plus x_t on the mean channels (so every output entry is a parameter)."""
    return lambda x, t: p + jnp.concatenate([x, jnp.zeros_like(x)], -1)


@pytest.mark.slow
def test_hybrid_stop_gradient_on_mean(x64, mean_type="eps"):
    """grad of (hybrid - simple) wrt the mean channels is exactly 0 (the vlb term sees sg(mean)), the
    variance channels get a nonzero gradient, and the hybrid's mean gradient equals the MSE's.
    Negative control: 'vlb' (no stop-gradient) sends gradient to the mean channels."""
    s, x0, params, t = _hybrid_setup()
    key = jax.random.key(26)

    def total(p, loss_type):
        return jnp.sum(losses.hybrid(_param_model(p), s, key, x0, mean_type=mean_type, loss_type=loss_type, t=t))

    grads = jax.jit(lambda p: [jax.grad(total)(p, lt) for lt in ("hybrid", "simple", "vlb")])
    g_h, g_s, g_v = (np.asarray(g) for g in grads(params))
    diff = g_h - g_s
    assert float(np.max(np.abs(diff[..., :3]))) == 0.0
    assert float(np.min(np.sum(np.abs(diff[..., 3:]), axis=(1, 2, 3)))) > 0  # every example
    assert float(np.max(np.abs(g_s[..., 3:]))) == 0.0  # MSE does not train the variance
    assert float(np.min(np.sum(np.abs(g_v[..., :3]), axis=(1, 2, 3)))) > 0
    # The variance gradient of the hybrid is lambda T times that of the plain vlb term.
    np.testing.assert_allclose(diff[..., 3:], 0.001 * 30 * g_v[..., 3:], rtol=1e-9, atol=1e-15)


@pytest.mark.slow
def test_hybrid_value_relations(x64):
    """hybrid = w (mse + lambda T vb);  rescaled_mse = hybrid at lambda = 0.001 (improved-diffusion's
    vb T / 1000);  'vlb' = w vb;  'rescaled_vlb' = T w vb;  fixed variances drop the frozen vb term;
    t passed explicitly reproduces the randomly drawn one (same key -> same noise)."""
    s, x0, params, t = _hybrid_setup()
    T = s.num_timesteps
    key = jax.random.key(27)
    model = _param_model(params)
    model_c = lambda x, t_: params[..., :3]  # noqa: E731  (fixed-variance output, C channels)
    w = jnp.linspace(0.5, 2.0, 6)

    @jax.jit
    def run(key):
        h = lambda **kw: losses.hybrid(model, s, key, x0, t=t, **kw)  # noqa: E731
        out = dict(
            hybrid=h(loss_type="hybrid", lambda_vlb=0.01, t_weights=w, return_terms=True),
            rescaled_mse=h(loss_type="rescaled_mse", lambda_vlb=0.5),
            hybrid_1e3=h(loss_type="hybrid", lambda_vlb=0.001),
            vlb=h(loss_type="vlb", t_weights=w),
            rescaled_vlb=h(loss_type="rescaled_vlb"),
            fixed_hybrid=losses.hybrid(model_c, s, key, x0, t=t, var_type="fixed_small", loss_type="hybrid"),
            fixed_simple=losses.simple(model_c, s, key, x0, t=t),
            rand_t=losses.hybrid(model, s, key, x0, return_terms=True),
        )
        out["replay"] = losses.hybrid(model, s, key, x0, t=out["rand_t"][1]["t"])
        return out

    out = run(key)
    h, terms = out["hybrid"]
    np.testing.assert_allclose(h, w * (terms["mse"] + 0.01 * T * terms["vb"]), rtol=1e-12)
    np.testing.assert_array_equal(terms["t"], t)
    assert float(np.min(terms["vb"])) > 0
    np.testing.assert_allclose(out["rescaled_mse"], out["hybrid_1e3"], rtol=1e-12)
    np.testing.assert_allclose(out["rescaled_mse"], terms["mse"] + terms["vb"] * T / 1000, rtol=1e-12)
    np.testing.assert_allclose(out["vlb"], w * terms["vb"], rtol=1e-12)
    np.testing.assert_allclose(out["rescaled_vlb"], T * terms["vb"], rtol=1e-12)
    # Fixed variance: 'hybrid' is 'simple' (improved-diffusion adds vb only for learned sigmas).
    np.testing.assert_allclose(out["fixed_hybrid"], out["fixed_simple"], rtol=1e-12)
    # Random t: in range, and replaying it explicitly with the same key gives the same losses.
    loss_r, terms_r = out["rand_t"]
    assert loss_r.shape == (6,)
    assert int(np.min(terms_r["t"])) >= 0 and int(np.max(terms_r["t"])) < T
    np.testing.assert_allclose(out["replay"], loss_r, rtol=1e-12)
    # Same key -> same bits (the jitted call is a pure function of its key).
    np.testing.assert_array_equal(run(key)["rand_t"][0], loss_r)


@pytest.mark.parametrize("kw,needle", [
    (dict(loss_type="kl"), "'kl'"),
    (dict(mean_type="score"), "'score'"),
    (dict(var_type="learnt"), "'learnt'"),
    (dict(lambda_vlb=-1.0), "-1.0"),
    (dict(lambda_vlb=float("nan")), "nan"),
])
def test_hybrid_rejects_bad_options(kw, needle):
    s, x0, params, _ = _hybrid_setup()
    with pytest.raises(ValueError, match=needle):
        losses.hybrid(lambda x, t: params, s, jax.random.key(0), x0, **kw)
