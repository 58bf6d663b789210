"""diffax's multistep DPM-Solver++ against diffusers' DPMSolverMultistepScheduler, same grid, same x_T.

Two steps, two environments (diffusers and torch are not dependencies of diffax):

  /tmp/torchenv/bin/python experiments/compare_diffusers_solvers.py dump OUT.npz
      runs diffusers' DPMSolverMultistepScheduler (algorithm_type='dpmsolver++', solver_type='midpoint',
      lower_order_final=True, final_sigmas_type='zero', prediction_type='epsilon', linear betas 1e-4..0.02,
      T = 1000, timestep_spacing='linspace') at solver_order 1, 2, 3 and 10, 20 steps on a fixed analytic
      model -- the exact eps of a 2-D Gaussian mixture, computed here in NumPy float64 -- from fixed x_T
      (NumPy seed 0, 64 points), and saves the grids, x_T, the outputs and diffusers' betas.
  python experiments/compare_diffusers_solvers.py compare OUT.npz
      runs `diffax.dpm_solver.dpm_solver_pp` (x64) on the same betas, timesteps (``timesteps=``,
      final_step='denoise') and x_T with the same model, and prints max |diffax - diffusers| / max |diffusers|
      per (order, steps); also the same ratio for a float64 NumPy re-implementation of the update with the
      third-order term at diffusers' weight (D2 = h^2 b2, see `diffax.dpm_solver.dpm_solver_pp`), which
      shows where the order-3 difference comes from.
"""

from __future__ import annotations

import sys

import numpy as np

T = 1000
STEPS = (10, 20)
ORDERS = (1, 2, 3)
WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[1.0, -0.5], [-0.8, 0.6]])
SDS = np.array([0.15, 0.3])


def mixture_eps(x, abar, xp=np):
    """Exact eps of the 2-D mixture sum_k w_k N(mu_k, sd_k^2 I) at noise level abar (scalar):
    eps = -sqrt(1 - abar) * score, score = sum_k r_k(x) (a mu_k - x) / v_k, v_k = abar sd_k^2 + 1 - abar."""
    a, b2 = xp.sqrt(abar), 1.0 - abar
    v = abar * xp.asarray(SDS) ** 2 + b2  # (K,)
    diff = a * xp.asarray(MEANS)[None] - x[:, None, :]  # (B, K, 2)
    logp = xp.log(xp.asarray(WEIGHTS))[None] - xp.sum(diff**2, -1) / (2 * v) - xp.log(v)  # 2-D: log det / 2 = log v
    logp = logp - xp.max(logp, axis=1, keepdims=True)
    r = xp.exp(logp)
    r = r / xp.sum(r, axis=1, keepdims=True)
    score = xp.sum(r[..., None] * diff / v[None, :, None], axis=1)
    return -xp.sqrt(b2) * score


def dump(path: str) -> None:
    import torch
    from diffusers import DPMSolverMultistepScheduler

    x_T = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    out = {"x_T": x_T}
    for order in ORDERS:
        for n in STEPS:
            sch = DPMSolverMultistepScheduler(
                num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                solver_order=order, prediction_type="epsilon", algorithm_type="dpmsolver++",
                solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
                timestep_spacing="linspace",
            )  # fmt: skip
            sch.set_timesteps(n)
            acp = sch.alphas_cumprod.double().numpy()
            x = torch.from_numpy(x_T)
            for t in sch.timesteps:
                eps = mixture_eps(x.double().numpy(), float(acp[int(t)]))
                x = sch.step(torch.from_numpy(eps.astype(np.float32)), t, x).prev_sample
            out[f"x_o{order}_n{n}"] = x.numpy()
            out[f"ts_n{n}"] = sch.timesteps.numpy()
            out["betas"] = sch.betas.numpy()
    np.savez(path, **out)
    print(f"wrote {path}")


def _numpy_solver(acp, ts, x, order: int, d2_weight: float):
    """Float64 multistep DPM-Solver++ (final_step='denoise', diffusers' order rules) with the third-order
    b2 term scaled by d2_weight (1: the quadratic integrated exactly, diffax; 0.5: diffusers)."""
    grid = [acp[t] for t in ts] + [1.0]
    lam = [0.5 * np.log(a / (1 - a)) for a in grid[:-1]]
    M, ms = len(ts), []
    for i, t in enumerate(ts):
        k = 1 if i == M - 1 else min(order, i + 1, 2 if (M < 15 and i == M - 2) else 3)
        eps = mixture_eps(x, acp[t])
        ms.insert(0, (x - np.sqrt(1 - acp[t]) * eps) / np.sqrt(acp[t]))
        if i == M - 1:
            x = ms[0]
            continue
        h = lam[i + 1] - lam[i]
        e, a_n, r = np.exp(-h), np.sqrt(grid[i + 1]), np.sqrt((1 - grid[i + 1]) / (1 - grid[i]))
        if k == 1:
            d = (1 - e) * ms[0]
        elif k == 2:
            d = (1 - e) * (ms[0] + h / (2 * (lam[i] - lam[i - 1])) * (ms[0] - ms[1]))
        else:
            h0, h1 = lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
            q0, q1 = (ms[0] - ms[1]) / h0, (ms[1] - ms[2]) / h1
            b2 = (q0 - q1) / (h0 + h1)
            d = (1 - e) * ms[0] + (h - 1 + e) * (q0 + b2 * h0) + d2_weight * (h * h - 2 * h + 2 - 2 * e) * b2
        x = r * x + a_n * d
    return x


def compare(path: str) -> dict:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from diffax import dpm_solver, schedules

    z = np.load(path)
    s = schedules.from_betas(jnp.asarray(z["betas"], jnp.float64))
    acp = np.asarray(s.alphas_cumprod, np.float64)
    x_T = np.asarray(z["x_T"], np.float64)
    res = {}
    for order in ORDERS:
        for n in STEPS:
            ts = np.asarray(z[f"ts_n{n}"])
            ref = np.asarray(z[f"x_o{order}_n{n}"], np.float64)
            got = dpm_solver.dpm_solver_pp(lambda x, t: mixture_eps(x, s.alphas_cumprod[t[0]], jnp), s, None,
                                           x_T.shape, order=order, timesteps=ts, x_init=jnp.asarray(x_T))  # fmt: skip
            scale = np.max(np.abs(ref))
            half = _numpy_solver(acp, list(ts), x_T, order, 0.5)
            res[(order, n)] = (float(np.max(np.abs(np.asarray(got) - ref)) / scale),
                               float(np.max(np.abs(half - ref)) / scale))  # fmt: skip
            print(f"order {order}  steps {n:3d}  grid {ts.tolist()}\n"
                  f"    max|diffax - diffusers| / max|diffusers| = {res[(order, n)][0]:.2e}   "
                  f"numpy with diffusers' D2 weight: {res[(order, n)][1]:.2e}")  # fmt: skip
    return res


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("dump", "compare"):
        sys.exit("usage: compare_diffusers_solvers.py dump|compare FILE.npz")
    dump(sys.argv[2]) if sys.argv[1] == "dump" else compare(sys.argv[2])
