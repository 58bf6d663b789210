"""Drawing many samples on every device and host, resumably: `draw_samples`.

Sample i is ``sample_fn(params, key, [i])`` (a per-example sampler, `builders.per_example_sampler`), so
the result does not depend on how the indices are grouped: chunks of ``chunk`` indices are split over
the mesh's 'data' axis (every device of every process computes its share, one compiled program), and
each finished chunk is written to ``parts_dir/part-<j>.npz`` (atomically, by process 0). A restarted
run loads the parts whose fingerprint matches (same checkpoint, sampler settings, N and chunk) instead
of drawing them again, so a preempted 50k-sample run loses at most one chunk.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Callable

import jax
import numpy as np

from diffax.evaluation.sharded import all_processes, gather_rows
from diffax.training import sharding

__all__ = ["fingerprint", "draw_samples", "to_uint8"]


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (the run's config, the checkpoint step, N, chunk ...)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] -> uint8 in {0..255}: floor((x + 1) * 127.5 + 0.5), clipped (as torchvision's
    save_image, which pytorch-fid's PNGs go through)."""
    return np.clip(np.floor((np.asarray(x, np.float64) + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)


def _write_part(path: str, x: np.ndarray, fp: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, samples=x, fingerprint=np.asarray(fp))
    os.replace(tmp, path)


def _read_part(path: str, fp: str, m: int) -> np.ndarray | None:
    """The samples of a finished part, or None if it is missing, from another run, or unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as f:
            if str(f["fingerprint"]) != fp or f["samples"].shape[0] != m:
                return None
            return f["samples"]
    except (OSError, ValueError, KeyError):  # a torn or foreign file: draw the chunk again
        return None


def _sharded(sample_fn: Callable, mesh) -> Callable:
    rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
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

    ``chunk`` is rounded up to a multiple of the global device count (the last chunk is padded and trimmed,
    so one compilation serves all). With ``parts_dir``, finished chunks are saved there and reused on a
    restart when their fingerprint equals ``fp``.
    """
    from tqdm import tqdm

    mesh = sharding.make_mesh()
    ndev = mesh.devices.size
    chunk = int(math.ceil(min(chunk, num_samples) / ndev) * ndev)
    fn = _sharded(sample_fn, mesh)
    per_process = chunk // jax.process_count()
    lo_local = jax.process_index() * per_process
    if parts_dir is not None and jax.process_index() == 0:
        os.makedirs(parts_dir, exist_ok=True)
    out = []
    with tqdm(total=num_samples, desc="sample", unit="sample", disable=not progress, mininterval=2.0,
              dynamic_ncols=True) as bar:  # fmt: skip
        for j, lo in enumerate(range(0, num_samples, chunk)):
            m = min(chunk, num_samples - lo)
            path = None if parts_dir is None else os.path.join(parts_dir, f"part-{j:05d}.npz")
            done = None if path is None else _read_part(path, fp, m)
            if path is not None and not all_processes(done is not None):  # every process must agree to skip
                done = None
            if done is None:
                indices = np.arange(lo, lo + chunk, dtype=np.int32) % num_samples  # padding: repeats, trimmed
                local = indices[lo_local : lo_local + per_process]
                global_indices = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), local,
                                                                        (chunk,))  # fmt: skip
                try:
                    done = gather_rows(fn(params, key, global_indices))[:m]
                except Exception as e:  # noqa: BLE001  (XLA reports OOM as XlaRuntimeError)
                    if "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower():
                        raise MemoryError(f"out of memory drawing {chunk} samples at once: set sampling.batch_size "
                                          f"to a smaller chunk (e.g. {max(ndev, chunk // 8)})") from e  # fmt: skip
                    raise
                if path is not None and jax.process_index() == 0:
                    _write_part(path, done, fp)
            out.append(done)
            bar.update(m)
    return np.concatenate(out, axis=0)
