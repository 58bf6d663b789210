"""Tests for diffax.ode_likelihood: the exact ODE likelihood against analytic densities, and bits/dim.

The ground truth is `oracles.GaussianMixture`, whose noised marginals p_tau are mixtures in closed
form: its exact score makes the ODE's pushforward exact, so log-likelihoods can be compared with
analytic values. Exactness tests run in float64 (the `x64` fixture).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import ode, ode_likelihood, oracles, processes, schedules


def _gaussian_3d():
    """A single anisotropic Gaussian in D = 3: the density the ODE must reproduce is N(mu, Sigma)."""
    return oracles.GaussianMixture([1.0], [[1.0, -0.5, 0.3]], [[0.5, 2.0, 1.0]])


def _mixture_2d():
    """A two-component 2-D mixture."""
    return oracles.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [[0.4, 0.6], [0.7, 0.3]])


def _exact_prior(mix, sde):
    """log p_1 of the noised mixture at tau = 1 (removes the O(abar(1)) N(0, I)-prior mismatch)."""
    scale, var = sde.marginal_coefs(1.0)
    return lambda z: mix.log_prob_scaled(z, scale, var)


@pytest.mark.parametrize(
    "data,sde_name,time_variable",
    [("gaussian_3d", "linear", "rho"), ("gaussian_3d", "linear", "tau"), ("mixture_2d", "from_schedule", "rho")],
)
def test_exact_trace_log_likelihood_matches_analytic_density(x64, data, sde_name, time_variable):
    """ODE log p_{t_eps}(x) (exact trace, exact score, exact prior) equals the analytic density.

    The ODE gives the density of x_{t_eps} = sqrt(abar(t_eps)) x_0 + sqrt(1 - abar(t_eps)) z, which the
    oracle evaluates exactly (log_prob_scaled): tolerance 1e-2 nats/dim (the brief's; the solver
    at rtol = atol = 1e-5 is ~1e-5 accurate). With t_eps = 1e-5, abar(t_eps) = 1 - O(1e-6), so the
    data density log p(x) itself agrees to the same tolerance.
    """
    mix = _gaussian_3d() if data == "gaussian_3d" else _mixture_2d()
    sde = (
        processes.vp_linear() if sde_name == "linear"
        else processes.VP.from_schedule(schedules.linear(1000))
    )
    x = mix.sample(jax.random.PRNGKey(0), 6)
    t_eps = 1e-5
    out = jax.jit(
        lambda x: ode_likelihood.ode_log_likelihood(
            ode.oracle_score_fn(mix, sde), sde, jax.random.PRNGKey(1), x, trace="exact", t_eps=t_eps,
            time_variable=time_variable, prior_logp_fn=_exact_prior(mix, sde),
        )
    )(x)
    scale, var = sde.marginal_coefs(t_eps)
    tol = 1e-2 * mix.dim
    np.testing.assert_allclose(out["log_prob"], mix.log_prob_scaled(x, scale, var), atol=tol)
    np.testing.assert_allclose(out["log_prob"], mix.log_prob(x), atol=tol)
    np.testing.assert_allclose(out["log_prob"], out["prior_logp"] + out["delta_logp"], rtol=1e-12)
    assert out["log_prob"].shape == (6,) and int(out["nfe"]) > 0
    if data == "gaussian_3d":  # one Gaussian: also the textbook formula log N(x; mu, Sigma)
        mu, sd = mix.means[0], mix.stds[0]
        analytic = jnp.sum(-0.5 * ((x - mu) / sd) ** 2 - jnp.log(sd) - 0.5 * math.log(2 * math.pi), axis=-1)
        np.testing.assert_allclose(out["log_prob"], analytic, atol=tol)


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(x64, dist):
    """The mean of K = 256 one-probe Hutchinson estimates matches the exact-trace delta_logp.

    Bound: |mean - exact| <= 4 std / sqrt(K) per point (CLT; two-sided 4-sigma: p ~ 6e-5 per point,
    < 1e-3 over the 2 x 4 points). Solver error (~1e-5) is far below the bound.
    """
    mix = _mixture_2d()
    sde = processes.vp_linear()
    score_fn = ode.oracle_score_fn(mix, sde)
    x = mix.sample(jax.random.PRNGKey(2), 4)

    def delta(key, trace):
        return ode_likelihood.ode_log_likelihood(score_fn, sde, key, x, trace=trace, hutchinson_dist=dist)["delta_logp"]

    exact = jax.jit(lambda k: delta(k, "exact"))(jax.random.PRNGKey(0))
    K = 256
    est = jax.jit(jax.vmap(lambda k: delta(k, "hutchinson")))(jax.random.split(jax.random.PRNGKey(3), K))
    mean, std = jnp.mean(est, axis=0), jnp.std(est, axis=0, ddof=1)
    bound = 4 * std / math.sqrt(K)
    assert bool(jnp.all(std > 0)), "one-probe estimates must vary"
    assert bool(jnp.all(jnp.abs(mean - exact) <= bound)), (mean, exact, bound)
    # Negative control: a probe with E[e e^T] = I / 3 (uniform on [-1, 1], a plausible bug) gives
    # estimates est / 3 in distribution; the same 4-sigma test must reject them.
    assert bool(jnp.all(jnp.abs(mean / 3 - exact) > bound / 3)), "must reject a wrongly scaled probe"


def test_bits_per_dim_of_uniform_model_is_8(x64):
    """A uniform density on [-1, 1]^D (log p = -D log 2) puts 1/256 on each of the 256 bins: 8 bits/dim."""
    D = 3 * 8 * 8
    log_p = jnp.full((5,), -D * math.log(2.0))
    np.testing.assert_allclose(ode_likelihood.bits_per_dim(log_p, D), 8.0, rtol=1e-12)
    np.testing.assert_allclose(ode_likelihood.bits_per_dim(log_p, D, dequantized_uint8=False), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="dim"):
        ode_likelihood.bits_per_dim(log_p, 0)


def test_dequantize_lands_in_the_right_bin():
    """y = 2(x + u)/256 - 1 with u in [0, 1): floor((y + 1) * 128) == x, and E[y] = (2x + 1)/256 - 1.

    The MC check: 4000 draws per value, std of u is 1/sqrt(12); 5-sigma bound on the mean.
    """
    x = jnp.tile(jnp.arange(256, dtype=jnp.uint8), (4000, 1))
    y = ode_likelihood.dequantize(jax.random.PRNGKey(0), x)
    assert bool(jnp.all((y >= -1.0) & (y < 1.0)))
    # (y + 1) * 128 in float64 NumPy is exact for float32 y: the bin index must be x.
    np.testing.assert_array_equal(np.floor((np.asarray(y, np.float64) + 1.0) * 128.0), np.asarray(x, np.float64))
    bound = 5 * (2 / 256) / math.sqrt(12 * 4000)
    np.testing.assert_allclose(jnp.mean(y, axis=0), (2 * jnp.arange(256) + 1) / 256 - 1, atol=bound)


@pytest.mark.parametrize("name,t_max", [("vp_linear", None), ("vp_cosine", None), ("ve", None), ("edm", None),
                                        ("rectified_flow", 1.0 - 1e-3)])  # fmt: skip
def test_log_likelihood_on_any_process_matches_the_marginal_density(x64, name, t_max):
    """ode_log_likelihood (exact trace, exact score, exact prior at t_max) on every process equals the analytic
    log p_t(x) of the noised mixture (`oracles.marginal_log_prob`) at t = t_eps, the time where alpha = sigma,
    to 1e-6 nats (solver at rtol = atol = 1e-9). Negative control: the density at t_eps (1 + 1e-2) is > 1e-3 off."""
    p = getattr(processes, name)()
    mix = _mixture_2d()
    t0 = p.t_max if t_max is None else t_max
    t_eps = float(p.t_of_log_snr(0.0))
    x = mix.sample(jax.random.PRNGKey(0), 6) * float(p.alpha(t_eps)) + float(p.sigma(t_eps)) * 0.3
    out = jax.jit(
        lambda x: ode_likelihood.ode_log_likelihood(
            ode.oracle_score_fn(mix, p), p, jax.random.PRNGKey(1), x, trace="exact", t_eps=t_eps, t_max=t_max,
            rtol=1e-9, atol=1e-9, prior_logp_fn=lambda z: oracles.marginal_log_prob(mix, p, z, t0),
        )
    )(x)
    np.testing.assert_allclose(out["log_prob"], oracles.marginal_log_prob(mix, p, x, t_eps), atol=1e-6)
    assert float(jnp.min(jnp.abs(out["log_prob"] - oracles.marginal_log_prob(mix, p, x, t_eps * 1.01)))) > 1e-3


def test_default_prior_is_the_process_prior(x64):
    """Without prior_logp_fn the prior is the process's N(0, prior_std^2 I) (`Process.prior_logp`; the VP's
    N(0, I) is `standard_normal_logp` bitwise, score_sde's convention). For EDM the reported prior_logp is
    log N(x(80); 0, 80^2 I) of the encoded point (`ode_encode`, same default end t = sigma_min), to 1e-6
    relative (two solves at rtol = atol = 1e-10); N(0, I) there is far off (negative control)."""
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    np.testing.assert_array_equal(processes.vp_linear().prior_logp(z), ode_likelihood.standard_normal_logp(z))
    p, mix = processes.edm(), _mixture_2d()
    score_fn = ode.oracle_score_fn(mix, p)
    x = mix.sample(jax.random.PRNGKey(0), 3)
    out = ode_likelihood.ode_log_likelihood(score_fn, p, None, x, trace="exact", rtol=1e-10, atol=1e-10)
    x1 = ode.ode_encode(score_fn, p, x, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out["prior_logp"], p.prior_logp(x1), rtol=1e-6)
    unit_prior = ode_likelihood.standard_normal_logp(x1)
    assert not np.allclose(np.asarray(out["prior_logp"]), np.asarray(unit_prior), rtol=1e-2)
