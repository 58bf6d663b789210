"""Multi-host start-up: JAX's own ``jax.distributed.initialize``.

Call `initialize` once, first thing in `main`, before any other JAX call. Every process then sees
all devices in ``jax.devices()`` and its own in ``jax.local_devices()``; ``jax.process_index()`` and
``jax.process_count()`` tell it which slice of the data to load.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax

__all__ = ["initialize", "ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID"]

ENV_COORDINATOR = "DIFFAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "DIFFAX_NUM_PROCESSES"
ENV_PROCESS_ID = "DIFFAX_PROCESS_ID"


def _int_or_none(name: str, value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _auto_cluster() -> str | None:
    """The name of a multi-process launcher JAX can auto-detect from the environment, else None."""
    env = os.environ
    if "SLURM_JOB_ID" in env and (_int_or_none("SLURM_NTASKS", env.get("SLURM_NTASKS")) or 1) > 1:
        return "slurm"
    if (_int_or_none("OMPI_COMM_WORLD_SIZE", env.get("OMPI_COMM_WORLD_SIZE")) or 1) > 1:
        return "openmpi"
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return "tpu"
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
) -> bool:
    """Start JAX's multi-process runtime if this run is multi-process; return whether it did.

    Sources, first match wins:
      1. explicit arguments (e.g. the `--coordinator_address --num_processes --process_id` flags);
      2. the environment: DIFFAX_COORDINATOR_ADDRESS ("host:port" of process 0), DIFFAX_NUM_PROCESSES,
         DIFFAX_PROCESS_ID;
      3. a launcher JAX detects by itself: SLURM with SLURM_NTASKS > 1, Open MPI with
         OMPI_COMM_WORLD_SIZE > 1, a multi-host Cloud TPU slice (TPU_WORKER_HOSTNAMES lists > 1 host).
    Otherwise (a single process) nothing is done and False is returned. With num_processes == 1 and no
    coordinator, also nothing is done. CPU collectives use gloo
    (``jax_cpu_collectives_implementation='gloo'``) so the same code runs multi-process on CPU.
    Must run before any other JAX computation. Idempotent: returns True if already initialized.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = env.get(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = env.get(ENV_PROCESS_ID)
    num_processes = _int_or_none("num_processes", num_processes)
    process_id = _int_or_none("process_id", process_id)

    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if explicit:
        if num_processes is not None and num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {num_processes}")
        if num_processes == 1 and coordinator_address is None:
            return False
        missing = [n for n, v in [("coordinator_address", coordinator_address), ("num_processes", num_processes),
                                  ("process_id", process_id)] if v is None]  # fmt: skip
        if missing and _auto_cluster() is None:
            raise ValueError(
                f"multi-process run needs coordinator_address, num_processes and process_id (flags or "
                f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}); missing {missing}"
            )
        if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    elif _auto_cluster() is None:
        return False

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    return True
