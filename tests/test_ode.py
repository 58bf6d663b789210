"""Tests for diffax.ode: the continuous VP, the probability-flow ODE and its exact likelihood.

The ground truth is `oracles.GaussianMixture`, whose noised marginals p_tau are mixtures in closed
form: its exact score makes the ODE's pushforward exact, so log-likelihoods, encodings and samples
can be compared with analytic values. Exactness tests run in float64 (the `x64` fixture).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from diffax import diffusion, ode, oracles, schedules


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


# --------------------------------------------------------------------------- the continuous VP


@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic", "sigmoid"])
def test_alpha_bar_matches_discrete_alphas_cumprod(x64, name):
    """abar(tau_k) == alphas_cumprod[k] at tau_k = (k+1)/T, and beta = -T log(1 - betas[k]) inside the piece."""
    s = schedules.get(name, 200)
    sde = ode.ContinuousVP.from_schedule(s)
    T = s.num_timesteps
    k = jnp.arange(T)
    np.testing.assert_allclose(sde.alpha_bar((k + 1) / T), s.alphas_cumprod, rtol=1e-12)
    np.testing.assert_allclose(sde.alpha_bar(jnp.zeros(())), 1.0, rtol=0, atol=0)
    mid = (k + 0.5) / T
    np.testing.assert_allclose(sde.beta(mid), -T * jnp.log1p(-s.betas), rtol=1e-9)


@pytest.mark.parametrize("which", ["linear", "from_schedule"])
def test_beta_integrates_to_minus_log_alpha_bar(x64, which):
    """log abar(tau) = -int_0^tau beta, by the midpoint rule on a grid fine enough for 1e-7."""
    sde = ode.ContinuousVP.linear() if which == "linear" else ode.ContinuousVP.from_schedule(schedules.cosine(50))
    n = 20000  # a multiple of 50: the midpoint rule is exact on the piecewise-constant part
    mids = (jnp.arange(n) + 0.5) / n
    cum = -jnp.cumsum(sde.beta(mids)) / n
    # Midpoint error for the linear beta is 0 (beta is linear); tolerance covers rounding only.
    np.testing.assert_allclose(cum, sde.log_alpha_bar(jnp.arange(1, n + 1) / n), atol=1e-9)


def test_closed_form_linear_vpsde(x64):
    """ContinuousVP.linear is score_sde's VPSDE: log abar = -(b0 tau + (b1 - b0) tau^2 / 2)."""
    sde = ode.ContinuousVP.linear(beta_min=0.1, beta_max=20.0)
    tau = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(sde.log_alpha_bar(tau), -(0.1 * tau + 0.5 * 19.9 * tau**2), rtol=1e-14)
    np.testing.assert_allclose(sde.beta(tau), 0.1 + 19.9 * tau, rtol=1e-14)


def test_discrete_linear_schedule_tends_to_score_sde_vpsde(x64):
    """DDPM's linear schedule with betas = linspace(0.1/T, 20/T, T) -> the VPSDE (0.1, 20) as T -> inf.

    The gap in log abar is O(1/T) (index offset k/(T-1) vs (k+1)/T and -log(1 - b) = b + O(b^2)),
    so 10x more steps must shrink it at least 5x; at T = 10000 it is below 0.01 nats.
    """
    tau = jnp.linspace(0.0, 1.0, 1001)
    ref = ode.ContinuousVP.linear(0.1, 20.0).log_alpha_bar(tau)
    gaps = []
    for T in (1000, 10000):
        sde = ode.ContinuousVP.from_schedule(schedules.linear(T, 0.1 / T, 20.0 / T))
        gaps.append(float(jnp.max(jnp.abs(sde.log_alpha_bar(tau) - ref))))
    assert gaps[1] < gaps[0] / 5 and gaps[1] < 1e-2, gaps


@pytest.mark.parametrize("which", ["linear", "from_schedule"])
def test_tau_from_log_alpha_bar_inverts(x64, which):
    sde = ode.ContinuousVP.linear() if which == "linear" else ode.ContinuousVP.from_schedule(schedules.linear(1000))
    tau = jnp.linspace(0.0, 1.0, 257)
    np.testing.assert_allclose(sde.tau_from_log_alpha_bar(sde.log_alpha_bar(tau)), tau, atol=1e-12)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v", "score"])
