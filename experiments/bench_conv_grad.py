"""3x3 convolution kernel gradients on XLA CPU: XLA's own dW convolution vs 9 shifted matmuls, side by side.

Why this exists: an earlier change (docs/performance.md, change 2) computed the U-Net's 3x3 kernel gradients
on CPU as 9 shifted matmuls (a ``jax.custom_jvp`` around ``lax.conv_general_dilated`` whose kernel tangent
is sum_{i,j} xpad[:, i:i+H, j:j+W, :] @ dk[i, j]; reverse mode transposes it into
dk[i, j] = xpad[:, i:i+H, j:j+W, :]^T g, i.e. 9 materialised shifted copies of the input and 9 matmuls).
It was measured on a heavily loaded machine; on a quiet one it made the train step slower, and
`diffax.models.layers` went back to XLA's own gradient. This script keeps the alternative so the
decision can be re-measured on any machine:

  layer   value_and_grad w.r.t. input and kernel of sum(conv(x, k) * r) at the shapes of the CIFAR-10
          U-Net's levels (batch B): 'xla' = ``lax.conv_general_dilated``, 'shifted' = the custom_jvp
  train   the whole train step of experiments/bench_vs_torch.py (ddpm_cifar10, L_simple + Adam, dropout
          on, batch B) with every 3x3 stride-1 conv built either way (``nn.Conv(conv_general_dilated=...)``)

Interleaved rounds, median / min / max ms, compile seconds separate; ratio = shifted / xla (> 1: XLA's
own kernel gradient is faster). The two kernel gradients agree to float32 rounding (max relative
difference printed).

Run:  python experiments/bench_conv_grad.py                  # layers and train step, batch 8, 5 rounds
      python experiments/bench_conv_grad.py --cases layer --json
      python experiments/bench_conv_grad.py --quick           # smoke: ch=32, batch 2, 2 rounds
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vs_torch import diffax_cases, interleaved_times  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
# (H, W, C_in, C_out) of the CIFAR-10 U-Net's 3x3 convolutions (ch=128, mult (1, 2, 2, 2)); the up path
# convolves concatenated skips (256 + 128 -> 128, 512 -> 256).
LEVELS = [(32, 32, 128, 128), (32, 32, 256, 128), (16, 16, 256, 256), (8, 8, 512, 256), (4, 4, 256, 256)]


def _conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC)


def shifted_matmul_conv(x: jax.Array, k: jax.Array) -> jax.Array:
    """y[b, h, w, o] = sum_{i, j} sum_c xpad[b, h + i, w + j, c] k[i, j, c, o] (stride 1, 'SAME'), as matmuls."""
    kh, kw = k.shape[:2]
    hh, ww = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    terms = [jnp.einsum("bhwc,co->bhwo", xp[:, i:i + hh, j:j + ww, :], k[i, j]) for i in range(kh) for j in range(kw)]
    return sum(terms[1:], terms[0])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _matmul_kernel_tangent(x, k, conv):
    return conv(x, k)


def _jvp(conv, primals, tangents):
    (x, k), (dx, dk) = primals, tangents
    y = conv(x, k)
    dy = jnp.zeros_like(y)
    if not isinstance(dx, SymbolicZero):
        dy = dy + conv(dx, k)
    if not isinstance(dk, SymbolicZero):
        dy = dy + shifted_matmul_conv(x, dk).astype(y.dtype)
    return y, dy


_matmul_kernel_tangent.defjvp(_jvp, symbolic_zeros=True)


def shifted_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                 dimension_numbers=None, feature_group_count=1, **kw) -> jax.Array:
    """``lax.conv_general_dilated`` whose kernel gradient is 9 shifted matmuls (2-D, stride 1, 'SAME', NHWC/HWIO,
    no dilation or groups; otherwise ``lax.conv_general_dilated`` itself)."""
    conv = functools.partial(lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                             feature_group_count=feature_group_count, **kw)  # fmt: skip
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    plain = all(d is None or all(v == 1 for v in d) for d in (lhs_dilation, rhs_dilation))
    if (lhs.ndim == 4 and tuple(window_strides) == (1, 1) and padding == "SAME" and plain and feature_group_count == 1
            and dimension_numbers == nhwc):
        return _matmul_kernel_tangent(lhs, rhs, conv)
    return conv(lhs, rhs)


class _ShiftedConv(nn.Conv):
    conv_general_dilated: Any = shifted_conv_general_dilated


@contextlib.contextmanager
def shifted_kernel_gradients():
    """While active, every ``nn.Conv`` diffax builds uses `shifted_conv_general_dilated`."""
    saved = nn.Conv
    nn.Conv = _ShiftedConv
    try:
        yield
    finally:
        nn.Conv = saved


def _row(case: str, times: dict, compile_s: dict, **extra) -> dict:
    x, s = times["xla"], times["shifted"]
    return dict(case=case, xla_ms=1e3 * statistics.median(x), xla_min_ms=1e3 * min(x), xla_max_ms=1e3 * max(x),
                shifted_ms=1e3 * statistics.median(s), shifted_min_ms=1e3 * min(s), shifted_max_ms=1e3 * max(s),
                ratio=statistics.median(s) / statistics.median(x), xla_compile_s=compile_s["xla"],
                shifted_compile_s=compile_s["shifted"], **extra)  # fmt: skip


def layer_rows(batch: int, repeats: int, levels=LEVELS) -> list[dict]:
    rows = []
    for hh, ww, c, o in levels:
        kx, kk, kr = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (batch, hh, ww, c))
        k = jax.random.normal(kk, (3, 3, c, o)) / (3 * c**0.5)
        r = jax.random.normal(kr, (batch, hh, ww, o))
        fns, outs, compile_s = {}, {}, {}
        for name, conv in (("xla", _conv), ("shifted", lambda a, b: _matmul_kernel_tangent(a, b, _conv))):
            t0 = time.perf_counter()
            g = jax.jit(jax.grad(lambda a, b, conv=conv: jnp.sum(conv(a, b) * r), argnums=(0, 1))).lower(x, k).compile()
            compile_s[name] = time.perf_counter() - t0
            outs[name] = g(x, k)
            fns[name] = lambda g=g: jax.block_until_ready(g(x, k))
        (gx_a, gk_a), (gx_b, gk_b) = outs["xla"], outs["shifted"]
        rel_k = float(jnp.max(jnp.abs(gk_a - gk_b)) / jnp.max(jnp.abs(gk_a)))
        rows.append(_row(f"layer {batch}x{hh}x{ww}x{c}->{o}", interleaved_times(fns, repeats), compile_s,
                         kernel_grad_max_rel_diff=rel_k, input_grad_equal=bool(jnp.array_equal(gx_a, gx_b))))
    return rows


def train_row(batch: int, ch: int, repeats: int) -> dict:
    fns, compile_s = {}, {}
    for name in ("xla", "shifted"):
        ctx = shifted_kernel_gradients() if name == "shifted" else contextlib.nullcontext()
        with ctx:
            cases, comp, _ = diffax_cases(ch=ch, batch=batch, ddim_steps=1, dtype="float32")
        fns[name], compile_s[name] = cases["train"], comp["train"]
    return _row(f"train step {batch}, ch={ch}", interleaved_times(fns, repeats), compile_s)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["layer", "train"], choices=["layer", "train"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smoke: ch=32, batch 2, 2 rounds, two layer shapes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    levels = LEVELS
    if a.quick:
        a.ch, a.batch, a.repeats, levels = 32, 2, 2, [(8, 8, 32, 32), (4, 4, 64, 32)]
    if a.batch < 1 or a.repeats < 1:
        raise ValueError(f"--batch and --repeats must be >= 1, got {a.batch}, {a.repeats}")
    rows = layer_rows(a.batch, a.repeats, levels) if "layer" in a.cases else []
    if "train" in a.cases:
        rows.append(train_row(a.batch, a.ch, a.repeats))
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), jax=jax.__version__,
                backend=jax.default_backend(), repeats=a.repeats, xla_flags=os.environ.get("XLA_FLAGS", ""))
    if a.json:
        print(json.dumps(dict(meta=meta, rows=rows)))
        return
    print(" ".join(f"{k}={v}" for k, v in meta.items()))
    print(f"{'case':>32} | {'xla ms (min-max)':>22} | {'shifted ms (min-max)':>22} | {'ratio':>5} | compile s xla/shifted")
    for r in rows:
        x = f"{r['xla_ms']:.1f} ({r['xla_min_ms']:.1f}-{r['xla_max_ms']:.1f})"
        s = f"{r['shifted_ms']:.1f} ({r['shifted_min_ms']:.1f}-{r['shifted_max_ms']:.1f})"
        print(f"{r['case']:>32} | {x:>22} | {s:>22} | {r['ratio']:5.2f} | {r['xla_compile_s']:.1f}/{r['shifted_compile_s']:.1f}")
    print("# ratio = shifted median / xla median (> 1: XLA's own kernel gradient is faster)")


if __name__ == "__main__":
    main()
