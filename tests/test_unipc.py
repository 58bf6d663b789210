"""Tests for diffax.unipc (UniPC, Zhao et al. 2023, data prediction), all in x64.

* Gaussian data N(mu, diag sd^2): the exact x0-model is affine in x_t, so UniPC is an exactly computable
  affine recursion of x_T. `_unipc_np` re-derives it in float64 NumPy from the paper (sequential predictor /
  corrector, phi-functions by their recursion, R rho = b solved per step; diffusers' step-order rules), and
  diffax must equal it to 1e-10 for orders 1, 2, 3 and B(h) = bh1 / bh2. Controls (each must differ by > 1e-4):
  the model called at t + 1 / t - 1 (timesteps off by one), the reference without the corrector, the
  reference at another order.
* NFE: model calls counted by an io_callback equal num_steps.
* Convergence order on an exact 2-D mixture (reference: the adaptive diffrax solve at 1e-10, as
  tests/test_dpm_solver.py): UniPC-p is of order p + 1 (Theorem 3.3) when every step runs at order p
  (lower_order_final=False); with diffusers' lower_order_final=True the final step is a first-order
  predictor with no corrector, so the global order is 2 for every p.
* diffusers: tests/fixtures/unipc_diffusers.npz (experiments/compare_diffusers_unipc.py, diffusers 0.42.1)
  holds UniPCMultistepScheduler trajectories on an analytic Gaussian eps; diffax equals them to 5e-6 relative
  (measured <= 5.5e-7: diffusers keeps its sigmas in float32).
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import dpm_solver, ode, oracles, processes, schedules, unipc
from _gaussian_models import exact_model, x0_np

T = 100
B, D = 512, 3
MU_A, SD_A = np.array([1.5, -0.5, 0.3]), np.array([0.4, 1.0, 0.1])
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "unipc_diffusers.npz")


def _schedule(name: str):
    return schedules.linear(T, 1e-3, 0.2) if name == "linear" else schedules.cosine(T)


def _abar_np(s) -> np.ndarray:
    return np.cumprod(1.0 - np.asarray(s.betas, np.float64))


# --------------------------------------------------------------------------- the NumPy reference


def _phi(k: int, z: float) -> float:
    """phi_1(z) = (e^z - 1)/z, phi_{k+1}(z) = (phi_k(z) - 1/k!)/z."""
    v = np.expm1(z) / z
    for j in range(1, k):
        v = (v - 1.0 / math.factorial(j)) / z
    return v


def _unip_unic(x, lam, alpha, sigma, ms, j, p, variant, m_new=None):
    """One step from grid point j to j + 1 (UniP-p; UniC-p when m_new, the model at the predicted x_{j+1},
    is given). ms[-1] = m_j, ms[-1-k] = m_{j-k}. x_{j+1} = sigma_{j+1}/sigma_j x + alpha_{j+1} (1 - e^{-h}) m_j
    - alpha_{j+1} B(h) sum_k rho_k D_k with D_k = (m_{j-k} - m_j) / r_k (and D_p = m_new - m_j, r_p = 1)."""
    a_t, s_t = alpha[j + 1], sigma[j + 1]
    if s_t == 0.0:  # the end point abar = 1: only the first-order predictor is defined, x = m_j
        assert p == 1 and m_new is None
        return ms[-1]
    h = lam[j + 1] - lam[j]
    hh = -h
    b_h = hh if variant == "bh1" else np.expm1(hh)
    base = s_t / sigma[j] * x - a_t * np.expm1(-h) * ms[-1]
    r = [(lam[j - k] - lam[j]) / h for k in range(1, p)]
    d = [(ms[-1 - k] - ms[-1]) / r[k - 1] for k in range(1, p)]
    b = np.array([math.factorial(i) * hh * _phi(i + 1, hh) / b_h for i in range(1, p + 1)])
    if m_new is None:  # UniP-p: p - 1 previous points; p = 2 uses rho = 1/2 (the paper's / diffusers' choice)
        if p == 1:
            return base
        rho = np.array([0.5]) if p == 2 else np.linalg.solve(np.vander(r, p - 1, increasing=True).T, b[:-1])
    else:
        r, d = r + [1.0], d + [m_new - ms[-1]]
        rho = np.array([0.5]) if p == 1 else np.linalg.solve(np.vander(r, p, increasing=True).T, b)
    return base - a_t * b_h * sum(rk * dk for rk, dk in zip(rho, d))


def _unipc_np(abar, ts, final_step, x, mu, sd, order, variant, corrector=True, lower_order_final=True):
    """UniPC on descending indices ts in float64; diffusers' rules: p_i = min(order, i + 1, M - i), the
    corrector of step i - 1 (order p_{i-1}) at the start of step i >= 1, none after the last step."""
    grid = np.array([abar[t] for t in ts] + ([1.0] if final_step == "denoise" else []))
    model_ts = ts if final_step == "denoise" else ts[:-1]
    M = len(model_ts)
    alpha, sigma = np.sqrt(grid), np.sqrt(1.0 - grid)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    ms, x_prev, p_prev = [], None, None
    for i, t in enumerate(model_ts):
        m = x0_np(x, abar[t], mu, sd)
        if i > 0 and corrector:
            x = _unip_unic(x_prev, lam, alpha, sigma, ms, i - 1, p_prev, variant, m_new=m)
        ms.append(m)
        p = min(order, i + 1, M - i) if lower_order_final else min(order, i + 1)
        x_prev, p_prev = x, p
        x = _unip_unic(x, lam, alpha, sigma, ms, i, p, variant)
    return x


@functools.lru_cache(maxsize=None)
def _x_init() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((B, D))


# --------------------------------------------------------------------------- exactness on Gaussian data


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize(
    "schedule,spacing,final_step,num_steps,mean_type",
    [("cosine", "time_uniform", "denoise", 10, "eps"), ("linear", "logSNR", "none", 12, "x0"),
     ("cosine", "trailing", "denoise", 7, "v")],
)  # fmt: skip
def test_unipc_equals_affine_recursion(x64, order, variant, schedule, spacing, final_step, num_steps, mean_type):
    s = _schedule(schedule)
    abar = _abar_np(s)
    ts = list(dpm_solver.dpm_solver_timesteps(s, num_steps, spacing, final_step))

    @jax.jit
    def run(x_init, off):
        model = exact_model(s, mean_type, jnp.asarray(MU_A), jnp.asarray(SD_A), off)
        return unipc.unipc(model, s, jax.random.PRNGKey(0), (B, D), order=order, variant=variant,
                           num_steps=num_steps, spacing=spacing, final_step=final_step, x_init=x_init,
                           mean_type=mean_type)  # fmt: skip

    def ref(**kw):
        kw = dict(dict(order=order, variant=variant), **kw)
        return _unipc_np(abar, ts, final_step, _x_init(), MU_A, SD_A, **kw)

    want = ref()
    err = lambda a: float(np.max(np.abs(np.asarray(a) - want)))  # noqa: E731
    x0 = jnp.asarray(_x_init())
    exact = err(run(x0, 0))
    print(f"max |diffax - reference| = {exact:.1e}")
    assert exact <= 1e-10, exact  # float64: measured <= 1e-13 (the largest coefficients are O(10))
    # Controls: timesteps off by one (the model at t +- 1), no corrector, another order.
    assert err(run(x0, 1)) > 1e-4 and err(run(x0, -1)) > 1e-4
    assert err(ref(corrector=False)) > 1e-4
    for other in sorted({1, 2, 3} - {order}):
        assert err(ref(order=other)) > 1e-4, other


def test_orders_and_variants_differ_and_lower_order_final(x64):
    """unipc_orders follows diffusers' rule; lower_order_final=False changes the result (x64 reference too)."""
    np.testing.assert_array_equal(unipc.unipc_orders(6, 3), [1, 2, 3, 3, 2, 1])
    np.testing.assert_array_equal(unipc.unipc_orders(6, 3, lower_order_final=False), [1, 2, 3, 3, 3, 3])
    s = _schedule("cosine")
    abar = _abar_np(s)
    ts = list(dpm_solver.dpm_solver_timesteps(s, 8, "time_uniform", "none"))
    model = exact_model(s, "eps", jnp.asarray(MU_A), jnp.asarray(SD_A), 0)
    got = unipc.unipc(model, s, None, (B, D), order=3, timesteps=ts, final_step="none", lower_order_final=False,
                      x_init=jnp.asarray(_x_init()))  # fmt: skip
    want = _unipc_np(abar, ts, "none", _x_init(), MU_A, SD_A, 3, "bh2", lower_order_final=False)
    assert float(np.max(np.abs(np.asarray(got) - want))) <= 1e-10
    other = _unipc_np(abar, ts, "none", _x_init(), MU_A, SD_A, 3, "bh2", lower_order_final=True)
    assert float(np.max(np.abs(other - want))) > 1e-4