def test_score_fn_from_model_equals_oracle_at_grid_points(x64, mean_type):
    """At tau_k = (k+1)/T the wrapped discrete oracle (rounded index k) gives the exact continuous score."""
    s = schedules.linear(100)
    mix = oracles.seed_mixture_1d(s)
    sde = ode.ContinuousVP.from_schedule(s)

    def model_fn(x, t):
        eps = mix.eps(x, t)
        if mean_type == "eps":
            return eps
        if mean_type == "x0":
            return diffusion.eps_to_x0(s, x, t, eps)
        if mean_type == "v":
            return diffusion.eps_to_v(s, x, t, eps)
        return mix.score(x, t)

    score_fn = ode.score_fn_from_model(model_fn, s, mean_type=mean_type, time_input="round")
    k = jnp.array([0, 7, 50, 99])
    x = jnp.array([[-1.0], [0.3], [2.5], [0.0]])
    tau = (k + 1) / s.num_timesteps
    got, want = jax.jit(lambda x, tau: (score_fn(x, tau), ode.oracle_score_fn(mix, sde)(x, tau)))(x, tau)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # The float time input is the same index, un-rounded: k + 0.0 at the grid points.
    seen = []
    ode.score_fn_from_model(lambda x, t: seen.append(t) or x, s, mean_type="x0", time_input="float")(x, tau)
    np.testing.assert_allclose(seen[0], k.astype(jnp.float64), atol=1e-9)


