"""Tests for diffax.importance_sampling (Nichol & Dhariwal 2021, sec. 3.3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import importance_sampling as ts

# Jitted once per module: compiled once per shape and reused across tests.
_update = jax.jit(ts.update_loss_history)
_probs = jax.jit(ts.timestep_probs, static_argnames="uniform_prob")
_sample = jax.jit(ts.sample_timesteps, static_argnames=("batch_size", "uniform_prob"))


def _reference_update(values, counts, t, losses):
    """improved-diffusion's LossSecondMomentResampler.update_with_all_losses, verbatim in NumPy."""
    values, counts = values.copy(), counts.copy()
    hist = values.shape[1]
    for ti, li in zip(t, losses):
        if counts[ti] == hist:
            values[ti, :-1] = values[ti, 1:]
            values[ti, -1] = li
        else:
            values[ti, counts[ti]] = li
            counts[ti] += 1
    return values, counts


def test_init_shapes_and_validation():
    state = ts.init_loss_history(7)
    assert state["values"].shape == (7, 10) and state["values"].dtype == jnp.float32
    assert state["counts"].shape == (7,) and state["counts"].dtype == jnp.int32
    with pytest.raises(ValueError, match="num_timesteps"):
        ts.init_loss_history(0)
    with pytest.raises(ValueError, match="history"):
        ts.init_loss_history(5, history=0)
    with pytest.raises(ValueError, match="shape"):
        ts.update_loss_history(state, jnp.zeros((3,), jnp.int32), jnp.zeros((4,)))


@pytest.mark.parametrize("num_t,hist,batch", [(5, 3, 8), (6, 10, 16), (40, 10, 4)])
def test_update_matches_sequential_reference_with_duplicates(num_t, hist, batch):
    traces = []

    def _update(state, t, losses):
        traces.append(1)  # runs once per trace
        return ts.update_loss_history(state, t, losses)

    update = jax.jit(_update)
    state = ts.init_loss_history(num_t, history=hist)
    ref_v, ref_c = np.zeros((num_t, hist), np.float32), np.zeros((num_t,), np.int32)
    rng = np.random.default_rng(num_t)
    for _ in range(12):  # batches with many repeated t (B > T for the first two settings)
        t = rng.integers(0, num_t, size=batch).astype(np.int32)
        losses = rng.random(batch).astype(np.float32)
        state = update(state, jnp.asarray(t), jnp.asarray(losses))
        ref_v, ref_c = _reference_update(ref_v, ref_c, t, losses)
        np.testing.assert_array_equal(np.asarray(state["counts"]), ref_c)
        np.testing.assert_array_equal(np.asarray(state["values"]), ref_v)  # exact: pure data movement
    assert len(traces) == 1  # one trace for all batches


def test_probs_uniform_until_warm_then_second_moment():
    num_t, hist = 4, 3
    state = ts.init_loss_history(num_t, history=hist)
    rows = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [4.0, 0.0, 0.0], [1.0, 1.0, 2.0]], np.float32)
    # Fill all but one slot: still uniform.
    t = np.repeat(np.arange(num_t), hist)[:-1]
    state = _update(state, jnp.asarray(t), jnp.asarray(rows.reshape(-1)[:-1]))
    np.testing.assert_allclose(np.asarray(_probs(state)), 1.0 / num_t, rtol=0, atol=0)
    state = _update(state, jnp.array([3]), jnp.array([2.0]))
    p = np.asarray(_probs(state, uniform_prob=0.01))
    rms = np.sqrt(np.mean(rows.astype(np.float64) ** 2, axis=1))
    want = 0.99 * rms / rms.sum() + 0.01 / num_t
    np.testing.assert_allclose(p, want, rtol=1e-6)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)


def _warm_state(loss_fn, num_t):
    """A full history where every stored L_t equals loss_fn(t) (a deterministic per-t loss)."""
    state = ts.init_loss_history(num_t)
    t = jnp.repeat(jnp.arange(num_t), 10)
    return _update(state, t, loss_fn(t))


def _skewed_loss(t):
    return 5.0 * jnp.exp(-t / 8.0) + 0.05  # VLB-like: large at small t, flat tail


def test_estimator_unbiased_exact_and_monte_carlo():
    num_t = 100
    state = _warm_state(_skewed_loss, num_t)
    p = np.asarray(_probs(state), np.float64)  # float32 state by contract; the sums below in float64
    assert p.max() / p.min() > 10  # genuinely non-uniform proposal
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    p = p / p.sum()
    losses = np.asarray(_skewed_loss(jnp.arange(num_t)), np.float64)
    target = losses.mean()
    # Exact expectation by summation over t: sum_t p_t w_t L_t with w_t = 1 / (T p_t).
    exact = np.sum(p * (1.0 / (num_t * p)) * losses)
    np.testing.assert_allclose(exact, target, rtol=1e-12)
    # Monte Carlo with the sampler itself.
    n = 100_000
    t, w = _sample(jax.random.PRNGKey(0), state, batch_size=n)
    t, w = np.asarray(t), np.asarray(w, np.float64)
    np.testing.assert_allclose(w, 1.0 / (num_t * p[t]), rtol=2e-6)  # float32 weights
    est = w * losses[t]
    se = est.std() / math.sqrt(n)
    assert abs(est.mean() - target) < 5 * se  # 5 standard errors: false failure < 1e-6
    # Negative control: ignoring the weights is biased far beyond that bound.
    naive = losses[t]
    assert abs(naive.mean() - target) > 50 * se


def test_importance_weights_reduce_variance():
    num_t = 100
    state = _warm_state(_skewed_loss, num_t)
    p = np.asarray(_probs(state), np.float64)
    p = p / p.sum()
    losses = np.asarray(_skewed_loss(jnp.arange(num_t)), np.float64)
    mean = losses.mean()
    var_uniform = np.mean(losses**2) - mean**2
    var_is = np.sum(p * (losses / (num_t * p)) ** 2) - mean**2  # exact, by summation over t
    # p_t ∝ |L_t| (up to 0.1% uniform mass) is the zero-variance proposal for a deterministic L(t).
    assert var_is < 1e-3 * var_uniform, (var_is, var_uniform)
    # Monte Carlo confirmation with the sampler (same draws count for both).
    n = 50_000
    t_is, w = _sample(jax.random.PRNGKey(1), state, batch_size=n)
    t_u = np.random.default_rng(2).integers(0, num_t, size=n)
    mc_is = np.var(np.asarray(w, np.float64) * losses[np.asarray(t_is)])
    mc_u = np.var(losses[t_u])
    assert mc_is < 0.01 * mc_u, (mc_is, mc_u)


def test_public_names():
    assert set(ts.__all__) == {"init_loss_history", "update_loss_history", "timestep_probs", "sample_timesteps"}