# --------------------------------------------------------------------------- NFE


@pytest.mark.parametrize("final_step", ["denoise", "none"])
def test_nfe_equals_num_steps(x64, final_step):
    """One model call per step (the corrector reuses the next step's call), counted by an io_callback."""
    s = _schedule("cosine")
    calls = []
    model = exact_model(s, "eps", jnp.asarray(MU_A), jnp.asarray(SD_A), 0)

    def counted(x, t):
        jax.experimental.io_callback(lambda t: calls.append(int(t[0])), None, t, ordered=True)
        return model(x, t)

    ts = dpm_solver.dpm_solver_timesteps(s, 9, "time_uniform", final_step)
    x = unipc.unipc(counted, s, jax.random.PRNGKey(0), (4, D), order=3, num_steps=9, final_step=final_step)
    jax.block_until_ready(x)
    model_ts = ts if final_step == "denoise" else ts[:-1]
    assert calls == [int(t) for t in model_ts], calls  # 9 calls, at the grid's model indices, in order


def test_bad_order_and_variant_are_clear_errors():
    s = _schedule("cosine")
    with pytest.raises(ValueError, match="order"):
        unipc.unipc(lambda x, t: x, s, jax.random.PRNGKey(0), (2, D), order=4, num_steps=5)
    with pytest.raises(ValueError, match="variant"):
        unipc.unipc(lambda x, t: x, s, jax.random.PRNGKey(0), (2, D), variant="bh3", num_steps=5)


