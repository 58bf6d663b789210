"""Preemption-safe, verified checkpoints: Orbax `CheckpointManager` over a `TrainState` + data position.

Layout of a checkpoint directory (``<workdir>/checkpoints``)::

    <step>/state/        the TrainState pytree (Orbax `StandardSave`: params, EMA, optimizer, step, ...)
    <step>/data/         the data iterator's position, a JSON dict of ints (`Batches.get_state()`)
    <step>/checksums/    the step's checksum record (`diffax.checkpoint_integrity`)
    <step>/config/       the run's config this step was trained with (JSON), when one was given
    config.json          the config of the newest finalized step, written once it is final
    damaged/<step>-...   steps found damaged by `restore_latest_intact` (`diffax.checkpoint_files`)

Atomicity: Orbax writes each step (all four items) into a temporary directory
(``<step>.orbax-checkpoint-tmp`` in Orbax 0.12) and renames it into place only when every file (and,
multi-host, every process) has finished (its "finalize" step). A crash during a save therefore leaves an
unfinalized temporary directory, which `latest_step` ignores (and which the next WRITING manager deletes),
so the previous checkpoint stays the latest restorable one; the step's config and checksums are final
together with its arrays.

Readers (``read_only=True``: sampling, evaluation, `restore_ema`) never create, delete, move or write
anything in the directory (a temporary directory may be a live trainer's save in flight; only the trainer,
the workdir lock's holder, cleans up); they list finalized steps only, and list again when the trainer's
keep-last-K deletes the step being read.

Integrity: `save` records the digests of the state's arrays, the data position and the config; `restore`
checks them and raises `CheckpointDamagedError` naming the step and the array or item;
`restore_latest_intact` falls back to the newest intact step (`read_config`, to the newest step whose
config is intact) and moves the damaged newer ones to ``damaged/``. A target whose tree paths or shapes
differ from the saved ones is refused before reading (`diffax.checkpoint_layout`).

Multi-host: every process calls `save`/`restore` (Orbax coordinates the writes of sharded arrays) and
computes the same checksum record. Only process 0 writes config.json and moves damaged steps.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from diffax.checkpoint_files import (check_writable, config_as_json, move_damaged_steps, read_config_json,
                                     write_config_json)  # fmt: skip
from diffax.checkpoint_integrity import (CHECKSUM_ALGORITHM, CheckpointDamagedError, check_arrays, check_json_item,
                                         checksum_record, unreadable_reason)  # fmt: skip
from diffax.checkpoint_layout import restore_target, saved_abstract_state, saved_layout
from diffax.orbax_noise import silence_abandoned_orbax_reads

__all__ = ["Checkpointer"]

logger = logging.getLogger(__name__)

_ITEMS = ("state", "data", "checksums", "config")
_LISTING_TRIES = 5


def _vanished_step(e: FileNotFoundError, directory: str) -> bool:
    """Whether ``e`` is a step directory of ``directory`` that no longer exists (deleted under a listing)."""
    missing = os.path.abspath(os.fspath(e.filename)) if e.filename else ""
    return os.path.dirname(missing) == directory or os.path.dirname(os.path.dirname(missing)) == directory


def _listed(directory: str, list_steps) -> Any:
    """``list_steps()`` (Orbax listing the step directories, then reading each one's metadata and mtime),
    listed again when a step vanished between the two: a trainer's keep-last-K deleting an old step while a
    reader opens the run is normal use, not an error (up to `_LISTING_TRIES` listings)."""
    for attempt in range(_LISTING_TRIES):
        try:
            return list_steps()
        except FileNotFoundError as e:
            if not _vanished_step(e, directory) or attempt == _LISTING_TRIES - 1:
                raise
            logger.info("checkpoint %s was deleted while the steps were listed; listing again", e.filename)


@jax.jit
def _copy_arrays(tree: Any) -> Any:
    """A fresh device copy of every array of ``tree`` (one compiled program, not one per leaf)."""
    return jax.tree.map(jnp.copy, tree)


class Checkpointer:
    """Saves and restores ``(TrainState, data_state)`` pairs with their config and checksums.

    Keeps the latest ``max_to_keep`` steps.

    Args:
      directory: where the step directories live (created if missing); made absolute.
      max_to_keep: how many of the most recent checkpoints to keep (>= 1).
      config: optional JSON-serialisable dict (or ConfigDict): the default config of every `save` (saved
        inside each step and copied to ``directory/config.json`` once that step is final). Accepted for
        compatibility; unlike before, nothing is written at construction (only the directory is created if
        missing), so opening a run's checkpoints never changes its record.
      async_save: if True, `save` returns once the arrays are copied and writes in the background (call
        `wait` before reading the files); if False, `save` blocks. Async saves first take a device copy of
        the state, so the caller may donate its buffers to the next step at once.
      read_only: a reader (sampling, evaluation) of a run a trainer may be writing at the same moment: the
        directory must exist; nothing in it is created, deleted, moved or written (no clean-up of temporary
        directories, which may be a live save; damaged steps are skipped, not moved; `save` is refused).
        Otherwise (a trainer) the directory is checked to be writable at once: PermissionError
        "cannot write to <directory> (read-only?)".

    Example::

        ckpt = Checkpointer(f"{workdir}/checkpoints", max_to_keep=3)
        restored = ckpt.restore_latest_intact(state)     # None on a fresh workdir
        if restored is not None:
            state, data_state, step = restored
        ...
        ckpt.save(step, state, data_state=batches.get_state(), config=config.to_dict())
        ckpt.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        config: Mapping[str, Any] | None = None,
        async_save: bool = True,
        read_only: bool = False,
    ):
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.read_only = bool(read_only)
        self._async = bool(async_save) and not self.read_only
        self._default_config = config_as_json(config)
        self._pending_config: tuple[int, dict] | None = None  # (step, config) awaiting finalization
        if self.read_only:
            if not os.path.isdir(self.directory):
                raise FileNotFoundError(f"no checkpoint directory {self.directory}")
            # Not Orbax's own read_only option: it logs a warning per manager (several per `--mode=sample`);
            # these two are the only writes Orbax makes without a save or delete, which a reader never calls.
            options = ocp.CheckpointManagerOptions(create=False, cleanup_tmp_directories=False,
                                                   enable_async_checkpointing=False)  # fmt: skip
        else:
            try:
                os.makedirs(self.directory, exist_ok=True)
            except OSError as e:
                raise PermissionError(f"cannot write to {self.directory} (read-only?): {e.strerror or e}") from None
            check_writable(self.directory)
            options = ocp.CheckpointManagerOptions(
                create=True,
                cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save,
                preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
            )
        self._manager = _listed(self.directory, lambda: ocp.CheckpointManager(self.directory, options=options))

    # ------------------------------------------------------------------------------------------ listing
    def latest_step(self) -> int | None:
        """The step of the newest finalized checkpoint, or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all finalized checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(int(step)))

    def _items(self, step: int) -> set[str]:
        """Which items (state, data, checksums, config) step ``step`` holds on disk."""
        d = self._step_dir(step)
        return {name for name in _ITEMS if os.path.isdir(os.path.join(d, name))}

    def _check_step(self, step: int) -> int:
        step = int(step)
        if step not in self._manager.all_steps():
            raise ValueError(f"no finalized checkpoint {step} in {self.directory}; available steps: {self.all_steps()}")
        return step

    # --------------------------------------------------------------------------------------------- save
    def save(
        self,
        step: int,
        state: Any,
        *,
        data_state: Mapping[str, int],
        config: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` (a pytree of arrays), ``data_state`` (a JSON dict), ``config`` and checksums as ``step``.

        ``config`` defaults to the constructor's. Returns whether a save was started (Orbax skips a step it
        already holds unless ``force``). Older checkpoints beyond ``max_to_keep`` are deleted once this one
        is final; config.json is updated once this one is final (at the next `save`, `wait` or `close`).
        """
        if self.read_only:
            raise RuntimeError(f"a read-only Checkpointer of {self.directory} cannot save")
        step = int(step)
        config = self._default_config if config is None else config_as_json(config)
        self._manager.wait_until_finished()  # Orbax's save waits for the previous one anyway
        self._flush_config()
        if step in self._manager.all_steps():
            if not force:
                return False
            self._manager.delete(step)
        if self._async:
            # A background save reads the arrays after `save` returns; the caller's next jitted step
            # may DONATE (overwrite in place) these buffers, and on CPU Orbax's "host copy" can be a
            # view of them. Saving a private device copy makes the checkpoint immune to that. The
            # checksums are computed from the same copy, i.e. from exactly the values Orbax writes.
            state = _copy_arrays(state)
        data_state = {k: int(v) for k, v in data_state.items()}
        record = checksum_record(step, state, data_state, config)
        items = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave(data_state),
            "checksums": ocp.args.JsonSave(record),
        }
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        started = bool(self._manager.save(step, args=ocp.args.Composite(**items), force=True))
        if started and config is not None:
            self._pending_config = (step, config)
        return started

    def _flush_config(self) -> None:
        """Writes config.json for the pending step once it is finalized (process 0 only)."""
        if self._pending_config is None:
            return
        step, config = self._pending_config
        if step not in self._manager.all_steps() or self._manager.is_saving_in_progress():
            return
        self._pending_config = None
        if jax.process_index() == 0 and step == self.latest_step():
            write_config_json(self.directory, config)

    # ------------------------------------------------------------------------------------------ restore
    def _restore_json(self, step: int, name: str) -> Any:
        restored = self._manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
        return restored[name]

    def read_checksums(self, step: int) -> dict | None:
        """The checksum record saved with ``step`` ({"algorithm", "arrays"}), or None for an older checkpoint
        saved without one. Raises `CheckpointDamagedError` if the record is unreadable."""
        step = self._check_step(step)
        if "checksums" not in self._items(step):
            return None
        try:
            record = self._restore_json(step, "checksums")
            if record.get("algorithm") != CHECKSUM_ALGORITHM or not isinstance(record.get("arrays"), dict):
                raise ValueError(f"unknown checksum record (algorithm {record.get('algorithm')!r})")
        except Exception as e:  # noqa: BLE001 - any failure to read the record means the step is damaged
            raise CheckpointDamagedError(step, self.directory, f"checksum record {unreadable_reason(e)}") from e
        if record.get("step", step) != step:
            raise CheckpointDamagedError(step, self.directory, f"checksum record of step {record['step']!r}")
        return record

    def _step_config(self, step: int, record: dict | None) -> dict | None:
        """The config saved with ``step``, checked against ``record``; None for a step saved without one."""
        if "config" not in self._items(step):
            if (record or {}).get("items", {}).get("config") is not None:
                raise CheckpointDamagedError(step, self.directory, "missing (its checksum is saved)", array="config")
            return None
        try:
            config = self._restore_json(step, "config")
        except Exception as e:  # noqa: BLE001
            raise CheckpointDamagedError(step, self.directory, f"config {unreadable_reason(e)}") from e
        check_json_item(step, self.directory, record, "config", config)
        return dict(config)

    def read_config(self, step: int | None = None) -> dict | None:
        """The config saved with ``step``, checked against the step's checksum record (raises
        `CheckpointDamagedError` if it is unreadable or differs); if ``step`` is None, that of the newest
        step whose config is intact (the damaged ones are skipped, as `restore_latest_intact` does).

        Falls back to ``config.json`` for checkpoints saved without one (older runs) and when there is no
        checkpoint (or no intact config); None if neither exists.
        """
        steps = sorted(self._manager.all_steps(), reverse=True) if step is None else [self._check_step(step)]
        for s in steps:
            try:
                config = self._step_config(s, self.read_checksums(s))
            except CheckpointDamagedError as e:
                if step is not None:
                    raise
                logger.info("%s; reading the config of an older step", e)
                continue
            if config is not None:
                return config
            break  # an older run's step without a config: its config.json
        return read_config_json(self.directory)

    def restore(self, step: int, target_state: Any, *, verify: bool = True) -> tuple[Any, dict[str, int]]:
        """Restores checkpoint ``step`` into the structure, dtypes and shardings of ``target_state``.

        ``target_state`` may be concrete arrays or `jax.ShapeDtypeStruct`s (with ``.sharding``). With
        ``verify`` (default) every array's digest, the data position's and the config's are checked against
        the step's record (older checkpoints without a record, or without an item's digest, are restored with
        those unchecked). Raises `CheckpointDamagedError` (a ValueError) naming the step, and the array or
        item where one is to blame, on a digest mismatch or an unreadable file; a plain ValueError if the
        target's paths or shapes differ from what was saved.
        """
        step = self._check_step(step)
        silence_abandoned_orbax_reads()  # a damaged step's abandoned reads are reported, even before it raises
        try:
            record = self.read_checksums(step)
        except CheckpointDamagedError:
            if verify:
                raise
            record = None
        layout = saved_layout(step, self.directory, record)
        restore_as, target = restore_target(step, self.directory, target_state, layout)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(restore_as), data=ocp.args.JsonRestore()),
            )
            data = dict(restored["data"])
            data_state = {k: int(v) for k, v in data.items()}
        except Exception as e:  # noqa: BLE001 - the layout matched, so a failure to read is damage
            raise CheckpointDamagedError(step, self.directory, unreadable_reason(e)) from e
        state = restored["state"]
        if verify and record is not None:
            check_json_item(step, self.directory, record, "data", data)
            self._step_config(step, record)  # a step is intact only with its config
            check_arrays(step, self.directory, state, record)
        state = jax.tree.map(lambda x, t: x if x.dtype == t.dtype else x.astype(t.dtype), state, target)
        return state, data_state

    def verify(self, step: int, target_state: Any | None = None) -> bool:
        """Reads every array of ``step`` and checks it against its saved digest.

        Returns True if verified, False for an older checkpoint saved without checksums (readable, but
        unverifiable); raises `CheckpointDamagedError` if damaged. Without ``target_state`` the arrays are
        read onto this process's first device in their saved shapes and dtypes.
        """
        step = self._check_step(step)
        record = self.read_checksums(step)
        if target_state is None:
            target_state = saved_abstract_state(self._step_dir(step))
        self.restore(step, target_state, verify=True)
        return record is not None

    def restore_latest(self, target_state: Any) -> tuple[Any, dict[str, int]] | None:
        """`restore` of the newest finalized checkpoint, or None on an empty directory.

        Raises `CheckpointDamagedError` if it is damaged; see `restore_latest_intact` for the fallback.
        """
        step = self.latest_step()
        if step is None:
            return None
        return self.restore(step, target_state)

    def restore_latest_intact(
        self, target_state: Any, *, quarantine: bool = True
    ) -> tuple[Any, dict[str, int], int] | None:
        """``(state, data_state, step)`` of the newest checkpoint that restores and verifies; None if none exist.

        A damaged step is logged ("checkpoint 20 is damaged (params/w: ...); falling back to step 15") and
        the next older one tried. If an intact step is found and ``quarantine`` (never for a read-only
        Checkpointer), the newer damaged steps are moved to ``directory/damaged/`` (so that training from
        the older step can save those step numbers again; the files are kept for inspection). If every step
        is damaged, raises a ValueError listing them and what was wrong, and changes no file. A target
        mismatch (not damage) is raised at once. A step that disappears while it is read (a trainer's
        keep-last-K deleted it under a reader) is not damage: the steps are listed again (up to 3 times).
        """
        for _ in range(3):
            try:
                return self._restore_newest_intact(target_state, quarantine and not self.read_only)
            except CheckpointDamagedError as e:  # only raised for a vanished step
                logger.info("checkpoint %d was deleted while it was read; listing the steps again", e.step)
                _listed(self.directory, self._manager.reload)
        return self._restore_newest_intact(target_state, quarantine and not self.read_only)

    def _restore_newest_intact(self, target_state: Any, quarantine: bool) -> tuple[Any, dict[str, int], int] | None:
        """`restore_latest_intact` over the steps listed now; raises the CheckpointDamagedError of a step
        whose directory is gone after a failed read (deleted meanwhile, not damaged)."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        damaged: list[CheckpointDamagedError] = []
        for i, step in enumerate(steps):
            try:
                state, data_state = self.restore(step, target_state)
            except CheckpointDamagedError as e:
                if not os.path.isdir(self._step_dir(step)):
                    raise
                damaged.append(e)
                nxt = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "no older checkpoint"
                where = f"{e.array}: " if e.array else ""
                logger.warning("checkpoint %d is damaged (%s%s); %s", step, where, e.reason, nxt)
                continue
            if damaged and quarantine:
                self._quarantine([e.step for e in damaged])
            return state, data_state, step
        listing = "; ".join(f"step {e.step}: {(e.array + ': ') if e.array else ''}{e.reason}" for e in damaged)
        raise ValueError(
            f"no intact checkpoint in {self.directory}: every step is damaged ({listing}). Delete the "
            f"directory to start over, or restore a copy of it."
        ) from damaged[-1]

    def _quarantine(self, steps: list[int]) -> None:
        """Moves the given step directories to ``directory/damaged/<step>-<time>`` and reloads the manager."""
        if self.read_only:
            raise RuntimeError(f"a read-only Checkpointer of {self.directory} cannot move damaged steps")
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            for step, dest in move_damaged_steps(self.directory, steps):
                logger.warning("moved damaged checkpoint %d to %s", step, dest)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("diffax_checkpoint_quarantine")
        _listed(self.directory, self._manager.reload)

    # ---------------------------------------------------------------------------------------- lifecycle
    def wait(self) -> None:
        """Blocks until any background save has been finalized (then updates config.json)."""
        self._manager.wait_until_finished()
        self._flush_config()

    def close(self) -> None:
        """Waits for pending saves (and Orbax's clean-up of torn saves), updates config.json, releases the manager."""
        self._manager.wait_until_finished()
        self._flush_config()
        # A writing manager's constructor deletes earlier runs' unfinalized temporary dirs in a background
        # thread; a trainer that exits without saving (e.g. a run already at num_steps) would exit while it
        # runs and print "cannot schedule new futures after interpreter shutdown". Orbax 0.12.8 has no public
        # way to await it: only `save` does, through this private method (`wait_until_finished` awaits the
        # save-finalize thread, `close` neither). Guarded, so an Orbax without it skips the wait; a reader
        # never starts the clean-up (cleanup_tmp_directories=False), so this is a no-op there.
        getattr(self._manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
