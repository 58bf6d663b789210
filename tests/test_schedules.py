"""Tests for diffax.schedules: tables against independent NumPy formulas, validation, respacing."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import schedules

NAMES = ["linear", "cosine", "quadratic", "sigmoid"]


def _tol(precision):
    # Tables are computed in float64 NumPy and cast; float32 casting costs <= 1 ulp (~6e-8 rel).
    return dict(rtol=1e-6, atol=1e-7) if precision == "float32" else dict(rtol=1e-12, atol=1e-15)


def test_dtype_follows_precision(precision):
    s = schedules.linear(10, 1e-4, 0.02)
    want = jnp.float64 if precision == "float64" else jnp.float32
    for table in s:
        assert table.dtype == want
    assert s.num_timesteps == 10


def test_linear_endpoints(precision):
    s = schedules.linear(1000, beta_start=1e-4, beta_end=0.02)
    np.testing.assert_allclose(float(s.betas[0]), 1e-4, **_tol(precision))
    np.testing.assert_allclose(float(s.betas[-1]), 0.02, **_tol(precision))
    # Linear: constant first difference (0.02 - 1e-4) / 999.
    np.testing.assert_allclose(np.diff(np.asarray(s.betas, np.float64)), (0.02 - 1e-4) / 999,
                               rtol=1e-4 if precision == "float32" else 1e-9)


@pytest.mark.parametrize("T", [21, 50, 100, 200, 1000, 4000])
def test_default_betas_are_improved_diffusion_scaled(T):
    """None endpoints: improved-diffusion's get_named_beta_schedule('linear', T), i.e.
    linspace(1000/T * 1e-4, 1000/T * 0.02, T); quadratic and sigmoid scale the same endpoints."""
    with jax.enable_x64(True):
        scale = 1000.0 / T
        want = np.linspace(scale * 1e-4, scale * 0.02, T)  # improved-diffusion's formula, verbatim
        np.testing.assert_allclose(np.asarray(schedules.linear(T).betas), want, rtol=1e-13, atol=0)
        want_q = np.linspace((scale * 1e-4) ** 0.5, (scale * 0.02) ** 0.5, T) ** 2
        np.testing.assert_allclose(np.asarray(schedules.quadratic(T).betas), want_q, rtol=1e-13, atol=0)
        explicit = schedules.sigmoid(T, beta_start=scale * 1e-4, beta_end=scale * 0.02)
        np.testing.assert_array_equal(np.asarray(schedules.sigmoid(T).betas), np.asarray(explicit.betas))


def test_default_betas_unchanged_at_1000_and_explicit_values_used_as_given(x64):
    for name in ("linear", "quadratic", "sigmoid"):
        np.testing.assert_array_equal(
            np.asarray(schedules.get(name, 1000).betas),
            np.asarray(schedules.get(name, 1000, beta_start=1e-4, beta_end=0.02).betas),
        )
    np.testing.assert_allclose(np.asarray(schedules.linear(100, 1e-4, 0.02).betas),
                               np.linspace(1e-4, 0.02, 100), rtol=1e-13, atol=0)
    # One endpoint given, the other scaled.
    np.testing.assert_allclose(np.asarray(schedules.linear(100, beta_start=1e-4).betas),
                               np.linspace(1e-4, 0.2, 100), rtol=1e-13, atol=0)


@pytest.mark.parametrize("T,unscaled", [(50, 0.60), (100, 0.36), (200, 0.13)])
def test_default_linear_destroys_the_signal_at_any_T(T, unscaled):
    """With the scaled defaults alpha-bar_{T-1} stays below 1e-4 (measured 7.7e-6 / 2.0e-5 / 3.0e-5 at
    T = 50 / 100 / 200; 4.0e-5 at 1000) and `check_terminal_snr` accepts it; DDPM's unscaled betas
    (the old default) end at 0.60 / 0.36 / 0.13 and are refused with a message naming T and the value."""
    s = schedules.linear(T)
    assert 0 < schedules.terminal_alpha_bar(s) < 1e-4
    assert schedules.check_terminal_snr(s) == schedules.terminal_alpha_bar(s)
    old = schedules.linear(T, 1e-4, 0.02)
    assert abs(schedules.terminal_alpha_bar(old) - unscaled) < 0.01
    with pytest.raises(ValueError, match=rf"T={T}\b.*= {unscaled:.2f}.*> 0.001.*more timesteps"):
        schedules.check_terminal_snr(old)


def test_check_terminal_snr_bound_and_validation():
    s = schedules.cosine(1000)  # alpha-bar_{T-1} = 2.4e-9 (test_terminal_alpha_bar_near_zero)
    assert schedules.check_terminal_snr(s, max_alpha_bar=1e-8) < 1e-8
    with pytest.raises(ValueError, match="> 1e-09"):
        schedules.check_terminal_snr(s, max_alpha_bar=1e-9)
    with pytest.raises(ValueError, match="max_alpha_bar"):
        schedules.check_terminal_snr(s, max_alpha_bar=-1.0)


@pytest.mark.parametrize("name", ["linear", "quadratic", "sigmoid"])
def test_scaled_defaults_refused_when_beta_reaches_one(name):
    # T <= 20: 1000/T * 0.02 >= 1, not a valid beta; the message names T and the fix.
    with pytest.raises(ValueError, match=r"beta_end scaled by 1000/T is 2.0 >= 1 for T=10.*explicitly"):
        schedules.get(name, 10)
    with pytest.raises(ValueError, match=r"is 1.0 >= 1 for T=20"):
        schedules.get(name, 20)
    assert schedules.get(name, 10, beta_start=1e-4, beta_end=0.02).num_timesteps == 10


def test_quadratic_endpoints_and_sqrt_linear(precision):
    s = schedules.quadratic(100, beta_start=1e-4, beta_end=0.02)
    want = np.linspace(1e-2, 0.02**0.5, 100) ** 2
    np.testing.assert_allclose(np.asarray(s.betas, np.float64), want, **_tol(precision))


def test_cosine_matches_f_ratio(precision):
    T, s_off, max_beta = 1000, 0.008, 0.999
    sch = schedules.cosine(T, s=s_off, max_beta=max_beta)
    u = np.arange(T + 1) / T
    f = np.cos((u + s_off) / (1 + s_off) * math.pi / 2) ** 2
    abar = f / f[0]  # independent computation of alpha-bar(t/T) = f(t)/f(0)
    beta_raw = 1 - abar[1:] / abar[:-1]
    betas = np.asarray(sch.betas, np.float64)
    assert np.all(betas <= max_beta * (1 + 1e-7))
    unclipped = beta_raw < max_beta
    assert unclipped[:-1].all() and not unclipped[-1]  # only the last step is clipped for T=1000
    np.testing.assert_allclose(betas[unclipped], beta_raw[unclipped], **_tol(precision))
    # Where no clip happened alpha-bar_t (0-based t) equals f(t+1)/f(0).
    acp = np.asarray(sch.alphas_cumprod, np.float64)
    np.testing.assert_allclose(acp[:-1], abar[1:-1], rtol=1e-5 if precision == "float32" else 1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_alphas_cumprod_strictly_decreasing(name):
    s = schedules.get(name, 1000)
    acp = np.asarray(s.alphas_cumprod, np.float64)
    assert np.all(np.diff(acp) < 0)
    assert 0 < acp[-1] < acp[0] < 1


@pytest.mark.parametrize("name,bound", [("linear", 1e-4), ("cosine", 1e-6), ("sigmoid", 1e-4),
                                        ("quadratic", 1e-3)])
def test_terminal_alpha_bar_near_zero(name, bound):
    # The chain must (nearly) destroy the signal at T = 1000: alpha-bar_{T-1} below the stated bound.
    # (Measured: linear 4.0e-5, cosine 2.4e-9, sigmoid 4.0e-5, quadratic 7.3e-4.)
    acp_last = float(schedules.get(name, 1000).alphas_cumprod[-1])
    assert 0 < acp_last < bound


@pytest.mark.parametrize("name", NAMES)
def test_posterior_tables_match_formulas(name, precision):
    s = schedules.get(name, 200)
    with jax.enable_x64(True):  # the exact float64 betas; float32 tables must be their 1-ulp casts
        b = np.asarray(schedules.get(name, 200).betas, np.float64)
    acp = np.cumprod(1 - b)
    acp_prev = np.concatenate([[1.0], acp[:-1]])
    post_var = b * (1 - acp_prev) / (1 - acp)
    # float32 tables are casts of float64 values (<= 1 ulp ~ 6e-8 relative); float64 to rounding.
    tol = dict(rtol=2e-7, atol=0) if precision == "float32" else dict(rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.asarray(s.alphas, np.float64), 1 - b, **tol)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod, np.float64), acp,
                               **tol)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod_prev, np.float64), acp_prev,
                               **tol)
    assert float(s.alphas_cumprod_prev[0]) == 1.0
    assert float(s.posterior_variance[0]) == 0.0
    np.testing.assert_allclose(np.asarray(s.posterior_variance, np.float64), post_var,
                               **tol)
    log_clipped = np.log(np.concatenate([[post_var[1]], post_var[1:]]))
    np.testing.assert_allclose(np.asarray(s.posterior_log_variance_clipped, np.float64),
                               log_clipped, **tol)
    np.testing.assert_allclose(np.asarray(s.posterior_mean_coef1, np.float64),
                               b * np.sqrt(acp_prev) / (1 - acp),
                               **tol)
    np.testing.assert_allclose(np.asarray(s.posterior_mean_coef2, np.float64),
                               (1 - acp_prev) * np.sqrt(1 - b) / (1 - acp),
                               **tol)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_invalid_num_timesteps(bad):
    # The message names the offending value.
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        schedules.linear(bad)


@pytest.mark.parametrize(
    "betas,needle",
    [
        ([0.1, 0.0, 0.2], "0.0"),
        ([0.1, 1.0], "1.0"),
        ([0.1, -0.2], "-0.2"),
        ([0.1, float("nan")], "nan"),
        ([0.1, float("inf")], "inf"),
        ([[0.1, 0.2]], r"\(1, 2\)"),
        ([], r"\(0,\)"),
    ],
)
def test_from_betas_rejects_bad_input(betas, needle):
    with pytest.raises(ValueError, match=needle):
        schedules.from_betas(betas)


def test_builders_reject_bad_hyperparameters():
    with pytest.raises(ValueError, match="1.5"):
        schedules.linear(10, beta_start=1.5)
    with pytest.raises(ValueError, match="max_beta"):
        schedules.cosine(10, max_beta=1.0)
    with pytest.raises(ValueError, match="'nope'"):
        schedules.get("nope", 10)


def test_space_timesteps_known_examples():
    np.testing.assert_array_equal(schedules.space_timesteps(1000, 50, "leading"), np.arange(0, 1000, 20))
    np.testing.assert_array_equal(schedules.space_timesteps(10, 3, "leading"), [0, 3, 6])
    # round(linspace(0, 9, 3)) = round([0, 4.5, 9]) = [0, 4, 9] (round-half-even).
    np.testing.assert_array_equal(schedules.space_timesteps(10, 3, "linspace"), [0, 4, 9])
    # round(arange(10, 0, -10/3)) - 1 = [9, 6, 2], reversed.
    np.testing.assert_array_equal(schedules.space_timesteps(10, 3, "trailing"), [2, 6, 9])
    trailing = schedules.space_timesteps(1000, 50, "trailing")
    assert trailing[-1] == 999 and trailing.shape == (50,)
    np.testing.assert_array_equal(schedules.space_timesteps(7, 7, "linspace"), np.arange(7))
    with pytest.raises(ValueError, match="'middle'"):
        schedules.space_timesteps(10, 3, "middle")
    with pytest.raises(ValueError, match="11"):
        schedules.space_timesteps(10, 11)


def _improved_diffusion_ddim(T: int, N: int):
    """improved-diffusion's space_timesteps(T, 'ddimN'): the smallest integer stride i with
    len(range(0, T, i)) == N, else None (their ValueError)."""
    for i in range(1, T):
        if len(range(0, T, i)) == N:
            return np.arange(0, T, i)
    return None


def test_leading_refuses_strides_of_one():
    # 600 of 1000 would be 0..599 (stride 1000 // 600 = 1): refused, naming the alternatives.
    with pytest.raises(ValueError, match=r"600 of T=1000.*0\.\.599.*'linspace'.*'trailing'"):
        schedules.space_timesteps(1000, 600, "leading")
    for T, N in [(10, 6), (10, 9), (101, 51), (1000, 999)]:
        with pytest.raises(ValueError, match="'linspace' or 'trailing'"):
            schedules.space_timesteps(T, N, "leading")
    # N = T (every step) and N = T/2 (stride 2) are kept.
    np.testing.assert_array_equal(schedules.space_timesteps(1000, 1000, "leading"), np.arange(1000))
    np.testing.assert_array_equal(schedules.space_timesteps(1000, 500, "leading"), np.arange(0, 1000, 2))


def test_leading_matches_diffusers_and_improved_diffusion():
    """Every T <= 150 and every N it accepts (N <= T/2 or N = T): leading = arange(N) * (T // N)
    (diffusers' 'leading', range(0, T, T // N)[:N]); where N divides T this is improved-diffusion's
    'ddimN' (an independent reimplementation of its stride search; it refuses N = 1). Non-divisors: improved-diffusion
    picks a larger stride (e.g. T = 10, N = 3: {0, 4, 8} vs {0, 3, 6}), so only divisors are compared."""
    compared = 0
    for T in range(1, 151):
        for N in range(1, T + 1):
            if 2 * N > T and N != T:
                continue
            got = schedules.space_timesteps(T, N, "leading")
            np.testing.assert_array_equal(got, np.arange(N) * (T // N))
            ref = _improved_diffusion_ddim(T, N)
            if T % N == 0 and ref is not None:  # its loop (strides < T) cannot give N = 1
                np.testing.assert_array_equal(got, ref)
                compared += 1
    assert compared == 630  # every divisor N >= 2 of every T <= 150
    assert not np.array_equal(schedules.space_timesteps(10, 3), _improved_diffusion_ddim(10, 3))


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_linspace_and_trailing_give_n_distinct_steps_ending_at_T_minus_1(spacing):
    # Exhaustive over T <= 150 and 1 <= N <= T: N distinct ascending steps in [0, T-1], the last
    # T - 1 (linspace's first is 0). Before the fix 'trailing' refused e.g. T = 15, N = 13, where
    # arange(T, 0, -T/N) has N + 1 entries in floating point.
    for T in range(1, 151):
        for N in range(1, T + 1):
            got = schedules.space_timesteps(T, N, spacing)
            assert got.shape == (N,) and np.all(np.diff(got) > 0) and got[0] >= 0, (T, N, got)
            assert got[-1] == T - 1 or (spacing == "linspace" and N == 1), (T, N, got)
            if spacing == "linspace":
                assert got[0] == 0
    # round(15 - 15 k / 13) - 1, k = 0..12, reversed (round-half-even at 7.5 -> 8, 2.5 -> 2).
    np.testing.assert_array_equal(schedules.space_timesteps(15, 13, "trailing"),
                                  (np.round(15 - np.arange(13) * 15 / 13) - 1)[::-1])


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respace_keeps_alpha_bar_on_subsequence(name, precision):
    s = schedules.get(name, 1000)
    ts = schedules.space_timesteps(1000, 50, "trailing")
    r = schedules.respace(s, ts)
    assert r.num_timesteps == 50
    # Rebuilding alpha-bar from betas = 1 - ratio costs eps / ratio relative per step (cancellation
    # in 1 - (1 - ratio)), accumulated over K = 50 products: rtol = K * eps / min(ratio).
    eps = np.finfo(np.float32 if precision == "float32" else np.float64).eps
    rtol = 50 * eps / float(np.min(np.asarray(r.alphas, np.float64)))
    np.testing.assert_allclose(np.asarray(r.alphas_cumprod, np.float64),
                               np.asarray(s.alphas_cumprod, np.float64)[ts], rtol=rtol)
    # Respacing onto every timestep reproduces the schedule. beta = 1 - abar_t / abar_{t-1} from
    # tables rounded to eps: absolute error ~2 eps, i.e. relative 2 eps / beta_min (1e-4): 1.2e-3 in
    # float32, 4e-12 in float64.
    full = schedules.respace(s, np.arange(1000))
    np.testing.assert_allclose(np.asarray(full.betas, np.float64), np.asarray(s.betas, np.float64),
                               rtol=1.5e-3 if precision == "float32" else 1e-9)
    with pytest.raises(ValueError, match="strictly increasing"):
        schedules.respace(s, np.array([3, 2]))


def test_geometric_sigmas():
    sig = np.asarray(schedules.geometric_sigmas(50.0, 0.01, 10), np.float64)
    np.testing.assert_allclose(sig[[0, -1]], [50.0, 0.01], rtol=1e-6)
    ratios = sig[1:] / sig[:-1]
    np.testing.assert_allclose(ratios, (0.01 / 50.0) ** (1 / 9), rtol=1e-5)
    with pytest.raises(ValueError, match="sigma_min"):
        schedules.geometric_sigmas(0.01, 50.0, 10)


def test_leading_and_improved_diffusion_refuse_what_the_docstring_says():
    """`space_timesteps`' docstring, checked for every T <= 150 and 1 <= N <= T: 'leading' refuses exactly
    T/2 < N < T; improved-diffusion's ddimN (`_improved_diffusion_ddim`) accepts exactly the N = ceil(T / i) of
    an integer stride 1 <= i < T, which above T/2 is N = T and, for odd T, N = (T + 1) / 2 (stride 2, ending at
    T - 1), which 'leading' refuses: 500 of 999. And 300 / 400 of 1000: accepted by 'leading' (first step 897 /
    798), refused by improved-diffusion."""
    for T in range(1, 151):
        strides = {-(-T // i) for i in range(1, T)}
        for N in range(1, T + 1):
            refused = T / 2 < N < T
            try:
                schedules.space_timesteps(T, N, "leading")
                assert not refused, (T, N)
            except ValueError:
                assert refused, (T, N)
            ref = _improved_diffusion_ddim(T, N)
            assert (ref is not None) == (N in strides), (T, N)
            if ref is not None and N > T / 2:
                assert N == T or (T % 2 == 1 and N == (T + 1) // 2 and ref[-1] == T - 1), (T, N, ref)
    with pytest.raises(ValueError, match="'linspace' or 'trailing'"):
        schedules.space_timesteps(999, 500, "leading")
    np.testing.assert_array_equal(_improved_diffusion_ddim(999, 500), np.arange(0, 999, 2))
    for N, first in ((300, 897), (400, 798)):
        assert schedules.space_timesteps(1000, N, "leading")[-1] == first and _improved_diffusion_ddim(1000, N) is None
    abar = np.asarray(schedules.linear(1000).alphas_cumprod, np.float64)
    np.testing.assert_allclose([abar[897], abar[798], abar[999]], [2.9e-4, 1.6e-3, 4.0e-5], rtol=0.05)