# --------------------------------------------------------------------------- convergence order


STEPS = (20, 40, 80, 160)


@functools.lru_cache(maxsize=None)
def _ode_reference(k_end: int):
    """(x_T, x at index k_end of the exact probability-flow ODE) for the anisotropic 2-D mixture on linear
    T = 1000, 256 points (diffrax at rtol = atol = 1e-10; call under x64)."""
    s = schedules.linear(1000)
    mix = oracles.anisotropic_mixture_2d(s)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (256, mix.dim))
    sde = processes.VP.from_schedule(s)
    ref, _ = ode.ode_solve(ode.oracle_score_fn(mix, sde), sde, x_T, t0=1.0, t1=(k_end + 1) / 1000,
                           rtol=1e-10, atol=1e-10)  # fmt: skip
    return x_T, ref


def _measured_order(order: int, lower_order_final: bool, k_end: int = 300) -> tuple[float, list[float]]:
    """Least-squares slope of -log(RMS error) vs log M over M in STEPS, on the time-uniform indices
    round(linspace(T-1, k_end, M+1)) with final_step='none'; the errors."""
    s = schedules.linear(1000)
    mix = oracles.anisotropic_mixture_2d(s)
    x_T, ref = _ode_reference(k_end)
    errs = []
    for M in STEPS:
        ts = np.round(np.linspace(999, k_end, M + 1)).astype(np.int64)
        x = unipc.unipc(mix.eps, s, None, x_T.shape, order=order, timesteps=ts, final_step="none", x_init=x_T,
                        lower_order_final=lower_order_final)  # fmt: skip
        errs.append(float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, axis=-1)))))
    return float(-np.polyfit(np.log(STEPS), np.log(errs), 1)[0]), errs


