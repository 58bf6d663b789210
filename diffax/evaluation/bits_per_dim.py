"""Test-split bits/dim of the full variational bound, per image, over every device and process.

Image i's bound is `diffax.likelihood.vlb_bpd` on that image alone with the noise of ``fold_in(key, i)``
(every term L_0 ... L_{T-1} plus the prior L_T, improved-diffusion's ``calc_bpd_loop``; Ho et al. 2020,
eq. 5), so a number does not depend on the batch size, the device count or the process count. The
images' rows are split over the caller's mesh (`diffax.device_mesh.make_mesh`) with `put_rows`, one
jitted program scores a global batch, and `gather_rows` brings the per-image terms back to every process.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from diffax import likelihood
from diffax.device_mesh import gather_rows, global_batch_size, put_rows, replicate, replicated, row_sharding
from diffax.evaluation.batching import pad_to
from diffax.schedules import Schedule

__all__ = ["sharded_bits_per_dim"]


@functools.lru_cache(maxsize=16)
def _bpd_program(apply_fn: Callable, mean_type: str, var_type: str, mesh: Mesh) -> Callable:
    """jit of (params, schedule, key, indices, x0, labels) -> per-image (total, prior, L_0), rows over the mesh
    (cached, so repeated calls with the same shapes compile once)."""
    rows, rep = row_sharding(mesh), replicated(mesh)

    def one(p, s, k, x, y):
        def model_fn(x_t, t):
            return apply_fn({"params": p}, x_t, t, y=None if y is None else y[None], train=False)

        out = likelihood.vlb_bpd(model_fn, s, k, x[None], mean_type=mean_type, var_type=var_type)
        return out["total"][0], out["prior"][0], out["terms"][0, 0]

    def batch(p, s, k, idx, x, y):
        keys = jax.vmap(jax.random.fold_in, (None, 0))(k, idx)
        return jax.vmap(one, in_axes=(None, None, 0, 0, 0))(p, s, keys, x, y)

    return jax.jit(batch, in_shardings=(rep, rep, rep, rows, rows, rows), out_shardings=(rows, rows, rows))


def sharded_bits_per_dim(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    schedule: Schedule,
    x0: np.ndarray,
    key: jax.Array,
    mesh: Mesh,
    *,
    labels: np.ndarray | None = None,
    batch_size: int = 64,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    progress: bool = False,
) -> dict[str, Any]:
    """Bits/dim of the full VLB of each of the N images ``x0`` (float, [-1, 1] on the 8-bit grid), over the mesh.

    Image i's bound is ``likelihood.vlb_bpd(model_fn, schedule, fold_in(key, i), x0[i:i+1])`` (every term
    L_0 ... L_{T-1} plus L_T, improved-diffusion's calc_bpd_loop; Ho et al. 2020, eq. 5), vmapped over a
    global batch of ``batch_size`` images (rounded up to a multiple of the device count) whose rows are
    split over the mesh. Its noise depends only on (key, i), so the numbers do not depend on the device
    count, the process count or the batch size. ``labels``: None, or per-image classes (pass the null
    class for a class-conditional model's unconditional likelihood).

    Returns dict(bpd (mean total), bpd_stderr (sd / sqrt(N)), prior_bpd, decoder_bpd (L_0), num_examples,
    per_example (the N totals)), on every process.
    """
    x0 = np.asarray(x0, np.float32)
    n = len(x0)
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} images")
    b = global_batch_size(batch_size, n, mesh)
    fn = _bpd_program(apply_fn, mean_type, var_type, mesh)
    params_on_mesh, schedule_on_mesh, key_on_mesh = replicate((params, schedule, key), mesh)
    labels = None if labels is None else np.asarray(labels, np.int32)
    outs: list[list[np.ndarray]] = [[], [], []]
    for lo in tqdm(range(0, n, b), desc="bits/dim", unit="batch", disable=not progress, mininterval=5.0):
        m = min(b, n - lo)
        idx = put_rows(pad_to(np.arange(lo, lo + m, dtype=np.int32), b), mesh)
        xb = put_rows(pad_to(x0[lo : lo + m], b), mesh)
        yb = None if labels is None else put_rows(pad_to(labels[lo : lo + m], b), mesh)
        for acc, value in zip(outs, fn(params_on_mesh, schedule_on_mesh, key_on_mesh, idx, xb, yb)):
            acc.append(gather_rows(value)[:m])
    totals, priors, decoders = (np.concatenate(o).astype(np.float64) for o in outs)
    return {
        "bpd": float(np.mean(totals)),
        "bpd_stderr": float(np.std(totals, ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "prior_bpd": float(np.mean(priors)),
        "decoder_bpd": float(np.mean(decoders)),
        "num_examples": int(n),
        "per_example": totals.tolist(),
    }
