"""Tests for diffax.dpm_solver: DPM-Solver++(2M) on the exact eps of analytic Gaussian mixtures.

Reference solution: the adaptive diffrax solve of the probability-flow ODE of
`processes.ContinuousVP.from_schedule(s)` at rtol = atol = 1e-10 (x64). It shares DPM-Solver's endpoint
because with the exact score the ODE's field depends on time only through abar, so any monotone
time with the same end values of abar (here abar(tau_k) = alphas_cumprod[k] exactly) has the same
solution: from tau = 1 (index T-1) to tau = (k_end + 1)/T (index k_end).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import diffusion, dpm_solver, ode, oracles, processes, samplers, schedules
from diffax.evaluation import oracle_checks


def _reference(mix, s, x_T, k_end: int):
    """x at index k_end of the exact ODE from x_T at index T-1 (diffrax, tight tolerance)."""
    sde = processes.ContinuousVP.from_schedule(s)
    T = s.num_timesteps
    x, _ = ode.ode_solve(ode.oracle_score_fn(mix, sde), sde, x_T, t0=1.0, t1=(k_end + 1) / T,
                         rtol=1e-10, atol=1e-10)
    return x


def _rms(a, b):
    return float(jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, axis=-1))))


def measured_orders(data: str) -> dict:
    """`oracle_checks.sampler_convergence_orders` on linear T = 1000 for one oracle (x64 must be on); the
    procedure experiments/dpm_solver_order.py reports for the README."""
    s = schedules.linear(1000)
    mix = oracles.seed_mixture_1d(s) if data == "seed_1d" else oracles.anisotropic_mixture_2d(s)
    return oracle_checks.sampler_convergence_orders(mix, s)


@pytest.mark.parametrize("data", ["seed_1d", "anisotropic_2d"])
def test_second_order_convergence_to_the_ode_solution(x64, data):
    """Error vs the exact ODE solution falls as M^-2 for 2M and M^-1 for DDIM (eta = 0, same grid).

    Grid: time-uniform indices round(linspace(T-1, k_end, M+1)) with final_step='none', M = 10..80
    (see `measured_orders`). The empirical order of DPM-Solver++(2M) must lie in (1.8, 2.6)
    (measured 2.27 in 1-D, 2.15 in 2-D: a little above 2 because the error constant still shrinks
    over this M range); the order-1 control, `samplers.ddim` on the same indices (measured 1.02 /
    1.01), must fall outside that band and within 0.4 of 1. k_end = 100 rather than 0 because on
    DDPM's linear schedule lambda(k) ~ -1/2 log(beta_0 (k + 1)) is singular at the data end: the
    last step of a time-uniform grid into index 0 has h = 1/2 log(1 + 999/M), which shrinks only
    logarithmically, so no fixed M range is asymptotic there. (The full range is tested below.)
    """
    res = measured_orders(data)
    assert 1.8 < res["dpm_2m"] < 2.6, res
    assert not 1.8 < res["ddim"] < 2.6, res
    assert abs(res["ddim"] - 1.0) <= 0.4, res
    assert res["errors"]["dpm_2m"][-1] < res["errors"]["ddim"][-1] / 5, res  # 2M far more accurate at equal NFE


def test_full_range_converges_to_the_ode_solution_at_the_data(x64):
    """Default grid (time_uniform, final_step='denoise'): x -> the ODE's x at abar = 1 (tau = 0).

    The last step, x = x_theta(x_{t_{M-1}}) from index ~T/M - 1, is first order, so on the full range
    only convergence is asserted: the error falls at least 5x from 10 to 80 steps, and 2M beats
    DDIM (eta = 0, same indices) at every M.
    """
    s = schedules.linear(1000)
    mix = oracles.anisotropic_mixture_2d(s)
    shape = (256, mix.dim)
    x_T = jax.random.normal(jax.random.PRNGKey(1), shape)
    sde = processes.ContinuousVP.from_schedule(s)
    ref, _ = ode.ode_solve(ode.oracle_score_fn(mix, sde), sde, x_T, t0=1.0, t1=0.0, rtol=1e-10, atol=1e-10)
    e2, e1 = [], []
    for M in (10, 20, 40, 80):
        e2.append(_rms(dpm_solver.dpm_solver_pp_2m(mix.eps, s, None, shape, num_steps=M, x_init=x_T), ref))
        e1.append(_rms(dpm_solver.dpm_solver_pp_2m(mix.eps, s, None, shape, num_steps=M, x_init=x_T, order=1), ref))
    assert e2[-1] < e2[0] / 5, e2
    assert all(a < b for a, b in zip(e2, e1)), (e2, e1)


@pytest.mark.parametrize("spacing,mean_type", [("time_uniform", "eps"), ("leading", "v"), ("trailing", "eps")])
def test_first_order_is_ddim(x64, spacing, mean_type):
    """DPM-Solver++(1) == DDIM(eta = 0) on the same indices (Lu et al. 2022, sec. 3.3), to 1e-10.

    Also: the same key draws the same x_T in both samplers.
    """
    s = schedules.cosine(200)
    mix = oracles.anisotropic_mixture_2d(s)

    def model_fn(x, t):
        eps = mix.eps(x, t)
        return eps if mean_type == "eps" else diffusion.eps_to_v(s, x, t, eps)

    key = jax.random.PRNGKey(3)
    ts = dpm_solver.dpm_solver_timesteps(s, 12, spacing)
    got = dpm_solver.dpm_solver_pp_2m(model_fn, s, key, (64, 2), timesteps=ts, order=1, mean_type=mean_type)
    want = samplers.ddim(model_fn, s, key, (64, 2), timesteps=ts, eta=0.0, mean_type=mean_type)
    np.testing.assert_allclose(got, want, atol=1e-10)
    # Negative control: the second-order solver is a different map.
    second = dpm_solver.dpm_solver_pp_2m(model_fn, s, key, (64, 2), timesteps=ts, mean_type=mean_type)
    assert float(jnp.max(jnp.abs(second - want))) > 1e-3


def test_parameterizations_agree(x64):
    """An eps-, x0- or v-model of the same oracle gives the same samples (to 1e-9)."""
    s = schedules.linear(1000)
    mix = oracles.seed_mixture_1d(s)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (32, 1))
    outs = {
        "eps": mix.eps,
        "x0": lambda x, t: diffusion.eps_to_x0(s, x, t, mix.eps(x, t)),
        "v": lambda x, t: diffusion.eps_to_v(s, x, t, mix.eps(x, t)),
    }
    res = {m: dpm_solver.dpm_solver_pp_2m(f, s, None, (32, 1), num_steps=15, x_init=x_T, mean_type=m)
           for m, f in outs.items()}
    np.testing.assert_allclose(res["x0"], res["eps"], atol=1e-9)
    np.testing.assert_allclose(res["v"], res["eps"], atol=1e-9)


def test_nfe_trajectory_clip_and_determinism():
    """NFE = num_steps model calls (host-counted); trajectory (M+1, ...) from x_T to x; a clip bound c
    keeps the denoised output in [-c, c]; same key -> bitwise the same sample under jit."""
    s = schedules.linear(1000)
    mix = oracles.seed_mixture_1d(s)
    calls = []

    def model_fn(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return mix.eps(x, t)

    key = jax.random.PRNGKey(0)
    x, traj = dpm_solver.dpm_solver_pp_2m(model_fn, s, key, (16, 1), num_steps=7, return_trajectory=True)
    jax.effects_barrier()
    assert len(calls) == 7
    assert traj.shape == (8, 16, 1)
    np.testing.assert_array_equal(traj[-1], x)
    np.testing.assert_array_equal(traj[0], jax.random.normal(jax.random.split(key)[0], (16, 1)))
    clipped = dpm_solver.dpm_solver_pp_2m(mix.eps, s, key, (16, 1), num_steps=7, clip_x0=0.5)
    assert float(jnp.max(jnp.abs(clipped))) <= 0.5 and float(jnp.max(jnp.abs(x))) > 1.0
    sample = jax.jit(lambda k: dpm_solver.dpm_solver_pp_2m(mix.eps, s, k, (16, 1), num_steps=7))
    np.testing.assert_array_equal(sample(key), sample(key))
    np.testing.assert_allclose(sample(key), x, atol=1e-5)


def test_grids():
    """The spacings: endpoints, monotonicity, and logSNR uniformity in lambda up to index rounding."""
    s = schedules.linear(1000)
    tu = dpm_solver.dpm_solver_timesteps(s, 10, "time_uniform", final_step="none")
    np.testing.assert_array_equal(tu, [999, 899, 799, 699, 599, 500, 400, 300, 200, 100, 0])
    # 'denoise': uniform over the extended range [T-1, -1], the end point -1 (abar = 1) implicit.
    np.testing.assert_array_equal(dpm_solver.dpm_solver_timesteps(s, 10), np.arange(999, 0, -100))
    ls = dpm_solver.dpm_solver_timesteps(s, 7, "logSNR", final_step="none")
    acp = np.asarray(s.alphas_cumprod, np.float64)
    lam = 0.5 * np.log(acp / (1 - acp))
    assert ls[0] == 999 and ls[-1] == 0 and np.all(np.diff(ls) < 0)
    h = np.diff(lam[ls])
    assert np.all(np.abs(h - h.mean()) < 0.35 * h.mean()), h  # uniform up to one index of rounding
    np.testing.assert_array_equal(dpm_solver.dpm_solver_timesteps(s, 10, "leading"), np.arange(900, -1, -100))
    assert len(dpm_solver.dpm_solver_timesteps(s, 10, "leading", final_step="none")) == 11


def test_bad_options_raise():
    s = schedules.linear(1000)
    mix = oracles.seed_mixture_1d(s)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="spacing"):
        dpm_solver.dpm_solver_pp_2m(mix.eps, s, key, (2, 1), num_steps=5, spacing="karras")
    with pytest.raises(ValueError, match="final_step"):
        dpm_solver.dpm_solver_pp_2m(mix.eps, s, key, (2, 1), num_steps=5, final_step="clip")
    with pytest.raises(ValueError, match="order"):
        dpm_solver.dpm_solver_pp_2m(mix.eps, s, key, (2, 1), num_steps=5, order=3)
    with pytest.raises(ValueError, match="repeated"):
        dpm_solver.dpm_solver_pp_2m(mix.eps, s, key, (2, 1), num_steps=200, spacing="logSNR")
    with pytest.raises(ValueError, match="num_steps"):
        dpm_solver.dpm_solver_pp_2m(mix.eps, s, key, (2, 1), num_steps=0)
    with pytest.raises(ValueError, match="either"):
        dpm_solver.dpm_solver_pp_2m(mix.eps, s, key, (2, 1), num_steps=5, timesteps=[0, 10])
    with pytest.raises(ValueError, match="x_init"):
        dpm_solver.dpm_solver_pp_2m(mix.eps, s, key, (2, 1), num_steps=5, x_init=jnp.zeros((3, 1)))
