"""Tests for diffax.processes: the continuous VP against the discrete schedule and score_sde's VPSDE (x64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import processes, schedules


@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic", "sigmoid"])
def test_alpha_bar_matches_discrete_alphas_cumprod(x64, name):
    """abar(tau_k) == alphas_cumprod[k] at tau_k = (k+1)/T, and beta = -T log(1 - betas[k]) inside the piece."""
    s = schedules.get(name, 200)
    sde = processes.VP.from_schedule(s)
    T = s.num_timesteps
    k = jnp.arange(T)
    np.testing.assert_allclose(sde.alpha_bar((k + 1) / T), s.alphas_cumprod, rtol=1e-12)
    np.testing.assert_allclose(sde.alpha_bar(jnp.zeros(())), 1.0, rtol=0, atol=0)
    mid = (k + 0.5) / T
    np.testing.assert_allclose(sde.beta(mid), -T * jnp.log1p(-s.betas), rtol=1e-9)


@pytest.mark.parametrize("which", ["linear", "from_schedule"])
def test_beta_integrates_to_minus_log_alpha_bar(x64, which):
    """log abar(tau) = -int_0^tau beta, by the midpoint rule on a grid fine enough for 1e-7."""
    sde = (
        processes.vp_linear() if which == "linear"
        else processes.VP.from_schedule(schedules.cosine(50))
    )
    n = 20000  # a multiple of 50: the midpoint rule is exact on the piecewise-constant part
    mids = (jnp.arange(n) + 0.5) / n
    cum = -jnp.cumsum(sde.beta(mids)) / n
    # Midpoint error for the linear beta is 0 (beta is linear); tolerance covers rounding only.
    np.testing.assert_allclose(cum, sde.log_alpha_bar(jnp.arange(1, n + 1) / n), atol=1e-9)


def test_closed_form_linear_vpsde(x64):
    """vp_linear is score_sde's VPSDE: log abar = -(b0 tau + (b1 - b0) tau^2 / 2)."""
    sde = processes.vp_linear(beta_min=0.1, beta_max=20.0)
    tau = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(sde.log_alpha_bar(tau), -(0.1 * tau + 0.5 * 19.9 * tau**2), rtol=1e-14)
    np.testing.assert_allclose(sde.beta(tau), 0.1 + 19.9 * tau, rtol=1e-14)


def test_discrete_linear_schedule_tends_to_score_sde_vpsde(x64):
    """DDPM's linear schedule with betas = linspace(0.1/T, 20/T, T) -> the VPSDE (0.1, 20) as T -> inf.

    The gap in log abar is O(1/T) (index offset k/(T-1) vs (k+1)/T and -log(1 - b) = b + O(b^2)),
    so 10x more steps must shrink it at least 5x; at T = 10000 it is below 0.01 nats.
    """
    tau = jnp.linspace(0.0, 1.0, 1001)
    ref = processes.vp_linear(0.1, 20.0).log_alpha_bar(tau)
    gaps = []
    for T in (1000, 10000):
        sde = processes.VP.from_schedule(schedules.linear(T, 0.1 / T, 20.0 / T))
        gaps.append(float(jnp.max(jnp.abs(sde.log_alpha_bar(tau) - ref))))
    assert gaps[1] < gaps[0] / 5 and gaps[1] < 1e-2, gaps


@pytest.mark.parametrize("which", ["linear", "from_schedule"])
def test_tau_from_log_alpha_bar_inverts(x64, which):
    sde = (
        processes.vp_linear() if which == "linear"
        else processes.VP.from_schedule(schedules.linear(1000))
    )
    tau = jnp.linspace(0.0, 1.0, 257)
    np.testing.assert_allclose(sde.tau_from_log_alpha_bar(sde.log_alpha_bar(tau)), tau, atol=1e-12)


# --------------------------------------------------------------------------- every process (issue 22)

PROCESS_NAMES = ["vp_linear", "vp_from_schedule", "vp_cosine", "ve", "edm", "rectified_flow"]


