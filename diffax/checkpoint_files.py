"""The plain files of a checkpoint directory beside Orbax's steps: write probe, config JSON, damaged/ moves.

A `diffax.checkpoint.Checkpointer` keeps, besides the step directories Orbax manages:

    config.json          the config of the newest finalized step (`config_as_json`, `write_config_json`,
                         `read_config_json`): a convenience copy for humans and older readers
    damaged/<step>-...   step directories found damaged, moved out of Orbax's view (`move_damaged_steps`)

and probes, when a trainer opens the directory, that a file can be created there (`check_writable`).
Nothing here calls Orbax; multi-host coordination (process 0 only, barriers) is the caller's.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Mapping

import numpy as np

from diffax._util import write_atomic

__all__ = ["CONFIG_JSON", "DAMAGED_DIR", "check_writable", "config_as_json", "write_config_json",
           "read_config_json", "move_damaged_steps"]  # fmt: skip

CONFIG_JSON = "config.json"
DAMAGED_DIR = "damaged"


def check_writable(directory: str) -> None:
    """Raises PermissionError "cannot write to <directory> (read-only?)" unless a file can be created there.

    Run when a trainer opens its checkpoints: without it a read-only directory fails only at the first
    background save, after training steps and metric rows that no checkpoint will ever hold.
    """
    probe = os.path.join(directory, f".write-test-{socket.gethostname()}-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"cannot write to {directory} (read-only?): {e.strerror or e}") from None


def config_as_json(config: Any) -> dict | None:
    """``config`` (a Mapping or an ml_collections ConfigDict) as a plain JSON-able dict; ValueError if not."""
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a dict (or ConfigDict), got {type(config).__name__}")

    def default(o):
        if isinstance(o, (np.generic, np.ndarray)):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} {o!r}")

    try:
        return json.loads(json.dumps(dict(config), default=default))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config is not JSON-serialisable: {e}") from e


def write_config_json(directory: str, config: dict) -> None:
    """Writes ``directory/config.json`` (indented, sorted keys) with `diffax._util.write_atomic`."""
    write_atomic(os.path.join(directory, CONFIG_JSON), json.dumps(config, indent=2, sort_keys=True))


def read_config_json(directory: str) -> dict | None:
    """``directory/config.json``, or None if there is none; ValueError naming the file if it is not JSON."""
    path = os.path.join(directory, CONFIG_JSON)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); it should hold the run's config") from e


def move_damaged_steps(directory: str, steps: list[int]) -> list[tuple[int, str]]:
    """Moves each step directory to ``directory/damaged/<step>-<time>`` (kept for inspection, out of the
    manager's view); returns the (step, destination) pairs."""
    dest_root = os.path.join(directory, DAMAGED_DIR)
    os.makedirs(dest_root, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for step in steps:
        dest = os.path.join(dest_root, f"{step}-{stamp}")
        os.replace(os.path.join(directory, str(int(step))), dest)
        moved.append((step, dest))
    return moved
