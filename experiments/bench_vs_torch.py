"""diffax vs PyTorch (diffusers) on the same U-Net: forward, train step and DDIM sampling, side by side.

The network is DDPM's CIFAR-10 U-Net (Ho et al. 2020, appendix B) on both sides:
  diffax  `diffax.models.ddpm_cifar10()` under ``jax.jit``
  torch   diffusers ``UNet2DModel`` in the same configuration (block_out_channels (128, 256, 256, 256),
          attention at 16x16, 2 res blocks, GroupNorm 32 / eps 1e-6, dropout 0.1; the config of
          ``google/ddpm-cifar10-32``)
Both have 35,746,307 parameters (asserted for ch=128). torch runs with ``torch.set_num_threads`` = the
number of CPU cores JAX's CPU client uses (the process's CPU affinity).

Cases (each timed once per round, all cases round-robin, so a shared machine's load hits both sides alike):
  forward     eps = model(x_t, t), eval mode (no dropout; torch under ``torch.inference_mode``)
  train       one optimizer step of L_simple (Ho et al. 2020, eq. 14): t ~ U{0..999}, eps ~ N(0, I),
              loss = mean ||eps - model(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2, gradient, Adam
              (lr 2e-4); dropout 0.1 on; no EMA, no clipping. diffax: `diffax.training.diffusion_loss_fn`
              + ``optax.adam`` in one jit with the parameters and optimizer state donated; torch:
              ``loss.backward()`` + ``torch.optim.Adam`` (its default implementation for the device).
  ddim        S-step deterministic DDIM (eta = 0, 'leading' spacing) from x_T ~ N(0, I): diffax's
              `diffax.samplers.ddim` (one lax.scan, jitted) vs a diffusers ``DDIMScheduler`` loop.
Reported per case: median / min / max wall time (ms) over --repeats rounds after one warm-up, each
ended by ``block_until_ready`` / ``torch.cuda.synchronize``; ratio = diffax median / torch median
(< 1: diffax faster); compile_s = diffax's trace + lower + XLA compile (``.lower().compile()``) and
torch's first (warm-up) call, reported separately and excluded from the timings.

Run (CPU):
  python experiments/bench_vs_torch.py                          # batch 8 and 32, 5 repeats, DDIM 5 steps
  python experiments/bench_vs_torch.py --batch-sizes 8 --repeats 7 --json
  python experiments/bench_vs_torch.py --quick                  # smoke: ch=32, batch 2, 2 repeats
Needs torch and diffusers (the optional extra); diffax itself does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffax import samplers, schedules
from diffax.models import ddpm_cifar10
from diffax.training import diffusion_loss_fn

DDPM_CIFAR10_PARAMS = 35_746_307
SHAPE = (32, 32, 3)


def jax_cpu_cores() -> int:
    """The CPU cores JAX's CPU client runs on: those of this process's affinity mask."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def count_params(tree) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------------------- diffax