def _process(name):
    if name == "vp_from_schedule":
        return processes.VP.from_schedule(schedules.cosine(200))
    return getattr(processes, name)()


def _closed_form(name, t):
    """(alpha, sigma) of each process from the formulas of its source, in NumPy float64 (independent code)."""
    t = np.asarray(t, np.float64)
    if name == "vp_linear":  # score_sde VPSDE, beta_min = 0.1, beta_max = 20
        a = np.exp(-0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1)
        return a, np.sqrt(1.0 - a**2)
    if name == "vp_cosine":  # Nichol & Dhariwal eq. 17, s = 0.008
        s = 0.008
        abar = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
        return np.sqrt(abar), np.sqrt(1.0 - abar)
    if name == "ve":  # score_sde VESDE, sigma_min = 0.01, sigma_max = 50
        return np.ones_like(t), 0.01 * (50.0 / 0.01) ** t
    if name == "edm":
        return np.ones_like(t), t
    if name == "rectified_flow":
        return 1.0 - t, t
    raise AssertionError(name)


def _grid(p, n=41):
    """n interior times of [t_min, t_max] (the ends excluded: log-SNR is infinite at some of them)."""
    return p.t_min + (p.t_max - p.t_min) * jnp.linspace(0.01, 0.99, n)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "ve", "edm", "rectified_flow"])
