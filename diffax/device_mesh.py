"""The device mesh: one 'data' axis over every device of every process, and arrays split by rows over it.

One code path for 1 device, N devices and many hosts, used by training and evaluation alike. The mesh
(`make_mesh`) has one axis, 'data', over all global devices. An array's rows (axis 0: a batch's
examples, the indices of samples to draw, the images to score) are split over 'data' (`row_sharding`);
parameters, optimizer state, keys and metrics are replicated (`replicated`, `replicate`). Under
`jax.jit` with these shardings XLA's SPMD partitioner inserts the all-reduces, so a batch mean computes
the GLOBAL mean.

Two ways to put rows on the mesh:

- `shard_batch`: each process passes only its own slice of the batch (training: process p loads its
  ``b_local`` examples) and the global array is assembled with ``jax.make_array_from_process_local_data``.
- `put_rows`: every process holds the same full host array (the test split, the samples) and builds only
  the shards its devices hold. B is a multiple of the device count (`global_batch_size`); the last batch
  is zero-padded (`diffax.evaluation.batching.pad_to`) so one compilation serves any N.

`gather_rows` brings a row-split result back to every process; `all_processes` ANDs a flag over processes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
DATA_AXIS = "data"

__all__ = ["DATA_AXIS", "make_mesh", "row_sharding", "replicated", "replicate", "shard_batch", "put_rows",
           "gather_rows", "global_batch_size", "all_processes"]  # fmt: skip


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis 'data' over `devices` (default: all global devices, ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) == 0:
        raise ValueError("make_mesh needs at least one device, got an empty list")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def row_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (axis 0) split over the mesh's 'data' axis, the other axes replicated: ``P('data')``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array: ``P()``."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """`tree` with every array on every device of `mesh` (the same values must be given on every process)."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(local_batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch arrays from this process's slice of the batch.

    Every process passes its own ``b_local`` examples (all leaves sharing that leading size); the
    global batch is ``B = b_local * jax.process_count()``, laid out in process order, and is split over
    the mesh's devices. Raises ValueError if B is not divisible by the number of devices of `mesh`
    (naming both) or if the leaves disagree on their leading size.
    """
    leaves = {k: np.asarray(v) for k, v in local_batch.items()}
    if not leaves:
        raise ValueError("shard_batch got an empty batch")
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in leaves.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"every batch entry must share the leading (batch) size; got sizes {sizes}")
    local_size = next(iter(sizes.values()))
    global_size = local_size * jax.process_count()
    num_devices = mesh.devices.size
    if global_size % num_devices:
        raise ValueError(
            f"global batch size {global_size} (= {local_size} per process x {jax.process_count()} processes) "
            f"is not divisible by the number of devices {num_devices}; use a batch size that is a "
            f"multiple of {num_devices}"
        )
    sharding = row_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_size,) + v.shape[1:])
        for k, v in leaves.items()
    }


def put_rows(rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """The global array of ``rows`` (the same full host array on every process), rows split over the mesh."""
    rows = np.asarray(rows)
    return jax.make_array_from_callback(rows.shape, row_sharding(mesh), lambda index: rows[index])


def gather_rows(x: jax.Array) -> np.ndarray:
    """A row-sharded global array as one host array on every process."""
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_batch_size(batch_size: int, num_rows: int, mesh: Mesh) -> int:
    """min(batch_size, num_rows) rounded up to a multiple of the mesh's device count."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if num_rows < 1:
        raise ValueError(f"need at least one row to evaluate, got {num_rows}")
    ndev = mesh.devices.size
    return int(math.ceil(min(batch_size, num_rows) / ndev) * ndev)


def all_processes(flag: bool) -> bool:
    """True when ``flag`` is True on every process (each process may see a shared file system differently)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))