# --------------------------------------------------------------------------- likelihood


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
    sde = ode.ContinuousVP.linear() if sde_name == "linear" else ode.ContinuousVP.from_schedule(schedules.linear(1000))
    x = mix.sample(jax.random.PRNGKey(0), 6)
    t_eps = 1e-5
    out = jax.jit(
        lambda x: ode.ode_log_likelihood(
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
    sde = ode.ContinuousVP.linear()
    score_fn = ode.oracle_score_fn(mix, sde)
    x = mix.sample(jax.random.PRNGKey(2), 4)

    def delta(key, trace):
        return ode.ode_log_likelihood(score_fn, sde, key, x, trace=trace, hutchinson_dist=dist)["delta_logp"]

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
    np.testing.assert_allclose(ode.bits_per_dim(log_p, D), 8.0, rtol=1e-12)
    np.testing.assert_allclose(ode.bits_per_dim(log_p, D, dequantized_uint8=False), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="dim"):
        ode.bits_per_dim(log_p, 0)


def test_dequantize_lands_in_the_right_bin():
    """y = 2(x + u)/256 - 1 with u in [0, 1): floor((y + 1) * 128) == x, and E[y] = (2x + 1)/256 - 1.

    The MC check: 4000 draws per value, std of u is 1/sqrt(12); 5-sigma bound on the mean.
    """
    x = jnp.tile(jnp.arange(256, dtype=jnp.uint8), (4000, 1))
    y = ode.dequantize(jax.random.PRNGKey(0), x)
    assert bool(jnp.all((y >= -1.0) & (y < 1.0)))
    # (y + 1) * 128 in float64 NumPy is exact for float32 y: the bin index must be x.
    np.testing.assert_array_equal(np.floor((np.asarray(y, np.float64) + 1.0) * 128.0), np.asarray(x, np.float64))
    bound = 5 * (2 / 256) / math.sqrt(12 * 4000)
    np.testing.assert_allclose(jnp.mean(y, axis=0), (2 * jnp.arange(256) + 1) / 256 - 1, atol=bound)


# --------------------------------------------------------------------------- sampling / encoding


@pytest.mark.parametrize("sde_name", ["linear", "from_schedule"])
def test_encode_then_decode_returns_x(x64, sde_name):
    """The flow is invertible: decode(encode(x)) == x within 1e-3 (default rtol = atol = 1e-5)."""
    mix = _mixture_2d()
    sde = ode.ContinuousVP.linear() if sde_name == "linear" else ode.ContinuousVP.from_schedule(schedules.linear(1000))
    score_fn = ode.oracle_score_fn(mix, sde)
    x = mix.sample(jax.random.PRNGKey(0), 16)

    def roundtrip(x):
        latent = ode.ode_encode(score_fn, sde, x)
        return latent, ode.ode_decode(score_fn, sde, latent)

    latent, back = jax.jit(roundtrip)(x)
    np.testing.assert_allclose(back, x, atol=1e-3)
    # Encoding maps the data to the N(0, I) prior: the latents are not the inputs.
    assert float(jnp.max(jnp.abs(latent - x))) > 0.1


def _mixture_quantiles(mix, u):
    """F^{-1}(u) of a 1-D mixture, F(x) = sum_k w_k Phi((x - mu_k) / s_k), by 60 bisection steps (NumPy)."""
    w, mu, sd = (np.asarray(a, np.float64) for a in (mix.weights, mix.means[:, 0], mix.stds[:, 0]))

    def cdf(x):
        return np.sum(w * scipy.stats.norm.cdf((x[:, None] - mu) / sd), -1)

    lo, hi = np.full(u.shape, -20.0), np.full(u.shape, 20.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < u
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def test_ode_sampling_reproduces_the_mixture(x64):
    """The ODE pushes the N(0, 1) prior onto the data distribution (1-D seed mixture, exact score).

    A 1-D flow is monotone, so it maps prior quantiles to data quantiles: with z_i = Phi^{-1}(u_i),
    u_i = (i - 1/2)/n, W1(pushforward, data) ~= mean_i |x(z_i) - F^{-1}(u_i)| with no sampling noise.
    Bound 0.01: the known biases (t_eps = 1e-3: noise std 0.01 added to the data; abar(1) = 4e-5
    prior mismatch; solver error) are each <= ~3e-3, and 0.01 is 1/3 of the W1 between two
    independent n = 4000 data sets (measured here, ~0.02-0.05), the stated multiple.
    Negative control: the prior quantiles themselves, and the ODE of a wrong score (component std
    0.6 instead of 0.5), must fail the bound.
    """
    mix = oracles.seed_mixture_1d()
    sde = ode.ContinuousVP.linear()
    n = 512
    u = (np.arange(n) + 0.5) / n
    z = jnp.asarray(scipy.stats.norm.ppf(u)[:, None])
    target = jnp.asarray(_mixture_quantiles(mix, u)[:, None])
    wrong = oracles.GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [0.6, 0.6])

    def push(m):
        return ode.ode_sample(ode.oracle_score_fn(m, sde), sde, None, (n, 1), x_init=z)

    push = jax.jit(push)
    x, nfe = push(mix)
    w1 = float(jnp.mean(jnp.abs(x - target)))
    data1, data2 = mix.sample(jax.random.PRNGKey(1), 4000), mix.sample(jax.random.PRNGKey(2), 4000)
    baseline = float(jnp.mean(jnp.abs(jnp.sort(data1[:, 0]) - jnp.sort(data2[:, 0]))))
    assert w1 <= 0.01 and w1 <= baseline / 2, (w1, baseline)
    assert float(jnp.mean(jnp.abs(z - target))) > 0.01  # the prior itself
    assert float(jnp.mean(jnp.abs(push(wrong)[0] - target))) > 0.01  # a wrong score
    assert bool(jnp.all(jnp.diff(x[:, 0]) > 0)), "a 1-D flow preserves order"
    assert int(nfe) > 0


def test_sampling_is_deterministic_and_jittable():
    """Same key -> bitwise the same sample under jit; another key -> another; x_init replaces the drawn x_1."""
    mix = _mixture_2d()
    sde = ode.ContinuousVP.linear()
    score_fn = ode.oracle_score_fn(mix, sde)
    sample = jax.jit(lambda k: ode.ode_sample(score_fn, sde, k, (8, 2))[0])
    key = jax.random.PRNGKey(4)
    np.testing.assert_array_equal(sample(key), sample(key))
    assert float(jnp.max(jnp.abs(sample(key) - sample(jax.random.PRNGKey(5))))) > 0.1
    x1 = jax.random.normal(key, (8, 2))
    from_init = jax.jit(lambda x1: ode.ode_sample(score_fn, sde, None, (8, 2), x_init=x1)[0])(x1)
    np.testing.assert_allclose(from_init, sample(key), rtol=1e-6, atol=1e-6)


def test_nfe_counts_vector_field_evaluations():
    """The reported nfe equals the number of score calls actually executed (counted on the host)."""
    mix = _mixture_2d()
    sde = ode.ContinuousVP.linear()
    calls = []

    def score_fn(x, tau):
        jax.debug.callback(lambda: calls.append(1))
        return ode.oracle_score_fn(mix, sde)(x, tau)

    x, nfe = ode.ode_sample(score_fn, sde, jax.random.PRNGKey(0), (4, 2))
    jax.effects_barrier()
    assert len(calls) == int(nfe), (len(calls), int(nfe))


def test_bad_options_raise():
    mix = _mixture_2d()
    sde = ode.ContinuousVP.linear()
    score_fn = ode.oracle_score_fn(mix, sde)
    x = jnp.zeros((2, 2))
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="trace"):
        ode.ode_log_likelihood(score_fn, sde, key, x, trace="frobenius")
    with pytest.raises(ValueError, match="hutchinson_dist"):
        ode.ode_log_likelihood(score_fn, sde, key, x, hutchinson_dist="uniform")
    with pytest.raises(ValueError, match="solver"):
        ode.ode_sample(score_fn, sde, key, (2, 2), solver="euler")
    with pytest.raises(ValueError, match="time_variable"):
        ode.ode_sample(score_fn, sde, key, (2, 2), time_variable="sigma")
    with pytest.raises(ValueError, match="t_eps"):
        ode.ode_encode(score_fn, sde, x, t_eps=1.5)
    with pytest.raises(ValueError, match="rtol"):
        ode.ode_decode(score_fn, sde, x, rtol=-1.0)
    with pytest.raises(ValueError, match="beta_min"):
        ode.ContinuousVP.linear(beta_min=-0.1)
