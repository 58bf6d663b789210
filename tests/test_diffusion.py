"""Tests for diffax.diffusion against closed forms computed independently (NumPy, float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from diffax import diffusion, schedules

NAMES = ["linear", "cosine", "quadratic", "sigmoid"]


def _abar(s):
    """alpha-bar recomputed in float64 NumPy from the betas alone (independent of the tables)."""
    return np.cumprod(1.0 - np.asarray(s.betas, np.float64))


# --------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [0, 49, 199])
def test_q_sample_monte_carlo_moments(name, t, x64):
    s = schedules.get(name, 200)
    n, x0_val = 40_000, 1.7
    x0 = jnp.full((n, 1), x0_val)
    noise = jax.random.normal(jax.random.key(0), (n, 1))
    x_t = np.asarray(diffusion.q_sample(s, x0, jnp.full((n,), t), noise))[:, 0]
    abar = _abar(s)[t]
    mean_want, var_want = math.sqrt(abar) * x0_val, 1.0 - abar
    # 5-sigma bounds (two-sided false-failure probability 6e-7 per check): the MC standard error of
    # the mean is sqrt(var / n); that of the sample variance is var * sqrt(2 / (n - 1)).
    se_mean = math.sqrt(var_want / n)
    se_var = var_want * math.sqrt(2.0 / (n - 1))
    assert abs(x_t.mean() - mean_want) < 5 * se_mean
    assert abs(x_t.var(ddof=1) - var_want) < 5 * se_var
    # Negative control: the same bound rejects a variance 10% off.
    assert abs(x_t.var(ddof=1) - 1.1 * var_want) > 5 * se_var


@pytest.mark.parametrize("t", [0, 9, 49])
def test_q_step_sample_composes_to_closed_form(t, x64):
    """t+1 single steps q(x_s | x_{s-1}) from x0 give q(x_t | x0) in distribution (Ho et al. eq. 4)."""
    s = schedules.cosine(50)
    n, x0_val = 20_000, -0.8
    keys = jax.random.split(jax.random.key(1), t + 1)

    def step(x, inp):
        k, i = inp
        return diffusion.q_step_sample(s, x, jnp.full((n,), i), jax.random.normal(k, x.shape)), None

    x_t, _ = jax.lax.scan(step, jnp.full((n, 1), x0_val), (keys, jnp.arange(t + 1)))
    x_t = np.asarray(x_t)[:, 0]
    abar = _abar(s)[t]
    z = (x_t - math.sqrt(abar) * x0_val) / math.sqrt(1.0 - abar)
    # Kolmogorov-Smirnov test of the standardized samples against N(0, 1) at alpha = 1e-3.
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    # Negative control: against the marginal of a different step the same test must reject.
    wrong = _abar(s)[min(t + 5, 49) if t < 45 else t - 10]
    z_wrong = (x_t - math.sqrt(wrong) * x0_val) / math.sqrt(1.0 - wrong)
    assert scipy.stats.kstest(z_wrong, "norm").pvalue < 1e-3


def test_q_mean_variance_closed_form(x64):
    s = schedules.linear(100)
    x0 = jnp.linspace(-1, 1, 12).reshape(4, 3)
    t = jnp.array([0, 5, 50, 99])
    mean, var, log_var = diffusion.q_mean_variance(s, x0, t)
    abar = _abar(s)[np.asarray(t)][:, None]
    np.testing.assert_allclose(mean, np.sqrt(abar) * np.asarray(x0), rtol=1e-12)
    np.testing.assert_allclose(np.broadcast_to(var, (4, 3)), np.broadcast_to(1 - abar, (4, 3)), rtol=1e-10)
    np.testing.assert_allclose(np.exp(np.broadcast_to(log_var, (4, 3))), np.broadcast_to(1 - abar, (4, 3)),
                               rtol=1e-10)


# --------------------------------------------------------------------------- posterior


def _bayes_posterior(betas, t, x0, x_t):
    """Moments of q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0) by precision weighting (t >= 1)."""
    abar = np.cumprod(1 - betas)
    beta, a_prev = betas[t], abar[t - 1]
    prec_prior, prec_lik = 1 / (1 - a_prev), (1 - beta) / beta  # likelihood in x_{t-1}: N(x_t/sqrt(a), b/a)
    prec = prec_prior + prec_lik
    mean = (prec_prior * math.sqrt(a_prev) * x0 + prec_lik * x_t / math.sqrt(1 - beta)) / prec
    return mean, 1 / prec


def _grid_posterior(betas, t, x0, x_t, num=400_001):
    """The same posterior by numerical normalisation of the product density on a fine 1-D grid."""
    abar = np.cumprod(1 - betas)
    beta, a_prev = betas[t], abar[t - 1]
    centers = [x_t / math.sqrt(1 - beta), math.sqrt(a_prev) * x0]
    width = 12 * max(math.sqrt(beta / (1 - beta)), math.sqrt(1 - a_prev))
    grid = np.linspace(min(centers) - width, max(centers) + width, num)
    logp = (-0.5 * (x_t - math.sqrt(1 - beta) * grid) ** 2 / beta
            - 0.5 * (grid - math.sqrt(a_prev) * x0) ** 2 / (1 - a_prev))
    w = np.exp(logp - logp.max())
    w /= scipy.integrate.trapezoid(w, grid)
    mean = scipy.integrate.trapezoid(w * grid, grid)
    return mean, scipy.integrate.trapezoid(w * (grid - mean) ** 2, grid)


@pytest.mark.parametrize("name", NAMES)
def test_q_posterior_equals_bayes_product(name, x64):
    T = 100
    s = schedules.get(name, T, **({} if name == "cosine" else dict(beta_start=1e-3, beta_end=0.1)))
    betas = np.asarray(s.betas, np.float64)
    ts = [1, 2, 37, T - 1]
    x0 = np.array([0.9, -0.3, 1.4, -1.1])
    x_t = np.array([0.5, 1.2, -0.7, 0.05])
    mean, var, log_var = diffusion.q_posterior(s, jnp.asarray(x0)[:, None], jnp.asarray(x_t)[:, None],
                                               jnp.asarray(ts))
    for i, t in enumerate(ts):
        m_b, v_b = _bayes_posterior(betas, t, x0[i], x_t[i])
        # Two float64 evaluations of the same closed form: agree to 1e-6 (measured ~1e-13).
        np.testing.assert_allclose(float(mean[i, 0]), m_b, atol=1e-6, rtol=0)
        np.testing.assert_allclose(float(var[i, 0]), v_b, rtol=1e-6)
        np.testing.assert_allclose(float(jnp.exp(log_var[i, 0])), v_b, rtol=1e-6)
        if t in (1, 37):  # quadrature on a 4e5-point grid (error << 1e-6) as an independent path
            m_g, v_g = _grid_posterior(betas, t, x0[i], x_t[i])
            np.testing.assert_allclose(float(mean[i, 0]), m_g, atol=1e-6, rtol=0)
            np.testing.assert_allclose(float(var[i, 0]), v_g, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_q_posterior_at_t0_is_delta_at_x0(name, x64):
    s = schedules.get(name, 100)
    x0 = jnp.array([[0.3, -0.9]])
    x_t = jnp.array([[1.5, 2.0]])
    mean, var, log_var = diffusion.q_posterior(s, x0, x_t, jnp.array([0]))
    np.testing.assert_allclose(mean, x0, rtol=1e-12, atol=1e-15)
    assert float(jnp.max(jnp.abs(var))) == 0.0
    # log variance is clipped to log beta-tilde_1 (improved-diffusion), finite.
    np.testing.assert_allclose(log_var, jnp.full((1, 2), s.posterior_log_variance_clipped[1]), rtol=0)
    assert bool(jnp.all(jnp.isfinite(log_var)))


# --------------------------------------------------------------------------- parameterizations


@pytest.mark.parametrize("name", NAMES)
def test_conversions_round_trip_and_semantics(name, x64):
    T = 1000
    s = schedules.get(name, T)
    t = jnp.arange(T)
    k1, k2 = jax.random.split(jax.random.key(2))
    x0 = jax.random.normal(k1, (T, 3))
    eps = jax.random.normal(k2, (T, 3))
    x_t = diffusion.q_sample(s, x0, t, eps)
    abar = _abar(s)[:, None]
    tol = dict(rtol=1e-5, atol=1e-5)
    # Semantics: from the true eps we recover the true x0 and v = sqrt(abar) eps - sqrt(1 - abar) x0.
    np.testing.assert_allclose(diffusion.eps_to_x0(s, x_t, t, eps), x0, **tol)
    v_true = np.sqrt(abar) * np.asarray(eps) - np.sqrt(1 - abar) * np.asarray(x0)
    np.testing.assert_allclose(diffusion.eps_to_v(s, x_t, t, eps), v_true, **tol)
    np.testing.assert_allclose(diffusion.eps_to_score(s, x_t, t, eps), -np.asarray(eps) / np.sqrt(1 - abar),
                               **tol)
    # Round trips.
    np.testing.assert_allclose(diffusion.x0_to_eps(s, x_t, t, diffusion.eps_to_x0(s, x_t, t, eps)), eps, **tol)
    np.testing.assert_allclose(diffusion.v_to_eps(s, x_t, t, diffusion.eps_to_v(s, x_t, t, eps)), eps, **tol)
    np.testing.assert_allclose(diffusion.score_to_eps(s, x_t, t, diffusion.eps_to_score(s, x_t, t, eps)), eps,
                               **tol)
    v = diffusion.eps_to_v(s, x_t, t, eps)
    np.testing.assert_allclose(diffusion.v_to_x0(s, x_t, t, v), x0, **tol)
    for mt, out in (("eps", eps), ("x0", x0), ("v", v)):
        np.testing.assert_allclose(diffusion.predict_x0(s, out, x_t, t, mt), x0, **tol)


# --------------------------------------------------------------------------- reverse step


def _true_outputs(s, x0, x_t, t, eps):
    return {"eps": eps, "x0": x0, "v": diffusion.eps_to_v(s, x_t, t, eps)}


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
@pytest.mark.parametrize("var_type", ["fixed_small", "learned_range"])
def test_p_mean_variance_at_truth_equals_posterior(name, mean_type, var_type, x64):
    s = schedules.get(name, 100)
    t = jnp.array([0, 1, 30, 99])
    k1, k2 = jax.random.split(jax.random.key(3))
    x0 = jax.random.normal(k1, (4, 2, 2, 3))
    eps = jax.random.normal(k2, x0.shape)
    x_t = diffusion.q_sample(s, x0, t, eps)
    out = _true_outputs(s, x0, x_t, t, eps)[mean_type]
    if var_type == "learned_range":
        out = jnp.concatenate([out, jnp.zeros_like(out)], axis=-1)
    pmv = diffusion.p_mean_variance(s, out, x_t, t, mean_type=mean_type, var_type=var_type)
    want_mean, _, _ = diffusion.q_posterior(s, x0, x_t, t)
    np.testing.assert_allclose(pmv["mean"], want_mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pmv["pred_x0"], x0, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pmv["pred_eps"], eps, rtol=1e-7, atol=1e-9)
    # Independent check of the eps-form mean (Ho et al. eq. 11) for t >= 1.
    b = np.asarray(s.betas, np.float64)[np.asarray(t)][:, None, None, None]
    abar = _abar(s)[np.asarray(t)][:, None, None, None]
    mu11 = (np.asarray(x_t) - b / np.sqrt(1 - abar) * np.asarray(eps)) / np.sqrt(1 - b)
    np.testing.assert_allclose(np.asarray(pmv["mean"])[1:], mu11[1:], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_model_variance_values(name, x64):
    s = schedules.get(name, 50)
    T = 50
    t = jnp.arange(T)
    x_t = jnp.zeros((T, 2))
    b = np.asarray(s.betas, np.float64)
    abar = _abar(s)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta_tilde = b * (1 - abar_prev) / (1 - abar)
    clipped = np.concatenate([[beta_tilde[1]], beta_tilde[1:]])
    eps_out = jnp.zeros((T, 2))
    tol = dict(rtol=1e-10)

    small = diffusion.p_mean_variance(s, eps_out, x_t, t, var_type="fixed_small")
    np.testing.assert_allclose(small["variance"][:, 0], beta_tilde, **tol)
    np.testing.assert_allclose(np.exp(small["log_variance"][:, 0]), clipped, **tol)

    large = diffusion.p_mean_variance(s, eps_out, x_t, t, var_type="fixed_large")
    want_large = np.concatenate([[beta_tilde[1]], b[1:]])
    np.testing.assert_allclose(large["variance"][:, 0], want_large, **tol)
    np.testing.assert_allclose(np.exp(large["log_variance"][:, 0]), want_large, **tol)

    def learned_range(v):
        out = jnp.concatenate([eps_out, jnp.full((T, 2), v)], axis=-1)
        return diffusion.p_mean_variance(s, out, x_t, t, var_type="learned_range")

    np.testing.assert_allclose(learned_range(-1.0)["variance"][:, 0], clipped, **tol)
    np.testing.assert_allclose(learned_range(1.0)["variance"][:, 0], b, **tol)
    # v = 0: the geometric mean sqrt(beta * beta-tilde_clipped) (log-linear interpolation, eq. 15).
    np.testing.assert_allclose(learned_range(0.0)["variance"][:, 0], np.sqrt(b * clipped), **tol)

    out = jnp.concatenate([eps_out, jnp.full((T, 2), -3.0)], axis=-1)
    learned = diffusion.p_mean_variance(s, out, x_t, t, var_type="learned")
    np.testing.assert_allclose(learned["variance"], np.exp(-3.0), **tol)


def test_clip_x0(x64):
    s = schedules.linear(10, 1e-4, 0.02)
    x_t = jnp.array([[0.2, -0.1, 0.0]])
    t = jnp.array([4])
    out = jnp.array([[3.0, -0.5, -7.0]])  # an x0-prediction partly outside [-1, 1]
    pmv = diffusion.p_mean_variance(s, out, x_t, t, mean_type="x0", clip_x0=1.0)
    np.testing.assert_allclose(pmv["pred_x0"], [[1.0, -0.5, -1.0]], rtol=0)
    want_mean, _, _ = diffusion.q_posterior(s, jnp.array([[1.0, -0.5, -1.0]]), x_t, t)
    np.testing.assert_allclose(pmv["mean"], want_mean, rtol=1e-12)
    np.testing.assert_allclose(pmv["pred_eps"], diffusion.x0_to_eps(s, x_t, t, pmv["pred_x0"]), rtol=1e-12)
    custom = diffusion.p_mean_variance(s, out, x_t, t, mean_type="x0", clip_x0=lambda x: jnp.clip(x, -2, 2))
    np.testing.assert_allclose(custom["pred_x0"], [[2.0, -0.5, -2.0]], rtol=0)
    unclipped = diffusion.p_mean_variance(s, out, x_t, t, mean_type="x0")
    np.testing.assert_allclose(unclipped["pred_x0"], out, rtol=0)


def test_p_mean_variance_jit_matches_eager():
    s = schedules.cosine(20)
    x_t = jax.random.normal(jax.random.key(4), (3, 4))
    out = jax.random.normal(jax.random.key(5), (3, 8))
    t = jnp.array([0, 7, 19])
    f = lambda o, x, tt: diffusion.p_mean_variance(s, o, x, tt, mean_type="v", var_type="learned_range")  # noqa
    eager, jitted = f(out, x_t, t), jax.jit(f)(out, x_t, t)
    for k in eager:
        np.testing.assert_allclose(jitted[k], eager[k], rtol=1e-5, atol=1e-6)


def test_invalid_options_raise():
    s = schedules.linear(10, 1e-4, 0.02)
    x = jnp.zeros((2, 3))
    t = jnp.array([0, 1])
    with pytest.raises(ValueError, match="'eps2'"):
        diffusion.p_mean_variance(s, x, x, t, mean_type="eps2")
    with pytest.raises(ValueError, match="'fixed'"):
        diffusion.p_mean_variance(s, x, x, t, var_type="fixed")
    with pytest.raises(ValueError, match="'score'"):
        diffusion.predict_x0(s, x, x, t, "score")
    with pytest.raises(ValueError, match="2\\*C"):
        diffusion.split_variance_output(jnp.zeros((2, 3)), "learned_range")
    with pytest.raises(ValueError, match="shape"):
        diffusion.p_mean_variance(s, jnp.zeros((2, 4)), x, t)


def test_extract_shapes():
    table = jnp.arange(10.0)
    assert diffusion.extract(table, jnp.array([1, 2]), 4).shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(diffusion.extract(table, jnp.array([1, 7]), 2)[:, 0], [1.0, 7.0])
    assert diffusion.extract(table, jnp.asarray(3), 3).shape == (1, 1, 1)


# --------------------------------------------------------------------------- t outside [0, T-1]


_T_RANGE_CALLS = {
    "q_sample": lambda s, x, t: diffusion.q_sample(s, x, t, x),
    "q_mean_variance": lambda s, x, t: diffusion.q_mean_variance(s, x, t),
    "q_step_sample": lambda s, x, t: diffusion.q_step_sample(s, x, t, x),
    "q_posterior": lambda s, x, t: diffusion.q_posterior(s, x, x, t),
    "eps_to_x0": lambda s, x, t: diffusion.eps_to_x0(s, x, t, x),
    "p_mean_variance": lambda s, x, t: diffusion.p_mean_variance(s, x, x, t, var_type="fixed_large"),
}


@pytest.mark.parametrize("name", sorted(_T_RANGE_CALLS))
@pytest.mark.parametrize("bad_t", [-1, 10, [3, -1], [9, 10, 12]])
def test_concrete_t_out_of_range_raises_naming_it(name, bad_t):
    # T = 10: t = -1 used to wrap to index 9 silently and t = 10 to give NaN; now a concrete t is
    # checked eagerly and the error names the bad values and the allowed range.
    s = schedules.linear(10, 1e-4, 0.02)
    x = jnp.ones((2, 3)) if np.ndim(bad_t) == 0 else jnp.ones((len(bad_t), 3))
    bad = sorted({v for v in np.atleast_1d(bad_t).tolist() if not 0 <= v <= 9})
    for t in (bad_t, np.asarray(bad_t), jnp.asarray(bad_t)):  # Python, NumPy and JAX indices alike
        with pytest.raises(ValueError, match=r"\[0, 9\]") as info:
            _T_RANGE_CALLS[name](s, x, t)
        assert str(bad) in str(info.value), str(info.value)


@pytest.mark.parametrize("name", sorted(_T_RANGE_CALLS))
def test_in_range_t_eager_equals_jit_and_end_points_work(name, x64):
    # The check must not reject the end points 0 and T-1, and a traced t (no check possible)
    # must give the eager result (float64; 1e-13 allows the few ulps of XLA's fused arithmetic).
    s = schedules.linear(10, 1e-4, 0.02)
    x = jax.random.normal(jax.random.key(0), (3, 2))
    t = jnp.array([0, 4, 9])
    eager = _T_RANGE_CALLS[name](s, x, t)
    jitted = jax.jit(lambda x, t: _T_RANGE_CALLS[name](s, x, t))(x, t)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15)
        assert np.all(np.isfinite(a))


def test_traced_t_out_of_range_gives_nan_not_a_wrapped_value():
    # Under jit t is a tracer and cannot be checked; an out-of-range index must then be loud
    # (NaN), never another timestep's value: -1 must not read alpha-bar_{T-1}.
    s = schedules.linear(10, 1e-4, 0.02)
    x0 = jnp.ones((4, 2))
    f = jax.jit(lambda t: diffusion.q_sample(s, x0, t, jnp.zeros_like(x0)))
    out = np.asarray(f(jnp.array([-1, 10, 3, -11])))
    assert np.all(np.isnan(out[[0, 1, 3]]))
    np.testing.assert_allclose(out[2], np.sqrt(_abar(s)[3]), rtol=1e-6)
    # Negative control: the eager path's table lookup of the last index, which t = -1 used to hit.
    assert np.all(np.isfinite(np.asarray(diffusion.q_sample(s, x0, jnp.full((4,), 9), jnp.zeros_like(x0)))))


# --------------------------------------------------------------------------- output splitting, clipping


def test_split_model_output_reads_the_split_from_var_type_or_shape():
    x_shape = (2, 5, 3)
    out = jnp.arange(2 * 5 * 6, dtype=jnp.float32).reshape(2, 5, 6)
    for var_type in ("learned", "learned_range", None):  # None: 2C channels read from the shape
        mean, var = diffusion.split_model_output(out, x_shape, var_type)
        np.testing.assert_array_equal(mean, out[..., :3])
        np.testing.assert_array_equal(var, out[..., 3:])
    plain = out[..., :3]
    for var_type in ("fixed_small", "fixed_large", None):
        mean, var = diffusion.split_model_output(plain, x_shape, var_type)
        assert mean is plain and var is None
    with pytest.raises(ValueError, match=r"\(2, 5, 6\).*\(2, 5, 3\)"):
        diffusion.split_model_output(out, x_shape, "fixed_small")  # 2C but a fixed variance
    with pytest.raises(ValueError, match=r"\(2, 5, 4\)"):
        diffusion.split_model_output(jnp.zeros((2, 5, 4)), x_shape)  # neither C nor 2C


def test_clipping_x0_by_none_a_bound_or_a_function():
    """`diffusion.apply_clip`: None passes x0, a bound c clips to [-c, c], a function maps x0."""
    x = jnp.array([-3.0, -0.5, 0.2, 2.0])
    np.testing.assert_array_equal(diffusion.apply_clip(x, None), x)
    np.testing.assert_array_equal(diffusion.apply_clip(x, 1.0), np.float32([-1.0, -0.5, 0.2, 1.0]))
    np.testing.assert_array_equal(diffusion.apply_clip(x, jnp.tanh), jnp.tanh(x))
