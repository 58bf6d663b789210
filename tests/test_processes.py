"""Tests for diffax.processes: the continuous VP against the discrete schedule and score_sde's VPSDE (x64)."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffax import processes, schedules


@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic", "sigmoid"])
def test_alpha_bar_matches_discrete_alphas_cumprod(x64, name):
    """abar(tau_k) == alphas_cumprod[k] at tau_k = (k+1)/T, and beta = -T log(1 - betas[k]) inside the piece."""
    s = schedules.get(name, 200)
    sde = processes.ContinuousVP.from_schedule(s)
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
        processes.ContinuousVP.linear() if which == "linear"
        else processes.ContinuousVP.from_schedule(schedules.cosine(50))
    )
    n = 20000  # a multiple of 50: the midpoint rule is exact on the piecewise-constant part
    mids = (jnp.arange(n) + 0.5) / n
    cum = -jnp.cumsum(sde.beta(mids)) / n
    # Midpoint error for the linear beta is 0 (beta is linear); tolerance covers rounding only.
    np.testing.assert_allclose(cum, sde.log_alpha_bar(jnp.arange(1, n + 1) / n), atol=1e-9)


def test_closed_form_linear_vpsde(x64):
    """ContinuousVP.linear is score_sde's VPSDE: log abar = -(b0 tau + (b1 - b0) tau^2 / 2)."""
    sde = processes.ContinuousVP.linear(beta_min=0.1, beta_max=20.0)
    tau = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(sde.log_alpha_bar(tau), -(0.1 * tau + 0.5 * 19.9 * tau**2), rtol=1e-14)
    np.testing.assert_allclose(sde.beta(tau), 0.1 + 19.9 * tau, rtol=1e-14)


def test_discrete_linear_schedule_tends_to_score_sde_vpsde(x64):
    """DDPM's linear schedule with betas = linspace(0.1/T, 20/T, T) -> the VPSDE (0.1, 20) as T -> inf.

    The gap in log abar is O(1/T) (index offset k/(T-1) vs (k+1)/T and -log(1 - b) = b + O(b^2)),
    so 10x more steps must shrink it at least 5x; at T = 10000 it is below 0.01 nats.
    """
    tau = jnp.linspace(0.0, 1.0, 1001)
    ref = processes.ContinuousVP.linear(0.1, 20.0).log_alpha_bar(tau)
    gaps = []
    for T in (1000, 10000):
        sde = processes.ContinuousVP.from_schedule(schedules.linear(T, 0.1 / T, 20.0 / T))
        gaps.append(float(jnp.max(jnp.abs(sde.log_alpha_bar(tau) - ref))))
    assert gaps[1] < gaps[0] / 5 and gaps[1] < 1e-2, gaps


@pytest.mark.parametrize("which", ["linear", "from_schedule"])
def test_tau_from_log_alpha_bar_inverts(x64, which):
    sde = (
        processes.ContinuousVP.linear() if which == "linear"
        else processes.ContinuousVP.from_schedule(schedules.linear(1000))
    )
    tau = jnp.linspace(0.0, 1.0, 257)
    np.testing.assert_allclose(sde.tau_from_log_alpha_bar(sde.log_alpha_bar(tau)), tau, atol=1e-12)
