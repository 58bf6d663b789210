r"""diffax.unipc against diffusers' UniPCMultistepScheduler on the same grid, from the same x_T.

    /tmp/torchenv/bin/python experiments/compare_diffusers_unipc.py dump tests/fixtures/unipc_diffusers.npz
    python experiments/compare_diffusers_unipc.py compare tests/fixtures/unipc_diffusers.npz

`dump` (needs torch + diffusers, not diffax) runs UniPCMultistepScheduler(num_train_timesteps=1000, linear betas,
predict_x0=True, solver_type=bh1|bh2, solver_order=1|2|3, lower_order_final=True, final_sigmas_type='zero',
timestep_spacing='linspace', prediction_type='epsilon', disable_corrector=[]) at 10 and 20 steps on a fixed
analytic eps: the exact eps of data N(MU, diag SD^2), eps(x, t) = b (x - a MU) / (a^2 SD^2 + b^2) with a, b from
abar_t (float64 of diffusers' float32 alphas_cumprod), from x_T ~ N(0, I) (float64, B = 16, D = 3), and stores
betas, x_T, each run's timesteps and trajectory (M, B, D): entry i the `prev_sample` of step i).
`compare` runs `diffax.unipc.unipc` (x64, schedule from the same
float32 betas, `timesteps` = diffusers' grid, final_step='denoise') and prints max |diffax - diffusers| / max
|diffusers| per run over the whole trajectory (diffax's return_trajectory: the predictor output of each step).
With solver_type='bh1' diffusers' last step to sigma = 0 computes B(h) * 0 = -inf * 0 and returns NaN; there only the
first M - 1 steps are compared (diffax's last step there is x = x_theta, the limit).
diffusers keeps its sigmas in float32, so agreement is to ~1e-6, not to float64. Measured with diffusers 0.42.1:
<= 5.5e-7 (bh2, all steps) and <= 3.4e-7 (bh1, first M - 1 steps) for orders 1, 2, 3 at 10 and 20 steps.
"""

from __future__ import annotations

import sys

import numpy as np

MU, SD = np.array([1.5, -0.5, 0.3]), np.array([0.4, 1.0, 0.1])
B, D, T = 16, 3, 1000
ORDERS, VARIANTS, STEPS = (1, 2, 3), ("bh1", "bh2"), (10, 20)


def gaussian_eps(x: np.ndarray, abar: float) -> np.ndarray:
    a, b = np.sqrt(abar), np.sqrt(1.0 - abar)
    return b * (x - a * MU) / (a**2 * SD**2 + b**2)


def dump(path: str) -> None:
    import torch
    from diffusers import UniPCMultistepScheduler

    x_T = np.random.default_rng(0).standard_normal((B, D))
    out: dict[str, np.ndarray] = {"x_T": x_T, "mu": MU, "sd": SD}
    for order in ORDERS:
        for variant in VARIANTS:
            for M in STEPS:
                sch = UniPCMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", solver_order=order,
                                              solver_type=variant, predict_x0=True, lower_order_final=True,
                                              final_sigmas_type="zero", timestep_spacing="linspace")  # fmt: skip
                acp = sch.alphas_cumprod.double().numpy()
                out["betas"] = sch.betas.numpy()
                sch.set_timesteps(M)
                x, traj = torch.from_numpy(x_T.copy()), []
                for t in sch.timesteps:
                    eps = torch.from_numpy(gaussian_eps(x.numpy(), acp[int(t)]))
                    x = sch.step(eps, t, x).prev_sample
                    traj.append(x.numpy().astype(np.float64))
                key = f"o{order}_{variant}_{M}"
                out[key] = np.stack(traj)
                out[key + "_ts"] = sch.timesteps.numpy().astype(np.int64)
    np.savez_compressed(path, **out)
    print("wrote", path, {k: v.shape for k, v in out.items()})


def fixture_model(f):
    """The analytic Gaussian eps the fixture ``f`` was made with (abar: float64 of diffusers' float32 cumprod)."""
    import jax.numpy as jnp

    acp = jnp.asarray(np.cumprod(1.0 - np.asarray(f["betas"], np.float32), dtype=np.float32).astype(np.float64))
    mu, sd = jnp.asarray(f["mu"]), jnp.asarray(f["sd"])

    def eps_fn(x, t):
        abar = jnp.take(acp, t)[:, None]
        a, b = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
        return b * (x - a * mu) / (a**2 * sd**2 + b**2)

    return eps_fn


def diffax_runs(f) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{key: (diffax trajectory, diffusers trajectory)}, each (M, B, D), for every run in the npz ``f`` (x64 on)."""
    import jax.numpy as jnp

    from diffax import schedules, unipc

    s = schedules.from_betas(np.asarray(f["betas"], np.float64))
    eps_fn = fixture_model(f)
    res = {}
    for order in ORDERS:
        for variant in VARIANTS:
            for M in STEPS:
                key = f"o{order}_{variant}_{M}"
                _, traj = unipc.unipc(eps_fn, s, None, (B, D), order=order, variant=variant, timesteps=f[key + "_ts"],
                                      final_step="denoise", x_init=jnp.asarray(f["x_T"]),
                                      return_trajectory=True)  # fmt: skip
                res[key] = (np.asarray(traj[1:]), np.asarray(f[key]))
    return res


def compare(path: str) -> None:
    import jax

    with jax.enable_x64(True):
        res = diffax_runs(np.load(path))
    for key, (ours, ref) in res.items():
        n = len(ref) if np.all(np.isfinite(ref[-1])) else len(ref) - 1
        rel = relative_error(ours[:n], ref[:n])
        print(f"{key}: steps compared {n}/{len(ref)}, max|diffax - diffusers| / max|diffusers| = {rel:.2e}")


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| (NaN anywhere in ref gives NaN)."""
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


if __name__ == "__main__":
    {"dump": dump, "compare": compare}[sys.argv[1]](sys.argv[2])
