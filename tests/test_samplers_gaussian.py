"""Exact tests of the samplers on Gaussian data, where every step is an affine map plus noise.

For data x_0 ~ N(mu, diag(sd^2)) the exact denoiser is affine in x_t at each t (a_t = sqrt(abar_t),
b_t = sqrt(1 - abar_t), v_t = a_t^2 sd^2 + b_t^2, per dimension):

    E[x_0 | x_t] = (b_t^2 mu + a_t sd^2 x_t) / v_t,     eps(x_t, t) = b_t (x_t - a_t mu) / v_t,

so one step of DDPM, DDIM, the PC predictor or DPM-Solver++(2M) maps x to P x + Q + sigma z with
P, Q, sigma known in closed form. The references below are float64 NumPy re-implementations of
each paper's update (independent of diffax: tables from the betas, the Gaussian formulas above),
run on the same timesteps. All tests run in x64.

* Deterministic samplers (DDIM eta = 0, DPM-Solver++(2M)): a fixed set of x_T is pushed through the
  sampler and through the reference; the outputs agree to 1e-10 (measured <= 2e-13).
* Stochastic samplers (DDPM full / respaced, DDIM eta > 0, PC's predictor): the sampler's own
  noise is recovered from its trajectory, z_k = (x_{k+1} - P_k x_k - Q_k) / sigma_k. Exactness:
  running the SAME key with a second, different Gaussian (another P, Q) draws the same noise, so
  the recovered z must agree between the two runs to 1e-9 (any error in the deterministic part,
  e.g. the model called at the wrong index, makes them differ), and steps with sigma_k = 0 must
  have a zero residual. Scale: the recovered z must be N(0, 1): per step (B * D = 6144 values) the
  mean within 5.5 / sqrt(m) and the variance within 5.5 sqrt(2 / m) of 1, and pooled over all steps
  within 5 standard errors (an exact sampler fails with probability < 1e-5 over the whole file).
Negative controls in every test: the model called at t + 1 and at t - 1 instead of t, and a wrong
eta (DDIM), a wrong variance (DDPM: fixed_large for fixed_small) or the first-order update (DPM).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import dpm_solver, samplers, schedules
from _gaussian_models import exact_model, x0_np

T = 100
B, D = 2048, 3
MU_A, SD_A = np.array([1.5, -0.5, 0.3]), np.array([0.4, 1.0, 0.1])
MU_B, SD_B = np.array([-1.0, 2.0, 0.0]), np.array([0.8, 0.3, 1.5])


def _schedule(name: str):
    """T = 100 steps: linear with explicit (1000/T-scaled) betas, or cosine. Call under x64."""
    return schedules.linear(T, 1e-3, 0.2) if name == "linear" else schedules.cosine(T)


def _abar_np(s) -> np.ndarray:
    """alpha-bar_t = prod_{u <= t} (1 - beta_u), recomputed in float64 from the betas."""
    return np.cumprod(1.0 - np.asarray(s.betas, np.float64))


# --------------------------------------------------------------------------- the exact model


def _eps_np(x, abar, mu, sd):
    a, b = np.sqrt(abar), np.sqrt(1.0 - abar)
    return b * (x - a * mu) / (a**2 * sd**2 + b**2)


# --------------------------------------------------------------------------- NumPy references
# Each returns a list over steps (in sampling order) of step(x) -> (mean, sigma) with sigma a float.


def _ddpm_steps(abar, taus, mu, sd, var_type: str):
    """Ho et al. 2020, Algorithm 2 on the (respaced) chain of taus (ascending):
    beta_k = 1 - abar_k / abar_{k-1}; mean = coef1 x0_hat + coef2 x (eq. 7);
    sigma^2 = beta-tilde_k (fixed_small) or beta_k (fixed_large); no noise at the last step."""
    steps = []
    for k in range(len(taus) - 1, -1, -1):
        ab, ab_p = abar[taus[k]], (abar[taus[k - 1]] if k > 0 else 1.0)
        beta = 1.0 - ab / ab_p
        c1 = beta * np.sqrt(ab_p) / (1.0 - ab)
        c2 = (1.0 - ab_p) * np.sqrt(1.0 - beta) / (1.0 - ab)
        var = beta * (1.0 - ab_p) / (1.0 - ab) if var_type == "fixed_small" else beta
        sigma = 0.0 if k == 0 else float(np.sqrt(var))
        steps.append(lambda x, ab=ab, c1=c1, c2=c2, sigma=sigma: (c1 * x0_np(x, ab, mu, sd) + c2 * x, sigma))
    return steps


def _ddim_steps(abar, taus, mu, sd, eta: float):
    """Song et al. 2021, eq. 12 with sigma from eq. 16, on taus (ascending), abar_prev = 1 at the end:
    x' = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z."""
    steps = []
    for k in range(len(taus) - 1, -1, -1):
        ab, ab_p = abar[taus[k]], (abar[taus[k - 1]] if k > 0 else 1.0)
        sigma = eta * np.sqrt((1.0 - ab_p) / (1.0 - ab)) * np.sqrt(1.0 - ab / ab_p)
        c_dir = np.sqrt(1.0 - ab_p - sigma**2)
        steps.append(
            lambda x, ab=ab, ab_p=ab_p, c_dir=c_dir, sigma=float(sigma): (
                np.sqrt(ab_p) * x0_np(x, ab, mu, sd) + c_dir * _eps_np(x, ab, mu, sd),
                sigma,
            )
        )
    return steps


