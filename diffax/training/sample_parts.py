"""Drawing many samples on every device and host, resumably, in parts on disk: `draw_samples`.

Sample i is ``sample_fn(params, key, [i])`` (a per-example sampler, `sampler_builders.per_example_sampler`), so
which chunk, device or process draws it does not matter (up to float rounding, see README). The indices
still to draw are taken ``chunk`` at a time and split over the mesh's 'data' axis (every device of every
process computes its share, one compiled program per chunk size); each finished chunk is checked to be
finite and written, by process 0 and atomically, to ``parts_dir/part-<fp>-<first>-<last>.npz`` with the
global indices it holds. A restarted run, on any device count, process count or chunk size, reads every
intact part of its fingerprint ``fp``, takes each index from the first part that holds it, and draws only
the indices no part holds: a preempted 50k-sample run loses at most one chunk. A part that cannot be
read is drawn again, with a warning naming it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffax import device_mesh
from diffax._util import npz_bytes, write_atomic

__all__ = ["fingerprint", "draw_samples", "write_part", "read_parts"]

logger = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (the run's config, the checkpoint step, N ...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_part(parts_dir: str, fp: str, indices: np.ndarray, x: np.ndarray) -> None:
    """Writes ``parts_dir/part-<fp>-<first>-<last>.npz`` atomically (`write_atomic`): samples x of the global
    ``indices`` (ascending, not always contiguous: a resumed run fills the gaps of earlier parts), and fp."""
    write_atomic(os.path.join(parts_dir, f"part-{fp}-{indices[0]:07d}-{indices[-1]:07d}.npz"),
                 npz_bytes(samples=x, indices=indices.astype(np.int64), fingerprint=np.asarray(fp)))


def _read_part(path: str, fp: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, samples) of a part of fingerprint fp; raises ValueError saying why it cannot be used."""
    try:
        with np.load(path) as f:
            got, indices, x = str(f["fingerprint"]), f["indices"], f["samples"]
    except Exception as e:  # noqa: BLE001  (a torn or damaged zip raises BadZipFile, EOFError, KeyError, ...)
        raise ValueError(f"{type(e).__name__}: {e}") from e
    if got != fp:
        raise ValueError(f"fingerprint {got!r} is not this run's {fp!r}")
    if indices.ndim != 1 or indices.dtype.kind not in "iu" or x.shape[:1] != indices.shape:
        raise ValueError(f"indices {indices.shape} {indices.dtype} do not fit samples {x.shape}")
    if indices.size == 0 or indices.min() < 0 or indices.max() >= n:
        raise ValueError(f"indices outside 0..{n - 1}")
    if not np.all(np.isfinite(x)):
        raise ValueError("non-finite samples")
    return indices, x


def read_parts(parts_dir: str, fp: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(have (n,) bool, rows (n, ...) or None): every index of 0..n-1 held by an intact part of fingerprint
    fp in ``parts_dir``, each taken from the first such part (in name order) that holds it. A part that
    cannot be used (unreadable, another fingerprint, indices outside 0..n-1, non-finite samples, another
    sample shape or dtype than the parts before it) is skipped with a warning naming it; nothing raises."""
    have, rows = np.zeros(n, bool), None
    for path in sorted(glob.glob(os.path.join(glob.escape(parts_dir), f"part-{fp}-*.npz"))):
        try:
            indices, x = _read_part(path, fp, n)
            if rows is not None and (x.shape[1:] != rows.shape[1:] or x.dtype != rows.dtype):
                raise ValueError(f"samples {x.shape[1:]} {x.dtype}, other parts {rows.shape[1:]} {rows.dtype}")
        except ValueError as e:
            logger.warning("sample part %s cannot be used (%s): its samples are drawn again", path, e)
            continue
        if rows is None:
            rows = np.zeros((n, *x.shape[1:]), x.dtype)
        new = ~have[indices]
        rows[indices[new]] = x[new]
        have[indices[new]] = True
    return have, rows


def _on_every_process(have: np.ndarray) -> np.ndarray:
    """have AND-ed over processes: an index is reused only if every process could read it."""
    if jax.process_count() == 1:
        return have
    return np.all(multihost_utils.process_allgather(have), axis=0)


def _sharded(sample_fn: Callable, mesh) -> Callable:
    rep, data = device_mesh.replicated(mesh), device_mesh.row_sharding(mesh)
    return jax.jit(sample_fn, in_shardings=(rep, rep, data), out_shardings=data)


def draw_samples(
    sample_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
    params: Any,
    key: jax.Array,
    num_samples: int,
    chunk: int,
    *,
    parts_dir: str | None = None,
    fp: str = "",
    progress: bool = True,
) -> np.ndarray:
    """Samples 0..num_samples-1 of ``sample_fn(params, key, indices)``, as one numpy array on every process.

    ``chunk`` is rounded up to a multiple of the global device count (a short last chunk is padded with
    repeats of its last index and trimmed, so one compilation serves all). With ``parts_dir``, the indices
    held by parts of fingerprint ``fp`` are reused and each drawn chunk is saved as a part. Raises
    FloatingPointError on a chunk with a non-finite value, before its part is written.
    """
    from tqdm import tqdm

    mesh = device_mesh.make_mesh()
    ndev = mesh.devices.size
    chunk = int(math.ceil(min(chunk, num_samples) / ndev) * ndev)
    per_process = chunk // jax.process_count()
    lo_local = jax.process_index() * per_process
    have, rows = np.zeros(num_samples, bool), None
    if parts_dir is not None:
        if jax.process_index() == 0:
            os.makedirs(parts_dir, exist_ok=True)
        have, rows = read_parts(parts_dir, fp, num_samples)
        have = _on_every_process(have)
    missing = np.flatnonzero(~have)
    fn = _sharded(sample_fn, mesh) if missing.size else None
    with tqdm(total=num_samples, initial=int(have.sum()), desc="sample", unit="sample", disable=not progress,
              mininterval=2.0, dynamic_ncols=True) as bar:  # fmt: skip
        for lo in range(0, missing.size, chunk):
            todo = missing[lo : lo + chunk]
            indices = np.concatenate([todo, np.full(chunk - todo.size, todo[-1])]).astype(np.int32)
            global_indices = jax.make_array_from_process_local_data(
                device_mesh.row_sharding(mesh), indices[lo_local : lo_local + per_process], (chunk,))  # fmt: skip
            try:
                x = device_mesh.gather_rows(fn(params, key, global_indices))[: todo.size]
            except Exception as e:  # noqa: BLE001  (XLA reports OOM as XlaRuntimeError)
                if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
                    raise MemoryError(f"out of memory drawing {chunk} samples at once: set sampling.batch_size "
                                      f"to a smaller chunk (e.g. {max(ndev, chunk // 8)})") from e  # fmt: skip
                raise
            if not np.all(np.isfinite(x)):
                raise FloatingPointError(f"{int(np.sum(~np.isfinite(x)))} non-finite values in samples "
                                         f"{todo[0]}..{todo[-1]} (not written)")  # fmt: skip
            if parts_dir is not None and jax.process_index() == 0:
                write_part(parts_dir, fp, todo, x)
            if rows is None:
                rows = np.zeros((num_samples, *x.shape[1:]), x.dtype)
            rows[todo] = x
            bar.update(todo.size)
    return rows
