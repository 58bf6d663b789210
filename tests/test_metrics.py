"""Tests for diffax.evaluation.metrics: FID, KID, streaming statistics, IS, Wasserstein distances, mode weights."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.stats import wasserstein_distance

from diffax.evaluation import metrics


def _random_spd(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.geomspace(1.0, cond, d)) @ q.T / cond


# --------------------------------------------------------------------------- FID


def test_frechet_identical_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), _random_spd(rng, 16)
    assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-10


def test_frechet_commuting_diagonal_and_1d():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), want, rtol=1e-12)
    # 1-D Gaussians: (mu1 - mu2)^2 + (s1 - s2)^2.
    got = metrics.frechet_distance(np.array([0.3]), np.array([[0.5**2]]), np.array([-1.2]), np.array([[2.0**2]]))
    np.testing.assert_allclose(got, 1.5**2 + 1.5**2, rtol=1e-12)


@pytest.mark.parametrize("d", [3, 32])
def test_frechet_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, cond=100.0)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-9)


def test_frechet_near_singular_finite_nonnegative():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 64))  # 10 samples in 64-D: rank-9 covariances
    s1 = np.cov(x, rowvar=False)
    s2 = np.cov(x + 1e-9 * rng.normal(size=x.shape), rowvar=False)
    val = metrics.frechet_distance(x.mean(0), s1, x.mean(0), s2)
    assert np.isfinite(val) and 0.0 <= val < 1e-6  # near-identical singular covariances: ~0
    big = metrics.frechet_distance(np.zeros(64), s1, np.zeros(64), np.zeros((64, 64)))
    np.testing.assert_allclose(big, np.trace(s1), rtol=1e-10)  # vs a point mass: tr(sigma1)


# --------------------------------------------------------------------------- streaming statistics


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_running_stats_equal_numpy(offset):
    rng = np.random.default_rng(3)
    batches = [offset + rng.normal(size=(n, 5)) @ rng.normal(size=(5, 5)) for n in (1, 7, 33, 2, 100)]
    stats = metrics.stats_init(5)
    for b in batches:
        stats = metrics.stats_update(stats, b)
    mean, cov = metrics.stats_finalize(stats)
    allx = np.concatenate(batches)
    scale = 1.0 + offset  # both sides round at the data's magnitude
    np.testing.assert_allclose(mean, allx.mean(0), rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(cov, np.cov(allx, rowvar=False), rtol=0, atol=1e-10 * scale)


# --------------------------------------------------------------------------- KID


def test_kid_equals_direct_formula():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 6)), rng.normal(0.5, 1.0, size=(9, 6))
    k = lambda a, b: (a @ b / 6 + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(12) for j in range(12) if i != j) / (12 * 11)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(12) for j in range(9)) / (12 * 9)
    np.testing.assert_allclose(metrics.polynomial_mmd2_unbiased(x, y), xx + yy - 2 * xy, rtol=1e-12)
    # KID whose subsets are all rows of both sets: every subset is a permutation, MMD^2 is invariant.
    mean, std = metrics.kernel_inception_distance(x[:9], y, num_subsets=3, subset_size=9)
    np.testing.assert_allclose(mean, metrics.polynomial_mmd2_unbiased(x[:9], y), rtol=1e-12)
    assert std < 1e-12


def test_kid_unbiased_zero_for_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(5)
    d, m, reps = 8, 50, 400
    mmd2 = metrics.polynomial_mmd2_unbiased
    same = np.array([mmd2(rng.normal(size=(m, d)), rng.normal(size=(m, d))) for _ in range(reps)])
    se = same.std() / math.sqrt(reps)
    assert abs(same.mean()) < 5 * se  # E = 0 (unbiased); 5 standard errors: false failure < 1e-6
    assert np.any(same < 0)  # an unbiased estimator of 0 must go negative
    diff = np.array(
        [mmd2(rng.normal(size=(m, d)), rng.normal(0.5, 1.0, size=(m, d))) for _ in range(100)]
    )
    assert diff.mean() > 5 * diff.std() / 10  # positive beyond 5 standard errors
    kid, kid_std = metrics.kernel_inception_distance(
        rng.normal(size=(300, d)), rng.normal(0.5, 1.0, size=(300, d)), num_subsets=10, subset_size=100
    )
    assert kid > 0 and kid_std > 0


# --------------------------------------------------------------------------- Inception score


def test_inception_score_analytic():
    k = 10
    uniform = np.full((40, k), 1.0 / k)
    assert metrics.inception_score(uniform)[0] == pytest.approx(1.0, abs=1e-12)
    onehot = np.eye(k)[np.arange(40) % k]  # confident, every class used equally
    assert metrics.inception_score(onehot)[0] == pytest.approx(k, rel=1e-12)
    # Two classes, half the samples [a, 1-a], half [1-a, a]: IS = exp(log 2 - H_b(a)).
    a = 0.8
    probs = np.array([[a, 1 - a], [1 - a, a]] * 20)
    want = math.exp(math.log(2) + a * math.log(a) + (1 - a) * math.log(1 - a))
    assert metrics.inception_score(probs)[0] == pytest.approx(want, rel=1e-12)
    # logits path equals the probability path.
    logits = np.random.default_rng(6).normal(size=(30, 7))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(
        metrics.inception_score(logits, from_logits=True, num_splits=3),
        metrics.inception_score(probs, num_splits=3),
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="from_logits"):
        metrics.inception_score(logits)


# --------------------------------------------------------------------------- Wasserstein, modes


@pytest.mark.parametrize("n,m", [(50, 50), (37, 101), (7, 3)])
def test_wasserstein_1d_matches_scipy(n, m):
    rng = np.random.default_rng(n + m)
    x, y = rng.normal(size=n), rng.normal(0.7, 2.0, size=m)
    w1d = jax.jit(metrics.wasserstein_1d, static_argnames="p")
    np.testing.assert_allclose(float(w1d(x, y)), wasserstein_distance(x, y), rtol=1e-5)
    if n == m:  # W2 by the sorted-sample formula
        want = math.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))
        np.testing.assert_allclose(float(w1d(x, y, p=2.0)), want, rtol=1e-5)
    # duplicating every sample leaves the empirical distribution (and W) unchanged
    np.testing.assert_allclose(float(w1d(np.repeat(x, 2), y)), wasserstein_distance(x, y), rtol=1e-5)


def test_sliced_wasserstein_against_projections():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(64, 3)), rng.normal(size=(48, 3)) * 1.5 + 0.3
    key = jax.random.PRNGKey(0)
    sw = float(jax.jit(lambda a, b: metrics.sliced_wasserstein(a, b, key=key, num_projections=16))(x, y))
    g = np.asarray(jax.random.normal(key, (16, 3)))
    theta = g / np.linalg.norm(g, axis=1, keepdims=True)
    want = np.mean([wasserstein_distance(x @ th, y @ th) for th in theta])
    np.testing.assert_allclose(sw, want, rtol=1e-5)
    # A translation by c: every projected W1 is |theta . c| exactly.
    c = np.array([1.0, -2.0, 0.5])
    shifted = float(metrics.sliced_wasserstein(x, x + c, key=key, num_projections=16))
    np.testing.assert_allclose(shifted, np.mean(np.abs(theta @ c)), rtol=1e-5)
    # Negative control: identical samples give 0.
    assert float(metrics.sliced_wasserstein(x, x, key=key, num_projections=16)) == 0.0


def test_mode_weights():
    means = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    samples = jnp.array([[0.1, 0.0], [9.0, 1.0], [0.5, -0.2], [1.0, 8.0], [6.0, 5.0]])
    # nearest: 0, 1, 0, 2, 1 (the last at distance sqrt(41) from (10, 0))
    np.testing.assert_allclose(np.asarray(metrics.mode_weights(samples, means)), [0.4, 0.4, 0.2])
    # with a quality threshold the far-off sample counts for no mode
    np.testing.assert_allclose(np.asarray(metrics.mode_weights(samples, means, max_dist=3.0)), [0.4, 0.2, 0.2])
