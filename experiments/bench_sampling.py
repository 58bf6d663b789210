"""Sampler speed: one-scan DDPM / DDIM vs the model's own cost and vs a Python step loop.

For a small MLP eps-model (``diffax.models.MLP``) on 2-D data,
at each batch size, for DDPM (T = 1000 steps) and DDIM (50 steps, 'leading' spacing):
  compile_s   trace + lower + XLA compile of the jitted sampler (``.lower(...).compile()``), once
  run_ms      median wall time of the compiled sampler over `--repeats` runs (after one warm-up),
              each ended by ``block_until_ready``; run_ms, scan_ms, loop_ms and call_ms are timed
              round-robin (one of each per round) so a shared machine's load hits them alike
  call_ms     time of ONE jitted model call (dispatch and block_until_ready included): the
              median over rounds of a block of 10 calls, / 10
  scan_ms     a lax.scan of `steps` bare model calls (x <- model(x, t)), the model's cost in a loop
              with no sampler math and no dispatch per step
  overhead    run_ms / (steps * call_ms)   (goal <= 1.10; < 1 means the scan saved dispatch)
  vs_scan     run_ms / scan_ms             (the sampler's own per-step math and RNG)
  loop_ms     median time of a Python loop calling a jitted single step per timestep (keys split
              up front, the step index passed as an array: how step-by-step scheduler pipelines
              such as diffusers sample)
  speedup     loop_ms / run_ms

With ``--unet``: DDPM sampling with configs/cifar10.py's U-Net (`diffax.models.ddpm_cifar10`, random
weights) of ``--unet-batch`` images x ``--unet-steps`` steps: compile_s, run_s (median), images_per_s,
call_ms (one jitted forward of the same batch) and overhead = run / (steps x call) (issue 14's goal:
<= 1.05; the per-step coefficients and all step keys are computed before the scan).
With ``--fid``: FID feature extraction in images/s at ``--fid-batch``, through the eval path's own
`diffax.evaluation.inception_metrics.inception_outputs` (FID Inception-v3 with random weights, 299x299
input, 'highest' precision, sharded over every device).

Run:  python experiments/bench_sampling.py            # table (batch 256, 1024, 4096)
      python experiments/bench_sampling.py --json     # one JSON object
      python experiments/bench_sampling.py --quick    # smoke: batch 256, DDPM 100 steps, 2 repeats
GPU (issue 12's goal: 256 samples x 1000 steps <= 10 s on one H100/H200):
      python experiments/bench_sampling.py --batch-sizes --unet --unet-batch 256 --unet-steps 1000 --fid
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffax import diffusion, samplers, schedules
from diffax.models import MLP

DIM = 2


def _interleaved_median_ms(fns: dict, repeats: int) -> dict:
    """Median wall time (ms) of each blocking fn() over `repeats` rounds, after one warm-up each.

    The functions are timed round-robin (one call of each per round), so that a shared machine's
    varying load hits all of them alike and their ratios stay meaningful.
    """
    for fn in fns.values():
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def _compile(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _ddpm_step(apply, s, params, x, t, key):
    """One ancestral step x_t -> x_{t-1} (the same math as samplers.ddpm), for the Python loop."""
    tb = jnp.full((x.shape[0],), t, jnp.int32)
    pmv = diffusion.p_mean_variance(s, apply(params, x, tb), x, tb, mean_type="eps", var_type="fixed_small")
    sigma = jnp.where(t > 0, jnp.exp(0.5 * pmv["log_variance"]), 0.0)
    return pmv["mean"] + sigma * jax.random.normal(key, x.shape, x.dtype)


def _ddim_step(apply, s, params, x, t, abar_prev, key):
    """One deterministic DDIM step (eta = 0, Song et al. 2021 eq. 12), for the Python loop."""
    del key
    tb = jnp.full((x.shape[0],), t, jnp.int32)
    eps = apply(params, x, tb)
    x0 = diffusion.eps_to_x0(s, x, tb, eps)
    return jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev) * eps


def bench(sampler: str, *, batch: int, ddpm_steps: int, repeats: int, hidden: int, layers: int) -> dict:
    model = MLP(hidden=hidden, num_layers=layers)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, DIM))
    t = jnp.zeros((batch,), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x, t)
    apply = model.apply  # apply(params, x, t)
    key = jax.random.PRNGKey(2)
    if sampler == "ddpm":
        s = schedules.linear(ddpm_steps, 1e-4 * 1000 / ddpm_steps, 0.02 * 1000 / ddpm_steps)
        steps = ddpm_steps

        def run(params, key):
            return samplers.ddpm(functools.partial(apply, params), s, key, (batch, DIM))

    else:
        s = schedules.linear(1000)
        steps = 50

        def run(params, key):
            return samplers.ddim(functools.partial(apply, params), s, key, (batch, DIM), num_steps=50)

    sampler_c, compile_s = _compile(run, params, key)
    call_c, _ = _compile(apply, params, x, t)

    def model_scan(params, x):
        def body(x, i):
            return apply(params, x, jnp.full((batch,), i, jnp.int32)), None

        return jax.lax.scan(body, x, jnp.arange(steps))[0]

    scan_c, _ = _compile(model_scan, params, x)

    # The Python loop: a jitted single step per timestep, as step-by-step pipelines do.
    keys = jax.random.split(key, steps)
    if sampler == "ddpm":
        step_c, _ = _compile(functools.partial(_ddpm_step, apply, s), params, x, jnp.int32(0), keys[0])
        ts = [np.int32(i) for i in range(steps - 1, -1, -1)]

        def loop():
            y = jax.random.normal(key, (batch, DIM))
            for i, ti in enumerate(ts):
                y = step_c(params, y, ti, keys[i])
            return y.block_until_ready()

    else:
        seq = schedules.space_timesteps(1000, 50, "leading")
        abar = np.asarray(s.alphas_cumprod)
        prev = np.append(1.0, abar[seq][:-1]).astype(np.float32)
        step_c, _ = _compile(
            functools.partial(_ddim_step, apply, s), params, x, jnp.int32(0), jnp.float32(1.0), keys[0]
        )
        plan = [(np.int32(seq[i]), np.float32(prev[i])) for i in range(len(seq) - 1, -1, -1)]

        def loop():
            y = jax.random.normal(key, (batch, DIM))
            for i, (ti, ap) in enumerate(plan):
                y = step_c(params, y, ti, ap, keys[i])
            return y.block_until_ready()

    def ten_calls():  # one jitted model call, timed as a block of 10 (each blocked) to resolve it
        for _ in range(10):
            call_c(params, x, t).block_until_ready()

    ms = _interleaved_median_ms(
        dict(
            run=lambda: sampler_c(params, key).block_until_ready(),
            scan=lambda: scan_c(params, x).block_until_ready(),
            loop=loop,
            call10=ten_calls,
        ),
        repeats,
    )
    run_ms, scan_ms, loop_ms, call_ms = ms["run"], ms["scan"], ms["loop"], ms["call10"] / 10
    return dict(
        sampler=f"{sampler}-{steps}",
        batch=batch,
        steps=steps,
        compile_s=round(compile_s, 3),
        run_ms=round(run_ms, 3),
        call_ms=round(call_ms, 4),
        scan_ms=round(scan_ms, 3),
        overhead=round(run_ms / (steps * call_ms), 3),
        vs_scan=round(run_ms / scan_ms, 3),
        loop_ms=round(loop_ms, 3),
        speedup=round(loop_ms / run_ms, 3),
    )


def bench_unet_ddpm(*, batch: int, steps: int, repeats: int, ch: int = 128, dtype: str = "float32") -> dict:
    """DDPM ancestral sampling of `batch` 32x32x3 images in `steps` steps with ddpm_cifar10 (random weights)."""
    from diffax.models import ddpm_cifar10

    model = ddpm_cifar10(ch=ch, dtype=dtype)
    shape = (batch, 32, 32, 3)
    x = jnp.zeros(shape, jnp.float32)
    t = jnp.zeros((batch,), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x[:1], t[:1])
    s = schedules.linear(1000)
    # All 1000 steps, or (smoke runs) the chain respaced to `steps` (improved DDPM's respacing).
    ts = None if steps == 1000 else np.linspace(0, 999, steps).round().astype(np.int32)

    def run(params, key):
        return samplers.ddpm(lambda xt, tt: model.apply(params, xt, tt), s, key, shape, timesteps=ts)

    sampler_c, compile_s = _compile(run, params, jax.random.PRNGKey(2))
    call_c, call_compile_s = _compile(model.apply, params, x, t)
    ms = _interleaved_median_ms(
        dict(run=lambda: sampler_c(params, jax.random.PRNGKey(2)).block_until_ready(),
             call=lambda: call_c(params, x, t).block_until_ready()),
        repeats,
    )  # fmt: skip
    return dict(
        sampler=f"ddpm-{steps}", model=f"ddpm_cifar10(ch={ch})", dtype=dtype, batch=batch,
        compile_s=round(compile_s, 2), run_s=round(ms["run"] / 1e3, 3), images_per_s=round(batch / (ms["run"] / 1e3), 2),
        call_ms=round(ms["call"], 3), overhead=round(ms["run"] / (steps * ms["call"]), 3),
        device_peak_mib=_peak_mib(),
    )  # fmt: skip


def _peak_mib():
    stats = jax.local_devices()[0].memory_stats() or {}
    return round(stats["peak_bytes_in_use"] / 2**20, 1) if "peak_bytes_in_use" in stats else None


def bench_fid(*, batch: int, repeats: int, input_size: int = 299) -> dict:
    """FID feature extraction as ``--mode=eval`` runs it: `inception_metrics.inception_outputs` on `batch` uint8
    32x32 images per call (one global batch over every device, 'highest' precision, the moments merged on the
    host), random Inception weights. compile_s = the first call minus a steady one."""
    from diffax.evaluation import inception_metrics
    from diffax.models.inception import InceptionV3
    from diffax.device_mesh import make_mesh

    model = InceptionV3(input_size=input_size)
    u8 = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    mesh = make_mesh()

    def features():
        return inception_metrics.inception_outputs(u8, model, variables, mesh, batch_size=batch, keep_features=False)

    t0 = time.perf_counter()
    features()
    first_s = time.perf_counter() - t0
    ms = _interleaved_median_ms(dict(f=features), repeats)["f"]
    return dict(model=f"InceptionV3({input_size}x{input_size})", batch=batch, compile_s=round(first_s - ms / 1e3, 2),
                batch_ms=round(ms, 2), images_per_s=round(batch / (ms / 1e3), 1), device_peak_mib=_peak_mib())  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[256, 1024, 4096], help="MLP rows (none: skip them)")
    p.add_argument("--ddpm-steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="batch 256, DDPM 100 steps, 2 repeats")
    p.add_argument("--unet", action="store_true", help="also DDPM sampling with the CIFAR-10 U-Net")
    p.add_argument("--unet-batch", type=int, default=256)
    p.add_argument("--unet-steps", type=int, default=1000)
    p.add_argument("--unet-ch", type=int, default=128, help="U-Net width (128 = ddpm_cifar10; smaller for smoke runs)")
    p.add_argument("--unet-dtypes", default="float32", help="comma list: float32, bfloat16")
    p.add_argument("--fid", action="store_true", help="also FID feature extraction (InceptionV3, random weights)")
    p.add_argument("--fid-batch", type=int, default=250)
    p.add_argument("--fid-input-size", type=int, default=299, help="299 for FID; >= 75 for smoke runs")
    a = p.parse_args(argv)
    if a.quick:
        a.batch_sizes, a.ddpm_steps, a.repeats = [256], 100, 2
    for name, v in (("ddpm-steps", a.ddpm_steps), ("repeats", a.repeats), ("hidden", a.hidden), ("layers", a.layers)):
        if v < 1:
            raise ValueError(f"--{name} must be >= 1, got {v}")
    rows = [
        bench(smp, batch=b, ddpm_steps=a.ddpm_steps, repeats=a.repeats, hidden=a.hidden, layers=a.layers)
        for b in a.batch_sizes
        for smp in ("ddpm", "ddim")
    ]
    unet_rows = [bench_unet_ddpm(batch=a.unet_batch, steps=a.unet_steps, repeats=a.repeats, ch=a.unet_ch, dtype=d)
                 for d in a.unet_dtypes.split(",")] if a.unet else []  # fmt: skip
    fid_rows = [bench_fid(batch=a.fid_batch, repeats=a.repeats, input_size=a.fid_input_size)] if a.fid else []
    meta = dict(
        backend=jax.default_backend(),
        device=str(jax.devices()[0]),
        jax=jax.__version__,
        python=platform.python_version(),
        model=f"{MLP.__module__}.MLP(hidden={a.hidden}, num_layers={a.layers}) on {DIM}-D",
        repeats=a.repeats,
    )
    if a.json:
        json.dump(dict(meta=meta, rows=rows, unet_rows=unet_rows, fid_rows=fid_rows), sys.stdout)
        print()
        return
    print(" ".join(f"{k}={v}" for k, v in meta.items()))
    for table in (rows, unet_rows, fid_rows):
        if table:
            cols = list(table[0])
            print(" | ".join(f"{c:>10}" for c in cols))
            for r in table:
                print(" | ".join(f"{r[c]!s:>10}" for c in cols))


if __name__ == "__main__":
    main()