@pytest.mark.slow
def test_convergence_order_is_p_plus_one(x64):
    """UniPC-p converges at order p + 1 (Zhao et al. 2023, Theorem 3.3) when every step runs at order p.

    Exact 2-D mixture, M = 20..160 time-uniform steps from index 999 to k_end = 300 (final_step='none',
    lower_order_final=False, bh2). Measured slopes 1.99 / 2.93 / 3.74 for p = 1 / 2 / 3 (theory 2 / 3 / 4; the
    p = 3 slope of the last two M is 4.0). k_end = 300, not 100 as tests/test_dpm_solver.py uses: near index
    100 the linear schedule's lambda is so curved that order 4 is not yet asymptotic at M = 160 (slope 3.3).
    Controls: with diffusers' lower_order_final=True the final step is a first-order predictor without
    corrector, so p = 3 is only second order (measured 2.03; must lie within 0.4 of 2 and outside the order-4
    band); p = 1 must fail the order-4 band. Runs in ~15 s.
    """
    slopes = {p: _measured_order(p, lower_order_final=False) for p in (1, 2, 3)}
    for p, (slope, errs) in slopes.items():
        assert abs(slope - (p + 1)) <= 0.4, (p, slope, errs)
    assert slopes[3][1][-1] < slopes[2][1][-1] / 5, slopes  # order 4 far more accurate at 160 NFE
    lof_slope, lof_errs = _measured_order(3, lower_order_final=True)
    assert abs(lof_slope - 2.0) <= 0.4 and not abs(lof_slope - 4.0) <= 0.4, (lof_slope, lof_errs)
    assert not abs(slopes[1][0] - 4.0) <= 0.4, slopes


# --------------------------------------------------------------------------- diffusers


def _fixture_model(f):
    """The analytic Gaussian eps the fixture was made with: experiments/compare_diffusers_unipc.py's (the script
    that wrote the fixture)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                        "compare_diffusers_unipc.py")  # fmt: skip
    spec = importlib.util.spec_from_file_location("compare_diffusers_unipc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fixture_model(f)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("num_steps", [10, 20])
def test_equals_diffusers_unipc(x64, order, variant, num_steps):
    """diffax's trajectory equals diffusers' UniPCMultistepScheduler(solver_order=order, solver_type=variant,
    predict_x0=True, lower_order_final=True, final_sigmas_type='zero', timestep_spacing='linspace') on its grid
    from the same x_T to 5e-6 relative (max |diff| / max |diffusers|; measured <= 5.5e-7, the float32 of
    diffusers' sigmas). bh1's last diffusers step is NaN (B(h) = -inf times 0), so there only the first
    M - 1 steps are compared, and diffax's last step must be finite. Controls: another order, another
    variant (order >= 2 and the grid's B(h)-dependent steps), and the grid shifted by one index must differ
    by > 1e-4 relative."""
    f = np.load(FIXTURE)
    s = schedules.from_betas(np.asarray(f["betas"], np.float64))
    key = f"o{order}_{variant}_{num_steps}"
    ref, ts = f[key], f[key + "_ts"]
    eps_fn = _fixture_model(f)
    n = num_steps if variant == "bh2" else num_steps - 1
    assert variant == "bh2" or not np.all(np.isfinite(ref[-1]))  # the diffusers NaN stated above

    def traj(o=order, v=variant, grid=ts):
        _, tr = unipc.unipc(eps_fn, s, None, f["x_T"].shape, order=o, variant=v, timesteps=grid,
                            final_step="denoise", x_init=jnp.asarray(f["x_T"]), return_trajectory=True)  # fmt: skip
        return np.asarray(tr[1:])

    def rel(ours):
        return float(np.max(np.abs(ours[:n] - ref[:n])) / np.max(np.abs(ref[:n])))

    ours = traj()
    assert np.all(np.isfinite(ours))
    assert rel(ours) <= 5e-6, rel(ours)
    assert rel(traj(grid=ts - 1)) > 1e-4
    assert rel(traj(o=1 if order > 1 else 2)) > 1e-4
    assert rel(traj(v="bh1" if variant == "bh2" else "bh2")) > 1e-4