def test_alpha_sigma_log_snr_match_closed_forms(x64, name):
    """alpha, sigma, lambda = log(alpha^2/sigma^2) against the source formulas (rtol 1e-12: both sides are a
    few float64 operations; the NumPy sqrt(1 - a^2) loses at most ~1e-13 at t = 0.01); lambda's inverse
    returns t to 1e-12 relative. Negative control: the closed form at t (1 + 1e-6) fails the tolerance."""
    p = _process(name)
    t = _grid(p)
    a, s = _closed_form(name, t)
    np.testing.assert_allclose(p.alpha(t), a, rtol=1e-12)
    np.testing.assert_allclose(p.sigma(t), s, rtol=1e-12)
    np.testing.assert_allclose(p.log_snr(t), np.log(a**2 / s**2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.t_of_log_snr(p.log_snr(t)), t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.t_of_rho(p.rho(t)), t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.marginal_coefs(t)[1], s**2, rtol=1e-12)
    a2, s2 = _closed_form(name, t * (1 + 1e-6))
    assert not np.allclose(np.asarray(p.sigma(t)), s2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_derivatives_match_finite_differences(x64, name):
    """dalpha, dsigma against central differences with h = 1e-6 (t_max - t_min).

    Central-difference error relative to f': truncation h^2 f3 / (6 f1) (f3, f1 the third and first
    derivatives), for the VPs <= (beta/2)^2 h^2 / 6 <= 8e-8 (beta <= 1381 on the last piece of
    cosine(200), whose betas clip at 0.999), 0 for the linear ones; roundoff ~1e-16 |f| / h = 1e-10.
    Tolerance rtol 1e-6, atol 1e-9. For the piecewise VP the points are the pieces' midpoints (h < half a
    piece). Negative control: the derivative times 1 + 1e-4 fails."""
    p = _process(name)
    t = (jnp.arange(200) + 0.5) / 200 if name == "vp_from_schedule" else _grid(p)
    h = 1e-6 * (p.t_max - p.t_min)
    for f, df in ((p.alpha, p.dalpha), (p.sigma, p.dsigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        np.testing.assert_allclose(df(t), fd, rtol=1e-6, atol=1e-9)
    fd = (p.sigma(t + h) - p.sigma(t - h)) / (2 * h)
    assert not np.allclose(np.asarray(p.dsigma(t)) * (1 + 1e-4), fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_probability_flow_coefficients(x64, name):
    """pf_coefs against their definitions, computed here from alpha, sigma and FD-free derivatives:
    c = g^2 = 2 sigma sigma' - 2 (alpha'/alpha) sigma^2 ('tau'), c = alpha^2 + sigma^2 ('rho'),
    k = -2 f / g^2 with f = alpha'/alpha; and rho's t-derivative is g^2 / (alpha^2 + sigma^2) (autodiff of
    `rho`, rtol 1e-9). The VP's closed forms are eq. 13's (beta, 1) and (1, 1)."""
    p = _process(name)
    t = (jnp.arange(200) + 0.5) / 200 if name == "vp_from_schedule" else _grid(p)
    a, s, da, ds = p.alpha(t), p.sigma(t), p.dalpha(t), p.dsigma(t)
    f = da / a
    g2 = 2 * s * ds - 2 * f * s**2
    c, k = p.pf_coefs(t, "tau")
    np.testing.assert_allclose(c, g2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(k, -2 * f / g2, rtol=1e-9, atol=1e-12)
    c_rho, k_rho = p.pf_coefs(t, "rho")
    np.testing.assert_allclose(c_rho, a**2 + s**2, rtol=1e-12)
    np.testing.assert_allclose(k_rho, k, rtol=0, atol=0)
    drho = jax.vmap(jax.grad(lambda u: p.rho(u)))(t)
    np.testing.assert_allclose(drho, g2 / (a**2 + s**2), rtol=1e-9)
    if isinstance(p, processes.VP):
        np.testing.assert_array_equal(c, p.beta(t))
        np.testing.assert_array_equal(c_rho, 1.0)
        np.testing.assert_array_equal(k, 1.0)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_prior_matches_the_marginal_at_t_max(x64, name):
    """The prior N(0, prior_std^2 I) is the marginal at t_max of zero-mean unit-variance data up to the
    data's share: |prior_std^2 - (alpha(t_max)^2 + sigma(t_max)^2)| <= alpha(t_max)^2 (for the VP
    alpha^2 + sigma^2 = 1 = prior_std^2 to 1e-15; for VE / EDM the dropped 1 against sigma_max^2; for
    rectified flow alpha(1) = 0: exact). prior_logp is the Gaussian log-density (vs scipy, 1e-12) and
    prior_sample is prior_std times N(0, I) from the same key (bitwise)."""
    import scipy.stats

    p = _process(name)
    tm = jnp.asarray(p.t_max)
    a, s = float(p.alpha(tm)), float(p.sigma(tm))
    var = p.prior_std**2
    assert abs(var - (a**2 + s**2)) <= a**2 + 1e-12 * var, (var, a, s)  # + float64 roundoff of s^2
    if isinstance(p, (processes.VP, processes.CosineVP)):
        assert abs(a**2 + s**2 - 1.0) < 1e-15 and var == 1.0
    else:
        assert abs(p.prior_std - s) <= 1e-12 * s
    key = jax.random.PRNGKey(3)
    z = p.prior_sample(key, (5, 3, 2))
    np.testing.assert_array_equal(z, p.prior_std * jax.random.normal(key, (5, 3, 2), jnp.float64))
    want = np.sum(scipy.stats.norm.logpdf(np.asarray(z), scale=p.prior_std), axis=(1, 2))
    np.testing.assert_allclose(p.prior_logp(z), want, rtol=1e-12)


def test_processes_are_pytrees_through_jit(x64):
    """A process crosses jit as an argument (VP's arrays are leaves; float parameters static) with the same numbers."""
    t = jnp.linspace(0.1, 0.9, 5)
    for name in PROCESS_NAMES:
        p = _process(name)
        tt = p.t_min + (p.t_max - p.t_min) * t
        got = jax.jit(lambda p, u: (p.alpha(u), p.sigma(u), p.log_snr(u)))(p, tt)
        for g, w in zip(got, (p.alpha(tt), p.sigma(tt), p.log_snr(tt))):
            np.testing.assert_allclose(g, w, rtol=1e-14)  # jit may fuse differently: a few ulp


def test_bad_process_parameters_raise():
    """Each constructor names the bad parameter and what is allowed."""
    with pytest.raises(ValueError, match="beta_min"):
        processes.vp_linear(beta_min=-0.1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        processes.ve(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        processes.edm(sigma_min=0.0)
    with pytest.raises(ValueError, match="t_max must be < 1"):
        processes.vp_cosine(t_max=1.0)
