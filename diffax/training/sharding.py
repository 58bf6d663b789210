"""Data parallelism with `jax.jit` over a `jax.sharding.Mesh` (one code path for 1 device, N devices
and many hosts).

The mesh has one axis, 'data', over all global devices. The batch is split along its first
dimension over 'data'; parameters, optimizer state and metrics are replicated. XLA's SPMD
partitioner inserts the gradient all-reduce that `pmap` + `pmean` used to spell out, so a loss
written as a batch mean computes the GLOBAL mean and every device applies the same update.

Each process loads only its slice of the global batch (``jax.process_index()`` of
``jax.process_count()``), and `shard_batch` assembles the global array from those slices with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "batch_sharding",
    "replicated",
    "shard_batch",
    "replicate",
    "jit_train_step",
]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis 'data' over `devices` (default: all global devices, ``jax.devices()``)."""
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) == 0:
        raise ValueError("make_mesh needs at least one device, got an empty list")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over 'data', the rest replicated: ``P('data')``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array: ``P()``."""
    return NamedSharding(mesh, PartitionSpec())


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
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (global_size,) + v.shape[1:])
        for k, v in leaves.items()
    }


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """`tree` with every array replicated over `mesh` (the same value must be given on every process)."""
    return jax.device_put(tree, replicated(mesh))


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
    """``jax.jit(train_step, in_shardings=(replicated, batch), out_shardings=(replicated, replicated),
    donate_argnums=(0,))``: state replicated and donated (updated in place), batch split over 'data'.

    The returned function compiles once per (state structure, batch shape) and must be called on
    every process with its `shard_batch` output. Put the state on the mesh first
    (``state = replicate(state, mesh)``): a state still on one device has another input sharding
    than the step's output, so the second call would trace and compile again.
    """
    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(train_step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=(0,))