def _pc_predictor_steps(betas, abar, mu, sd):
    """Song et al. 2021b, eq. 47 (reverse diffusion predictor), every index t = T-1..0:
    x' = (x + beta_t score) / sqrt(1 - beta_t) + sqrt(beta_t) z, score = -eps / sqrt(1 - abar_t);
    no noise at t = 0."""
    steps = []
    for t in range(len(betas) - 1, -1, -1):
        beta, ab = betas[t], abar[t]
        sigma = 0.0 if t == 0 else float(np.sqrt(beta))
        steps.append(
            lambda x, beta=beta, ab=ab, sigma=sigma: (
                (x - beta * _eps_np(x, ab, mu, sd) / np.sqrt(1.0 - ab)) / np.sqrt(1.0 - beta),
                sigma,
            )
        )
    return steps


def _run_mean(steps, x):
    """Apply the steps' means only (the deterministic map; exact when every sigma is 0)."""
    for step in steps:
        x, _ = step(x)
    return x


def _dpm_solver_pp_2m_np(abar, ts, final_step: str, x, mu, sd, order: int = 2):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on descending indices ts, in float64:
    lambda = log(alpha / sigma); h_i = lambda_i - lambda_{i-1}; r_i = h_{i-1} / h_i;
    D_i = (1 + 1/(2 r_i)) x0(x_{i-1}) - 1/(2 r_i) x0(x_{i-2}) (D_1 = x0); x_i = (sigma_i / sigma_{i-1}) x_{i-1}
    - alpha_i (e^{-h_i} - 1) D_i. final_step='denoise' appends abar = 1 (sigma = 0), reached at first
    order: x = x0(x_{M-1})."""
    grid = [abar[t] for t in ts] + ([1.0] if final_step == "denoise" else [])
    model_ts = ts if final_step == "denoise" else ts[:-1]
    x0_prev, h_prev = None, None
    for i, t in enumerate(model_ts):
        ab, ab_n = grid[i], grid[i + 1]
        x0 = x0_np(x, abar[t], mu, sd)
        if ab_n == 1.0:  # the end point: sigma = 0, lambda = inf
            x, x0_prev = x0, x0
            continue
        lam, lam_n = 0.5 * np.log(ab / (1 - ab)), 0.5 * np.log(ab_n / (1 - ab_n))
        h = lam_n - lam
        if i == 0 or order == 1:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x = np.sqrt((1 - ab_n) / (1 - ab)) * x - np.sqrt(ab_n) * np.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


# --------------------------------------------------------------------------- checks


def _check_stochastic(traj_a, traj_b, steps_a, steps_b) -> tuple[bool, str]:
    """(ok, description): the trajectories (K+1, B, D) follow the reference steps exactly with
    N(0, 1) noise shared by the two runs (see the module docstring for the bounds)."""
    traj_a, traj_b = np.asarray(traj_a, np.float64), np.asarray(traj_b, np.float64)
    if len(steps_a) != traj_a.shape[0] - 1:
        return False, f"{traj_a.shape[0] - 1} steps taken, {len(steps_a)} expected"
    zs, worst_exact, worst_zero = [], 0.0, 0.0
    for k, (sa, sb) in enumerate(zip(steps_a, steps_b)):
        (ma, sig), (mb, _) = sa(traj_a[k]), sb(traj_b[k])
        ra, rb = traj_a[k + 1] - ma, traj_b[k + 1] - mb
        if sig == 0.0:
            worst_zero = max(worst_zero, float(np.max(np.abs(ra))), float(np.max(np.abs(rb))))
            continue
        za, zb = ra / sig, rb / sig
        worst_exact = max(worst_exact, float(np.max(np.abs(za - zb))))
        zs.append(za.reshape(-1))
    z = np.stack(zs)  # (steps with noise, B * D)
    m = z.shape[1]
    step_mean = np.max(np.abs(z.mean(1))) * np.sqrt(m)
    step_var = np.max(np.abs(z.var(1) - 1.0)) / np.sqrt(2.0 / m)
    pooled_mean = abs(z.mean()) * np.sqrt(z.size)
    pooled_var = abs(z.var() - 1.0) / np.sqrt(2.0 / z.size)
    ok = (
        worst_exact <= 1e-9
        and worst_zero <= 1e-10
        and step_mean <= 5.5
        and step_var <= 5.5
        and pooled_mean <= 5.0
        and pooled_var <= 5.0
    )
    return ok, (
        f"max |z_A - z_B| = {worst_exact:.2e} (<= 1e-9), noiseless residual {worst_zero:.2e} (<= 1e-10), "
        f"max per-step |mean| / se = {step_mean:.2f} and |var - 1| / se = {step_var:.2f} (<= 5.5), "
        f"pooled {pooled_mean:.2f} / {pooled_var:.2f} (<= 5)"
    )


@functools.lru_cache(maxsize=None)
def _x_init() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((B, D))


def _stochastic_case(run, positives, wrong) -> None:
    """One compiled sampler `run(key, x_init, mu, sd, offset, *args) -> (x, trajectory)`, checked:

    positives: [(args, steps_for)], each must pass (steps_for(mu, sd) -> the reference steps);
    controls, each must fail: every positive with the model at offset +1 and -1, and every
      (args, steps_for) in `wrong` (a wrong eta in the sampler, or a wrong variance in the reference).
    """
    run = jax.jit(run)
    key, x_init = jax.random.PRNGKey(0), jnp.asarray(_x_init())

    def check(args, steps_for, offset):
        _, ta = run(key, x_init, jnp.asarray(MU_A), jnp.asarray(SD_A), offset, *args)
        _, tb = run(key, x_init, jnp.asarray(MU_B), jnp.asarray(SD_B), offset, *args)
        np.testing.assert_array_equal(np.asarray(ta[0]), _x_init())
        return _check_stochastic(ta, tb, steps_for(MU_A, SD_A), steps_for(MU_B, SD_B))

    for args, steps_for in positives:
        ok, msg = check(args, steps_for, 0)
        assert ok, msg
        for offset in (1, -1):
            ok, msg = check(args, steps_for, offset)
            assert not ok, f"the model called at t{offset:+d} passed: {msg}"
    for args, steps_for in wrong:
        ok, msg = check(args, steps_for, 0)
        assert not ok, f"a wrong eta / variance passed: {msg}"


# --------------------------------------------------------------------------- deterministic samplers


def _deterministic_errors(run, reference):
    """max |sampler - reference| for offsets 0, +1, -1 (the last two are the controls)."""
    run = jax.jit(run)
    x_init = _x_init()
    want = reference(x_init)
    return [float(np.max(np.abs(np.asarray(run(jnp.asarray(x_init), off)) - want))) for off in (0, 1, -1)]


@pytest.mark.parametrize("spacing,num_steps,mean_type", [("leading", 20, "eps"), ("linspace", 20, "x0"),
                                                         ("trailing", 13, "v")])
def test_ddim_eta0_equals_affine_recursion(x64, spacing, num_steps, mean_type):
    s = _schedule("linear")
    abar = _abar_np(s)
    taus = schedules.space_timesteps(T, num_steps, spacing)
    key = jax.random.PRNGKey(0)

    def run(x_init, off):
        model = exact_model(s, mean_type, jnp.asarray(MU_A), jnp.asarray(SD_A), off)
        return samplers.ddim(model, s, key, (B, D), num_steps=num_steps, spacing=spacing, eta=0.0,
                             x_init=x_init, mean_type=mean_type)

    ref = lambda x: _run_mean(_ddim_steps(abar, taus, MU_A, SD_A, 0.0), x)  # noqa: E731
    exact, plus, minus = _deterministic_errors(run, ref)
    # float64: ~20 affine steps of O(1) coefficients, measured <= 1e-14; the bound 1e-10 still
    # lies far below the controls' errors.
    assert exact <= 1e-10, exact
    assert plus > 1e-4 and minus > 1e-4, (plus, minus)
    # Control: the direction coefficient sqrt(1 - abar_prev - sigma^2) of eta = 0.3 (noise left out).
    wrong_eta = _run_mean(_ddim_steps(abar, taus, MU_A, SD_A, 0.3), _x_init())
    assert float(np.max(np.abs(wrong_eta - ref(_x_init())))) > 1e-4


@pytest.mark.parametrize(
    "schedule,spacing,final_step,num_steps,mean_type",
    [
        ("cosine", "time_uniform", "denoise", 10, "eps"),
        ("linear", "logSNR", "none", 12, "x0"),
        ("cosine", "trailing", "denoise", 10, "v"),
    ],
)
def test_dpm_solver_pp_2m_equals_affine_recursion(x64, schedule, spacing, final_step, num_steps, mean_type):
    s = _schedule(schedule)
    abar = _abar_np(s)
    ts = dpm_solver.dpm_solver_timesteps(s, num_steps, spacing, final_step)
    key = jax.random.PRNGKey(0)

    def run(x_init, off):
        model = exact_model(s, mean_type, jnp.asarray(MU_A), jnp.asarray(SD_A), off)
        return dpm_solver.dpm_solver_pp_2m(model, s, key, (B, D), num_steps=num_steps, spacing=spacing,
                                           final_step=final_step, x_init=x_init, mean_type=mean_type)

    ref = lambda x, order=2: _dpm_solver_pp_2m_np(abar, list(ts), final_step, x, MU_A, SD_A, order)  # noqa: E731
    exact, plus, minus = _deterministic_errors(run, ref)
    assert exact <= 1e-10, exact  # measured <= 2e-13 (the last steps divide by small b_t)
    assert plus > 1e-4 and minus > 1e-4, (plus, minus)
    # Control: the first-order (DDIM) update on the same grid is a different map.
    assert float(np.max(np.abs(ref(_x_init(), order=1) - ref(_x_init())))) > 1e-4


# --------------------------------------------------------------------------- stochastic samplers


def _ddpm_run(s, mean_type, var_type, timesteps=None):
    def run(key, x_init, mu, sd, off):
        return samplers.ddpm(exact_model(s, mean_type, mu, sd, off), s, key, (B, D), x_init=x_init, timesteps=timesteps,
                             mean_type=mean_type, var_type=var_type, return_trajectory=True)
    return run


@pytest.mark.parametrize(
    "schedule,mean_type,var_type",
    [("linear", "eps", "fixed_small"), ("linear", "x0", "fixed_large"), ("cosine", "v", "fixed_small")],
)
def test_ddpm_all_steps_is_the_exact_gaussian_chain(x64, schedule, mean_type, var_type):
    s = _schedule(schedule)
    abar, taus = _abar_np(s), np.arange(T)
    other = {"fixed_small": "fixed_large", "fixed_large": "fixed_small"}[var_type]
    _stochastic_case(
        _ddpm_run(s, mean_type, var_type),
        positives=[((), lambda mu, sd: _ddpm_steps(abar, taus, mu, sd, var_type))],
        wrong=[((), lambda mu, sd: _ddpm_steps(abar, taus, mu, sd, other))],  # the other variance
    )


@pytest.mark.parametrize("spacing,mean_type", [("leading", "eps"), ("linspace", "x0"), ("trailing", "v")])
def test_respaced_ddpm_is_the_exact_gaussian_chain(x64, spacing, mean_type):
    # 25 of 100 steps; the model is called with the ORIGINAL index tau_k.
    s = _schedule("linear")
    abar = _abar_np(s)
    taus = schedules.space_timesteps(T, 25, spacing)
    _stochastic_case(
        _ddpm_run(s, mean_type, "fixed_small", timesteps=taus),
        positives=[((), lambda mu, sd: _ddpm_steps(abar, taus, mu, sd, "fixed_small"))],
        wrong=[((), lambda mu, sd: _ddpm_steps(abar, taus, mu, sd, "fixed_large"))],
    )


@pytest.mark.parametrize("spacing,mean_type", [("leading", "eps"), ("linspace", "v"), ("trailing", "x0")])
def test_stochastic_ddim_is_the_exact_gaussian_chain(x64, spacing, mean_type):
    # eta = 0.5 and 1 (a traced eta: one compile), 20 of 100 steps; control: the sampler run at
    # eta - 0.2 against the eta reference.
    s = _schedule("linear")
    abar = _abar_np(s)
    taus = schedules.space_timesteps(T, 20, spacing)

    def run(key, x_init, mu, sd, off, eta):
        return samplers.ddim(exact_model(s, mean_type, mu, sd, off), s, key, (B, D), num_steps=20, spacing=spacing,
                             eta=eta, x_init=x_init, mean_type=mean_type, return_trajectory=True)

    def ref(eta):
        return lambda mu, sd: _ddim_steps(abar, taus, mu, sd, eta)

    _stochastic_case(
        run,
        positives=[((0.5,), ref(0.5)), ((1.0,), ref(1.0))],
        wrong=[((0.3,), ref(0.5)), ((0.8,), ref(1.0))],
    )


def test_pc_predictor_without_corrector_is_the_exact_gaussian_chain(x64):
    s = _schedule("linear")
    betas, abar = np.asarray(s.betas, np.float64), _abar_np(s)

    def run(key, x_init, mu, sd, off):
        return samplers.pc(exact_model(s, "eps", mu, sd, off), s, key, (B, D), n_corrector=0, x_init=x_init,
                           return_trajectory=True)

    _stochastic_case(
        run,
        positives=[((), lambda mu, sd: _pc_predictor_steps(betas, abar, mu, sd))],
        # Control: DDPM's beta-tilde chain (same mean, sigma^2 = beta-tilde instead of beta).
        wrong=[((), lambda mu, sd: _ddpm_steps(abar, np.arange(T), mu, sd, "fixed_small"))],
    )
