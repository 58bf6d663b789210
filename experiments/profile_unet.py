"""Where the DDPM CIFAR-10 U-Net's time goes on this backend: op time of one compiled forward or train step.

One call of the compiled program is traced with ``jax.profiler`` (Perfetto trace); every XLA op event
(``<instruction>.<n>``, e.g. ``ynn_fusion.12``) is mapped to its HLO instruction in ``compiled.as_text()``
and classified by what it (or the computation it calls, recursively) contains, first match wins:
  convolution   a ``convolution`` (XLA CPU hands these to YNNPACK fusions)
  dot           a ``dot`` (matmuls: attention, denses, 1x1 convolutions)
  reduction     ``reduce`` / ``reduce-window`` (GroupNorm statistics, softmax, the loss)
  rng           an rng-bit-generator op (threefry, JAX's default, is integer arithmetic: elementwise)
  data movement ``copy`` / ``transpose`` / ``concatenate`` / ``pad`` / ``slice`` / ``dynamic-slice``
  elementwise   everything else (GroupNorm normalise, SiLU, adds, Adam)
Shares are of the summed op time (over the thread pool's threads); `wall_ms` is the call's wall time.

Cases: forward (eval mode) and train (value_and_grad of L_simple, dropout on, + Adam), the programs of
experiments/bench_vs_torch.py.

Run:  python experiments/profile_unet.py --case train --batch 8          # table
      python experiments/profile_unet.py --case forward --batch 8 --json # one JSON object
      python experiments/profile_unet.py --quick                         # smoke: ch=32, batch 2
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffax import schedules
from diffax.models import ddpm_cifar10
from diffax.training import diffusion_loss_fn

CATEGORIES = ("convolution", "dot", "reduction", "rng", "data movement", "elementwise")
_OPS = {
    "convolution": ("convolution",),
    "dot": ("dot",),
    "reduction": ("reduce", "reduce-window"),
    "rng": ("rng-bit-generator", "rng", "rng-get-and-update-state"),
    "data movement": ("copy", "transpose", "concatenate", "pad", "slice", "dynamic-slice", "dynamic-update-slice"),
}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """({instruction: (opcode words, called computations)}, {computation: [instructions]}) of an HLO module."""
    instrs, comps, current = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        if line.rstrip().endswith("{") and " = " not in line:
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            continue
        m = _INSTR.match(line)
        if m is None or current is None:
            continue
        name, rhs = m.groups()
        ops = set(re.findall(r"\s([a-z][a-z\-]*)\(", " " + rhs))
        instrs[name] = (ops, _CALLS.findall(rhs))
        comps[current].append(name)
    return instrs, comps


def categorize(name: str, instrs: dict, comps: dict) -> str:
    """The first category of CATEGORIES found in instruction `name` or anything it calls."""
    seen, ops, stack = set(), set(), [name]
    while stack:
        n = stack.pop()
        if n in seen or n not in instrs:
            continue
        seen.add(n)
        o, calls = instrs[n]
        ops |= o
        for c in calls:
            stack.extend(comps.get(c, ()))
    for cat in CATEGORIES[:-1]:
        if ops & set(_OPS[cat]):
            return cat
    return "elementwise"


def programs(case: str, *, ch: int, batch: int):
    """(compiled, args) of the forward or train step (the programs of bench_vs_torch.py)."""
    model = ddpm_cifar10(ch=ch)
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(rng.uniform(-1, 1, size=(batch, 32, 32, 3)).astype(np.float32))
    t = jnp.asarray(rng.integers(0, 1000, size=batch).astype(np.int32))
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x0[:1], t[:1])["params"]
    if case == "forward":
        fn, args = (lambda p, x, t: model.apply({"params": p}, x, t)), (params, x0, t)
    else:
        tx = optax.adam(2e-4)
        grad_fn = jax.value_and_grad(diffusion_loss_fn(model.apply, schedules.linear(1000)), has_aux=True)

        def fn(p, opt_state, key, x):
            (loss, _), grads = grad_fn(p, key, {"x": x}, True)
            updates, opt_state = tx.update(grads, opt_state, p)
            return optax.apply_updates(p, updates), opt_state, loss

        args = (params, jax.jit(tx.init)(params), jax.random.PRNGKey(1), x0)
    return jax.jit(fn).lower(*args).compile(), args


def profile(case: str, *, ch: int, batch: int, top: int = 10) -> dict:
    t0 = time.perf_counter()
    compiled, args = programs(case, ch=ch, batch=batch)
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    instrs, comps = parse_hlo(compiled.as_text())
    trace_dir = tempfile.mkdtemp(prefix="diffax-profile-")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        wall = time.perf_counter() - t0
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_cat, per_op = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in instrs:
            per_cat[categorize(e["name"], instrs, comps)] += e["dur"] / 1e3
            per_op[e["name"]] += e["dur"] / 1e3
    total = sum(per_cat.values())
    return dict(
        case=case, batch=batch, ch=ch, wall_ms=round(1e3 * wall, 1), op_ms=round(total, 1),
        compile_s=round(compile_s, 1),
        categories={c: dict(ms=round(per_cat[c], 1), share=round(per_cat[c] / total, 4)) for c in CATEGORIES},
        top_ops=[dict(op=n, category=categorize(n, instrs, comps), ms=round(v, 1)) for n, v in per_op.most_common(top)],
    )  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=["forward", "train"], default="train")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ch", type=int, default=128, help="base width (128 = DDPM CIFAR-10, 35,746,307 params)")
    p.add_argument("--quick", action="store_true", help="smoke: ch=32, batch 2")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.quick:
        a.ch, a.batch = 32, 2
    if a.batch < 1 or a.ch < 32 or a.ch % 32:
        raise ValueError(f"--batch must be >= 1 and --ch a multiple of 32, got batch={a.batch} ch={a.ch}")
    r = profile(a.case, ch=a.ch, batch=a.batch)
    if a.json:
        print(json.dumps(dict(meta=dict(jax=jax.__version__, backend=jax.default_backend()), **r)))
        return
    backend = f"jax {jax.__version__} {jax.default_backend()}"
    print(f"{r['case']} batch={r['batch']} ch={r['ch']}: wall {r['wall_ms']} ms, op time {r['op_ms']} ms "
          f"(summed over threads), compile {r['compile_s']} s, {backend}")
    print(f"{'category':>14} | {'ms':>9} | share")
    for c, v in r["categories"].items():
        print(f"{c:>14} | {v['ms']:9.1f} | {100 * v['share']:5.1f}%")
    print("top ops:")
    for o in r["top_ops"]:
        print(f"  {o['op']:>40} {o['category']:>14} {o['ms']:9.1f} ms")


if __name__ == "__main__":
    main()
