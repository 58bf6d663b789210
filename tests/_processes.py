"""Helpers for tests that start `python -m diffax.main` or a worker in fresh processes."""

from __future__ import annotations

import os
import socket

from diffax.training import distributed


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(num_devices: int = 1) -> dict:
    """This process's environment for a child on the CPU with `num_devices` forced host devices, float32,
    and none of the DIFFAX_* multi-host settings (the child gets them from flags)."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}", JAX_PLATFORMS="cpu")
    for k in ("JAX_ENABLE_X64", distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        env.pop(k, None)
    return env
