"""Train-step throughput and memory: the toy MLP and DDPM's CIFAR-10 U-Net.

For each model: one `jit_train_step` (jit over a 'data' mesh of all local devices, state donated)
of L_simple with DDPM's optimizer (Adam 2e-4, warm-up, clip 1.0) and EMA 0.9999. Reported:
  compile_s      trace + lower + XLA compile of the step (``.lower(...).compile()``), once
  step_ms        median wall time of one step over `--repeats` timed steps (after 1 warm-up step),
                 each ended by ``block_until_ready``; also min and max
  examples_per_s batch / median step time
  params         number of parameters
  xla_temp_mib   XLA's buffer assignment for the step (``compiled.memory_analysis()``): temporaries
  device_peak_mib  ``device.memory_stats()['peak_bytes_in_use']`` where the backend has it (GPU/TPU)
  host_rss_mib   peak resident set size of this process so far (``resource.getrusage`` ru_maxrss);
                 cumulative, so the row of a later model includes the earlier ones

The UNet is configs/cifar10.py's model (`diffax.models.ddpm_cifar10`, 35,746,307 parameters).
``--dtypes float32,bfloat16`` adds a row per activation dtype (``model.dtype``; mixed precision keeps
parameters, EMA and optimizer state float32).

Run (CPU, 2 cores):   python experiments/bench_train.py                 # table
                      python experiments/bench_train.py --json          # one JSON object
                      python experiments/bench_train.py --quick         # smoke: 2 repeats, UNet ch=32
GPU (issue 12's goal: >= 40 steps/s at batch 128 in bf16 on one H100/H200):
                      python experiments/bench_train.py --models unet --batch 128 --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffax import models, schedules
from diffax.device_mesh import make_mesh, replicate, shard_batch
from diffax.training import (
    create_train_state,
    diffusion_loss_fn,
    jit_train_step,
    make_optimizer,
    make_train_step,
)


def _model(name: str, quick: bool, dtype: str = "float32"):
    """(model, example shape, description)."""
    if name == "mlp":
        return models.MLP(hidden=128, num_layers=3, dtype=dtype), (2,), f"MLP hidden=128 x3 on 2-D, {dtype}"
    if name == "unet":
        ch = 32 if quick else 128
        model = models.ddpm_cifar10(ch=ch, dtype=dtype)
        return model, (32, 32, 3), f"UNet ch={ch} (1,2,2,2) 2res attn16 (ddpm_cifar10), 32x32x3, {dtype}"
    raise ValueError(f"unknown model {name!r}; allowed: ['mlp', 'unet']")


def bench(name: str, *, batch: int, repeats: int, quick: bool, dtype: str = "float32") -> dict:
    model, shape, desc = _model(name, quick, dtype)
    mesh = make_mesh(jax.local_devices())
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(batch,) + shape).astype(np.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(x[:1]), jnp.zeros(1, jnp.int32))["params"]
    tx = make_optimizer()
    loss_fn = diffusion_loss_fn(model.apply, schedules.linear(1000))
    step = jit_train_step(make_train_step(loss_fn, tx, ema_decay=0.9999), mesh)
    state = replicate(create_train_state(params=params, tx=tx, rng=jax.random.PRNGKey(1)), mesh)
    data = shard_batch({"x": x}, mesh)

    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0

    state, metrics = compiled(state, data)  # warm-up run
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)

    mem = compiled.memory_analysis()
    stats = jax.local_devices()[0].memory_stats() or {}
    return dict(
        model=name,
        dtype=dtype,
        description=desc,
        batch=batch,
        devices=mesh.devices.size,
        params=int(sum(p.size for p in jax.tree.leaves(params))),
        compile_s=compile_s,
        step_ms=1e3 * med,
        step_ms_min=1e3 * min(times),
        step_ms_max=1e3 * max(times),
        examples_per_s=batch / med,
        steps_per_s=1.0 / med,
        xla_temp_mib=(mem.temp_size_in_bytes / 2**20) if mem is not None else None,
        device_peak_mib=(stats["peak_bytes_in_use"] / 2**20) if "peak_bytes_in_use" in stats else None,
        host_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        loss=float(metrics["loss"]),
    )


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mlp,unet", help="comma list of: mlp, unet")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtypes", default="float32", help="comma list of activation dtypes: float32, bfloat16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 repeats and a ch=32 UNet (smoke test)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    rows = [bench(m, batch=args.batch, repeats=repeats, quick=args.quick, dtype=d)
            for m in args.models.split(",") for d in args.dtypes.split(",")]
    info = dict(backend=jax.default_backend(), device=str(jax.local_devices()[0].device_kind),
                num_devices=jax.local_device_count(), jax=jax.__version__, repeats=repeats)  # fmt: skip
    if args.json:
        print(json.dumps(dict(info, results=rows)))
        return
    cols = ["model", "dtype", "params", "batch", "compile_s", "step_ms", "steps_per_s", "examples_per_s", "xla_temp_mib",
            "device_peak_mib", "host_rss_mib"]  # fmt: skip
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    table = [cols] + [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(s.rjust(w) for s, w in zip(row, widths)))
    for r in rows:
        print(f"# {r['model']}: {r['description']}; step min/median/max = "
              f"{r['step_ms_min']:.1f}/{r['step_ms']:.1f}/{r['step_ms_max']:.1f} ms")  # fmt: skip
    if len(rows) == 2 and rows[0]["model"] != rows[1]["model"]:
        print(f"# step-time ratio {rows[1]['model']}/{rows[0]['model']}: {rows[1]['step_ms'] / rows[0]['step_ms']:.0f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