def diffax_cases(*, ch: int, batch: int, ddim_steps: int, dtype: str, seed: int = 0) -> tuple[dict, dict, int]:
    """({case: blocking fn()}, {case: compile seconds}, number of parameters) for diffax."""
    model = ddpm_cifar10(ch=ch, dtype=jnp.dtype(dtype))
    schedule = schedules.linear(1000)
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.uniform(-1, 1, size=(batch,) + SHAPE).astype(np.float32))
    t = jnp.asarray(rng.integers(0, 1000, size=batch).astype(np.int32))
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), x0[:1], t[:1])["params"]
    n_params = count_params(params)
    tx = optax.adam(2e-4)
    opt_state = jax.jit(tx.init)(params)
    loss_fn = diffusion_loss_fn(model.apply, schedule)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def forward(params, x, t):
        return model.apply({"params": params}, x, t)

    def train_step(params, opt_state, key, batch_x):
        (loss, _), grads = grad_fn(params, key, {"x": batch_x}, True)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def sample(params, key):
        def model_fn(x, t):
            return model.apply({"params": params}, x, t)

        return samplers.ddim(model_fn, schedule, key, (batch,) + SHAPE, num_steps=ddim_steps)

    compile_s = {}

    def compiled(name, fn, *args, **jit_kw):
        t0 = time.perf_counter()
        c = jax.jit(fn, **jit_kw).lower(*args).compile()
        compile_s[name] = time.perf_counter() - t0
        return c

    fwd_c = compiled("forward", forward, params, x0, t)
    # The train step gets its own copy of the parameters: they and the optimizer state are donated.
    train_state = {"params": jax.tree.map(jnp.copy, params), "opt": opt_state, "i": 0}
    step_c = compiled("train", train_step, train_state["params"], opt_state, jax.random.PRNGKey(1), x0,
                      donate_argnums=(0, 1))  # fmt: skip
    ddim_c = compiled("ddim", sample, params, jax.random.PRNGKey(2))
    step_keys = jax.random.split(jax.random.PRNGKey(3), 10_000)

    def run_train():
        i = train_state["i"]
        train_state["params"], train_state["opt"], loss = step_c(
            train_state["params"], train_state["opt"], step_keys[i % len(step_keys)], x0
        )
        train_state["i"] = i + 1
        jax.block_until_ready((train_state["params"], loss))

    fns = {
        "forward": lambda: fwd_c(params, x0, t).block_until_ready(),
        "train": run_train,
        "ddim": lambda: ddim_c(params, jax.random.PRNGKey(2)).block_until_ready(),
    }
    return fns, compile_s, n_params


# -------------------------------------------------------------------------------------------- torch


