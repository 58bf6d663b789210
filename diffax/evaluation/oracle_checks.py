"""Measurements on analytic models, shared by the tests that assert them and the experiments that
report them (so a README number and its test come from one procedure).

  discretized_gaussian_vlb     E[VLB] of 8-bit-quantised N(mu, sd^2) data under its exact eps model, and
                               the data's entropy: the bound's gap to the best possible code length
  sampler_convergence_orders   empirical order of DPM-Solver++(2M) and DDIM (eta = 0) against the exact
                               probability-flow ODE solution, on a Gaussian-mixture oracle

Both want float64 (``jax.enable_x64(True)``).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffax import dpm_solver, likelihood, ode, oracles, processes, samplers, schedules
from diffax.schedules import Schedule

__all__ = ["GRID_8BIT", "discretized_gaussian_vlb", "sampler_convergence_orders", "dpm_solver_pp_orders"]

GRID_8BIT = np.linspace(-1.0, 1.0, 256)  # the 8-bit grid in [-1, 1]
_EDGES = np.concatenate([[-np.inf], 0.5 * (GRID_8BIT[:-1] + GRID_8BIT[1:]), [np.inf]])


def _normal_cdf(x: np.ndarray, mu: float, sd: float) -> np.ndarray:
    return np.array([0.5 * (1.0 + math.erf((v - mu) / (sd * math.sqrt(2.0)))) for v in x])


def discretized_gaussian_vlb(num_steps: int, var_type: str, reps: int, *, mu: float = 0.1,
                             sd: float = 0.1) -> tuple[float, float, float]:  # fmt: skip
    """(E_x0[VLB], its standard error, H(data)) in bits for 1-D data N(mu, sd^2) quantised to the 8-bit grid.

    The expectation over x0 is an exact sum over the grid (bins with mass < 1e-9 are dropped and the
    distribution renormalised, so it is exactly the distribution evaluated); the expectation over the
    forward noise is Monte Carlo with `reps` draws per grid point (key PRNGKey(num_steps)). The model
    is the exact eps of the continuous N(mu, sd^2) (a one-component `oracles.GaussianMixture`). The
    schedule is linear T = 1000 respaced to `num_steps` leading steps: one forward process, ever finer
    time grids. VLB >= -log p(x0) >= H in expectation (Ho et al. 2020, eq. 5, and Gibbs' inequality).
    """
    p = np.diff(_normal_cdf(_EDGES, mu, sd))
    keep = p > 1e-9
    p = p[keep] / p[keep].sum()
    entropy = float(-np.sum(p * np.log2(p)))
    s = schedules.respace(schedules.linear(1000), schedules.space_timesteps(1000, num_steps))
    gm = oracles.GaussianMixture(jnp.ones(1), jnp.array([[mu]]), jnp.array([sd]), schedule=s)
    x0 = jnp.repeat(jnp.asarray(GRID_8BIT[keep])[:, None], reps, axis=0)
    out = jax.jit(lambda k: likelihood.vlb_bpd(gm.eps, s, k, x0, var_type=var_type))(jax.random.PRNGKey(num_steps))
    tot = np.asarray(out["total"]).reshape(-1, reps)
    vlb = float(np.sum(p * tot.mean(1)))
    se = float(np.sqrt(np.sum(p**2 * tot.var(1, ddof=1) / reps)))
    return vlb, se, entropy


def _rms(a, b) -> float:
    return float(jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, axis=-1))))


def sampler_convergence_orders(mix: oracles.GaussianMixture, s: Schedule, *, steps: Sequence[int] = (10, 20, 40, 80),
                               k_end: int = 100, n: int = 256) -> dict:  # fmt: skip
    """{"dpm_2m": order, "ddim": order, "errors": {...}, "steps": [...]}: each order the least-squares slope
    of -log(RMS error) against log M.

    n points x_T ~ N(0, I) (PRNGKey(0)) are integrated over the time-uniform indices
    round(linspace(T-1, k_end, M+1)): DPM-Solver++(2M) with final_step='none' (ends at index k_end), DDIM
    (eta = 0) read off its trajectory after M steps (same index; its last step, to abar = 1, is not part of
    the ODE). The reference is the adaptive diffrax solve of the same probability-flow ODE (`ode.ode_solve`,
    rtol = atol = 1e-10) from tau = 1 to tau = (k_end + 1) / T: with the exact score the ODE's field depends
    on time only through abar, and abar(tau_k) = alphas_cumprod[k] exactly.
    """
    T = s.num_timesteps
    shape, x_T, ref = _ode_reference(mix, s, k_end, n)
    steps = np.asarray(steps)
    errs: dict[str, list[float]] = {"dpm_2m": [], "ddim": []}
    for M in steps:
        ts = np.round(np.linspace(T - 1, k_end, M + 1)).astype(np.int64)
        x = dpm_solver.dpm_solver_pp_2m(mix.eps, s, None, shape, timesteps=ts, final_step="none", x_init=x_T)
        errs["dpm_2m"].append(_rms(x, ref))
        _, traj = samplers.ddim(mix.eps, s, jax.random.PRNGKey(1), shape, timesteps=ts, eta=0.0, x_init=x_T,
                                return_trajectory=True)  # fmt: skip
        errs["ddim"].append(_rms(traj[M], ref))
    orders = {k: float(-np.polyfit(np.log(steps), np.log(v), 1)[0]) for k, v in errs.items()}
    return dict(orders, errors=errs, steps=steps.tolist())


def _ode_reference(mix: oracles.GaussianMixture, s: Schedule, k_end: int, n: int) -> tuple[tuple, jax.Array, jax.Array]:
    """(shape, x_T, reference): n latents x_T ~ PRNGKey(0) and the adaptive diffrax solve of the exact
    probability-flow ODE (rtol = atol = 1e-10) from tau = 1 to tau = (k_end + 1) / T, the solvers' target."""
    shape = (n, mix.dim)
    x_T = jax.random.normal(jax.random.PRNGKey(0), shape)
    sde = processes.VP.from_schedule(s)
    ref, _ = ode.ode_solve(ode.oracle_score_fn(mix, sde), sde, x_T, t0=1.0, t1=(k_end + 1) / s.num_timesteps,
                           rtol=1e-10, atol=1e-10)  # fmt: skip
    return shape, x_T, ref


def dpm_solver_pp_orders(mix: oracles.GaussianMixture, s: Schedule, *, orders: Sequence[int] = (1, 2, 3),
                         steps: Sequence[int] = (10, 20, 40, 80), k_end: int = 100, n: int = 256) -> dict:  # fmt: skip
    """{"dpm_1": slope, "dpm_2": ..., "dpm_3": ..., "ddim": ..., "errors": {...}, "steps": [...]}: the
    empirical order (least-squares slope of -log RMS error against log M) of `dpm_solver.dpm_solver_pp` at
    each order and of DDIM (eta = 0), by the procedure of `sampler_convergence_orders`: the same x_T
    (PRNGKey(0)), time-uniform indices round(linspace(T-1, k_end, M+1)), final_step='none' (full order to
    the end; the first steps run at lower order while the history is short), the adaptive diffrax
    reference at rtol = atol = 1e-10.
    """
    T = s.num_timesteps
    shape, x_T, ref = _ode_reference(mix, s, k_end, n)
    steps = np.asarray(steps)
    errs: dict[str, list[float]] = {f"dpm_{k}": [] for k in orders}
    errs["ddim"] = []
    for M in steps:
        ts = np.round(np.linspace(T - 1, k_end, M + 1)).astype(np.int64)
        for k in orders:
            x = dpm_solver.dpm_solver_pp(mix.eps, s, None, shape, order=k, timesteps=ts, final_step="none", x_init=x_T)
            errs[f"dpm_{k}"].append(_rms(x, ref))
        _, traj = samplers.ddim(mix.eps, s, jax.random.PRNGKey(1), shape, timesteps=ts, eta=0.0, x_init=x_T,
                                return_trajectory=True)  # fmt: skip
        errs["ddim"].append(_rms(traj[M], ref))
    slopes = {k: float(-np.polyfit(np.log(steps), np.log(v), 1)[0]) for k, v in errs.items()}
    return dict(slopes, errors=errs, steps=steps.tolist())
