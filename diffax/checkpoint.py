"""Preemption-safe checkpoints: Orbax `CheckpointManager` over a `TrainState` + data position.

Layout of a checkpoint directory (``<workdir>/checkpoints``)::

    config.json          the run's config (written once, atomically; for humans and `sample`)
    <step>/state/        the TrainState pytree (Orbax `StandardSave`: params, EMA, optimizer, rng, step)
    <step>/data/         the data iterator's position, a JSON dict of ints (`Batches.get_state()`)

Atomicity: Orbax writes each step into a temporary directory and renames it into place only
when every file (and, multi-host, every process) has finished (its "finalize" step). A crash
during a save therefore leaves an unfinalized temporary directory, which `latest_step` ignores
(and which the next manager deletes), so the previous checkpoint stays the latest restorable one.

Multi-host: every process calls `save`/`restore` (Orbax coordinates the writes of sharded
arrays); only process 0 writes config.json.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


def _write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` via a temporary file + rename (never a torn file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@jax.jit
def _copy_arrays(tree: Any) -> Any:
    """A fresh device copy of every array of ``tree`` (one compiled program, not one per leaf)."""
    return jax.tree.map(jnp.copy, tree)


class Checkpointer:
    """Saves and restores ``(TrainState, data_state)`` pairs, keeping the latest ``max_to_keep``.

    Args:
      directory: where the step directories live (created if missing); made absolute.
      max_to_keep: how many of the most recent checkpoints to keep (>= 1).
      config: optional JSON-serialisable dict (e.g. ``config.to_dict()``) written to
        ``directory/config.json``.
      async_save: if True, `save` returns once the arrays are copied to host memory and writes
        in the background (call `wait` before reading the files); if False, `save` blocks.
        Async saves first take a device copy of the state, so the caller may donate its buffers
        to the next step at once.

    Example::

        ckpt = Checkpointer(f"{workdir}/checkpoints", max_to_keep=3, config=config.to_dict())
        restored = ckpt.restore_latest(state)            # None on a fresh workdir
        if restored is not None:
            state, data_state = restored
        ...
        ckpt.save(step, state, data_state=batches.get_state())
        ckpt.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        config: Mapping[str, Any] | None = None,
        async_save: bool = True,
    ):
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self._async = bool(async_save)
        options = ocp.CheckpointManagerOptions(
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        if config is not None and jax.process_index() == 0:
            _write_json_atomic(os.path.join(self.directory, "config.json"), dict(config))

    def latest_step(self) -> int | None:
        """The step of the newest finalized checkpoint, or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all finalized checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, *, data_state: Mapping[str, int], force: bool = False) -> bool:
        """Saves ``state`` (any pytree of arrays) and ``data_state`` (a JSON dict) as ``step``.

        Returns whether a save was started (Orbax skips a step it already holds unless
        ``force``). Older checkpoints beyond ``max_to_keep`` are deleted once this one is final.
        """
        step = int(step)
        if self._async:
            # A background save reads the arrays after `save` returns; the caller's next jitted step
            # may DONATE (overwrite in place) these buffers, and on CPU Orbax's "host copy" can be a
            # view of them. Saving a private device copy makes the checkpoint immune to that.
            state = _copy_arrays(state)
        if step in self._manager.all_steps():
            if not force:
                return False
            self._manager.wait_until_finished()
            self._manager.delete(step)
        return bool(
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave({k: int(v) for k, v in data_state.items()}),
                ),
                force=True,
            )
        )

    def restore(self, step: int, target_state: Any) -> tuple[Any, dict[str, int]]:
        """Restores checkpoint ``step`` into the structure, dtypes and shardings of ``target_state``.

        ``target_state`` may be concrete arrays or `jax.ShapeDtypeStruct`s (with ``.sharding``).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        try:
            restored = self._manager.restore(
                int(step),
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except ValueError as e:
            raise ValueError(
                f"checkpoint {step} in {self.directory} does not match the target state (was the model, "
                f"optimizer or data shape changed since it was saved?): {e}"
            ) from e
        return restored["state"], {k: int(v) for k, v in dict(restored["data"]).items()}

    def restore_latest(self, target_state: Any) -> tuple[Any, dict[str, int]] | None:
        """`restore` of the newest finalized checkpoint, or None on an empty directory."""
        step = self.latest_step()
        if step is None:
            return None
        return self.restore(step, target_state)

    def wait(self) -> None:
        """Blocks until any background save has been finalized."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