def diffusers_unet(ch: int):
    """diffusers' UNet2DModel in DDPM's CIFAR-10 configuration (google/ddpm-cifar10-32), width `ch`."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(ch, 2 * ch, 2 * ch, 2 * ch),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32, norm_eps=1e-6, act_fn="silu", dropout=0.1, attention_head_dim=None,
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, time_embedding_type="positional",
    )  # fmt: skip


def torch_cases(*, ch: int, batch: int, ddim_steps: int, dtype: str, device: str, seed: int = 0):
    """({case: blocking fn()}, {case: first-call seconds}, number of parameters) for torch/diffusers."""
    import torch
    from diffusers import DDIMScheduler

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = diffusers_unet(ch).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(seed)
    x0 = torch.from_numpy(rng.uniform(-1, 1, size=(batch, 3, 32, 32)).astype(np.float32)).to(dev)
    t = torch.from_numpy(rng.integers(0, 1000, size=batch)).to(dev)
    abar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    autocast = dtype == "bfloat16"
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def amp():
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast)

    def forward():
        model.eval()
        with torch.inference_mode(), amp():
            out = model(x0, t).sample
        sync()
        return out

    def train():
        model.train()
        tt = torch.randint(0, 1000, (batch,), device=dev)
        noise = torch.randn_like(x0)
        a = abar[tt].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with amp():
            eps = model(x_t, tt).sample
        loss = torch.mean((noise - eps.float()) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")  # fmt: skip
    gen = torch.Generator(device=dev)

    def ddim():
        model.eval()
        sched.set_timesteps(ddim_steps)
        gen.manual_seed(seed)
        x = torch.randn((batch, 3, 32, 32), generator=gen, device=dev)
        with torch.inference_mode(), amp():
            for tk in sched.timesteps:
                eps = model(x, tk).sample
                x = sched.step(eps.float(), tk, x, eta=0.0).prev_sample
        sync()
        return x

    fns = {"forward": forward, "train": train, "ddim": ddim}
    first_s = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first_s[name] = time.perf_counter() - t0
    return fns, first_s, n_params


# ------------------------------------------------------------------------------------------ running


def interleaved_times(fns: dict, repeats: int) -> dict:
    """Wall times (s) of each blocking fn() over `repeats` round-robin rounds, after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bench(*, batch: int, ch: int, repeats: int, ddim_steps: int, dtype: str, device: str) -> list[dict]:
    jfns, jcompile, jn = diffax_cases(ch=ch, batch=batch, ddim_steps=ddim_steps, dtype=dtype)
    tfns, tfirst, tn = torch_cases(ch=ch, batch=batch, ddim_steps=ddim_steps, dtype=dtype, device=device)
    if jn != tn:
        raise AssertionError(f"parameter counts differ: diffax {jn:,} vs diffusers {tn:,}")
    if ch == 128 and jn != DDPM_CIFAR10_PARAMS:
        raise AssertionError(f"ddpm_cifar10 should have {DDPM_CIFAR10_PARAMS:,} parameters, got {jn:,}")
    fns = {("diffax", k): v for k, v in jfns.items()} | {("torch", k): v for k, v in tfns.items()}
    times = interleaved_times(fns, repeats)
    rows = []
    for case in jfns:
        j, t = times[("diffax", case)], times[("torch", case)]
        name = f"ddim{ddim_steps}" if case == "ddim" else case
        rows.append(dict(
            case=name, batch=batch, params=jn,
            diffax_ms=1e3 * statistics.median(j), diffax_min_ms=1e3 * min(j), diffax_max_ms=1e3 * max(j),
            torch_ms=1e3 * statistics.median(t), torch_min_ms=1e3 * min(t), torch_max_ms=1e3 * max(t),
            ratio=statistics.median(j) / statistics.median(t),
            diffax_compile_s=jcompile[case], torch_first_call_s=tfirst[case],
        ))  # fmt: skip
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ddim-steps", type=int, default=5)
    p.add_argument("--ch", type=int, default=128, help="base width (128 = DDPM CIFAR-10, 35,746,307 params)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="activations: diffax model.dtype / torch autocast (parameters stay float32)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if JAX runs on a GPU, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores JAX uses)")
    p.add_argument("--quick", action="store_true", help="smoke: ch=32, batch 2, 2 repeats, DDIM 2 steps")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.quick:
        a.ch, a.batch_sizes, a.repeats, a.ddim_steps = 32, [2], 2, 2
    for name, v in (("repeats", a.repeats), ("ddim-steps", a.ddim_steps), ("ch", a.ch)):
        if v < 1:
            raise ValueError(f"--{name} must be >= 1, got {v}")
    if a.ch % 32:
        raise ValueError(f"--ch must be a multiple of 32 (GroupNorm 32 groups), got {a.ch}")
    import diffusers
    import torch

    device = a.device or ("cuda" if jax.default_backend() == "gpu" else "cpu")
    threads = a.threads or jax_cpu_cores()
    torch.set_num_threads(threads)
    rows = [r for b in a.batch_sizes for r in bench(batch=b, ch=a.ch, repeats=a.repeats, ddim_steps=a.ddim_steps,
                                                    dtype=a.dtype, device=device)]  # fmt: skip
    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=platform.processor() or platform.machine(),
        cpu_cores=jax_cpu_cores(), torch_threads=torch.get_num_threads(), jax_backend=jax.default_backend(),
        jax_device=str(jax.devices()[0].device_kind), torch_device=device, jax=jax.__version__,
        torch=torch.__version__, diffusers=diffusers.__version__, dtype=a.dtype, repeats=a.repeats,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )  # fmt: skip
    if a.json:
        print(json.dumps(dict(meta=meta, rows=rows)))
        return
    print(" ".join(f"{k}={v}" for k, v in meta.items()))
    print(f"{'case':>8} {'batch':>5} | {'diffax ms (min-max)':>26} | {'torch ms (min-max)':>26} | {'ratio':>5} | "
          f"{'compile s':>9} {'torch 1st s':>11}")  # fmt: skip
    for r in rows:
        d = f"{r['diffax_ms']:.0f} ({r['diffax_min_ms']:.0f}-{r['diffax_max_ms']:.0f})"
        t = f"{r['torch_ms']:.0f} ({r['torch_min_ms']:.0f}-{r['torch_max_ms']:.0f})"
        print(f"{r['case']:>8} {r['batch']:>5} | {d:>26} | {t:>26} | {r['ratio']:5.2f} | "
              f"{r['diffax_compile_s']:9.1f} {r['torch_first_call_s']:11.2f}")  # fmt: skip
    print("# ratio = diffax median / torch median (< 1: diffax faster)")


if __name__ == "__main__":
    main(sys.argv[1:])
