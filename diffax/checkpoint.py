"""Preemption-safe, verified checkpoints: Orbax `CheckpointManager` over a `TrainState` + data position.

Layout of a checkpoint directory (``<workdir>/checkpoints``)::

    config.json          the config of the newest finalized checkpoint (a convenience copy for humans and
                         older readers; written atomically, and only after a checkpoint saved with it is final)
    <step>/state/        the TrainState pytree (Orbax `StandardSave`: params, EMA, optimizer, step, ...)
    <step>/data/         the data iterator's position, a JSON dict of ints (`Batches.get_state()`)
    <step>/checksums/    {"algorithm": "sha256", "arrays": {tree path: {"shape", "dtype", "sha256"}}} of the state
    <step>/config/       the run's config this step was trained with (JSON), when one was given
    damaged/<step>-...   steps found damaged by `restore_latest_intact` and moved out of the manager's view

Atomicity: Orbax writes each step (all four items) into a temporary directory and renames it into place
only when every file (and, multi-host, every process) has finished (its "finalize" step). A crash during
a save therefore leaves an unfinalized temporary directory, which `latest_step` ignores (and which the
next manager deletes), so the previous checkpoint stays the latest restorable one. The step's config
and checksums are items of the same step, so they are final together with its arrays.

Integrity: Orbax/TensorStore detect a truncated or unreadable file, but NOT a flipped bit in an array
chunk (it decodes to different numbers). So `save` records the sha256 of every array's bytes
(`tree_checksums`, computed on the host from the exact values handed to Orbax, also for async saves) and
`restore` recomputes it on the restored arrays and raises `CheckpointDamagedError` naming the step and the
array on a mismatch. `restore_latest_intact` falls back to the newest intact step. Cost: one extra
device-to-host copy of the state per save and per restore, and sha256 at ~0.5-1 GB/s per core (threads).

Multi-host: every process calls `save`/`restore` (Orbax coordinates the writes of sharded arrays). Each
process hashes the full value of every array: a replicated array (the project's train state) from its local
replica; an array sharded across processes is all-gathered first (correct, but costly: documented, not
optimised). So every process computes the same record. Only process 0 writes config.json and moves
damaged steps.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import sys
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from diffax._util import write_atomic
from etils import epath

__all__ = ["Checkpointer", "CheckpointDamagedError", "tree_checksums", "CHECKSUM_ALGORITHM"]

logger = logging.getLogger(__name__)

CHECKSUM_ALGORITHM = "sha256"
_ITEMS = ("state", "data", "checksums", "config")
DAMAGED_DIR = "damaged"


class CheckpointDamagedError(ValueError):
    """A checkpoint step that cannot be trusted: an array's checksum differs, or a file is unreadable.

    Attributes: ``step`` (int), ``directory`` (the checkpoint directory), ``array`` (tree path of the
    first bad array, or None when the damage is not tied to one array) and ``reason`` (one line).
    """

    def __init__(self, step: int, directory: str, reason: str, array: str | None = None):
        self.step, self.directory, self.reason, self.array = int(step), directory, reason, array
        where = f"{array}: " if array else ""
        super().__init__(f"checkpoint {step} in {directory} is damaged ({where}{reason})")


# ------------------------------------------------------------------------------------------------ checksums
def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_str(path: tuple) -> str:
    """'params/Dense_0/kernel' for a jax key path."""
    return "/".join(_key_str(k) for k in path)


def _host_arrays(leaves: list) -> list[np.ndarray]:
    """Every leaf's full value as a numpy array on this host (one batched device-to-host transfer).

    A multi-host array that is fully replicated is read from a local replica; one sharded across
    processes is all-gathered first (costly: the project's train state is replicated, so this is rare).
    """
    out: list = [None] * len(leaves)
    local = []
    for i, x in enumerate(leaves):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = leaves[i] = jax.random.key_data(x)
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                out[i] = np.asarray(x.addressable_data(0))
            else:
                from jax.experimental import multihost_utils

                out[i] = np.asarray(multihost_utils.process_allgather(x, tiled=True))
        else:
            local.append(i)
    for i, value in zip(local, jax.device_get([leaves[i] for i in local])):
        out[i] = np.asarray(value)
    return out


def _sha256(a: np.ndarray) -> str:
    """sha256 of the array's bytes in C order (native, i.e. little-endian, byte order)."""
    return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


def tree_checksums(tree: Any) -> dict[str, dict[str, Any]]:
    """{tree path: {"shape": [...], "dtype": str, "sha256": hex}} for every array leaf of ``tree``.

    The digest is the sha256 of the array's bytes (C order, little-endian), so it can be recomputed with
    numpy + hashlib alone: ``hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()``. The arrays
    are copied to the host in one batched transfer and hashed in parallel threads (hashlib releases the
    GIL); ~0.5-1 GB/s per core. Leaves may be jax or numpy arrays or scalars. Multi-host: call it on every
    process; each hashes the full (replicated) values, so every process computes the same record.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    arrays = _host_arrays([x for _, x in flat])
    workers = max(1, min(8, os.cpu_count() or 1, len(arrays)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(_sha256, arrays))
    return {
        _path_str(path): {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": d}
        for (path, _), a, d in zip(flat, arrays, digests)
    }


# -------------------------------------------------------------------------------------------------- helpers
def _write_json_atomic(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` via a temporary file + rename (never a torn file)."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def _json_config(config: Any) -> dict | None:
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


def _short_error(e: BaseException, limit: int = 300) -> str:
    """One line for an exception chain: its innermost cause's type and first words, prefixed "unreadable".

    Orbax/TensorStore errors embed whole JSON specs; the root cause (e.g. 'OUT_OF_RANGE: Error reading
    "w/0" in OCDBT database ...') is what says what is wrong. The chain is followed as a traceback prints it.
    """
    root, seen = e, {id(e)}
    while True:
        nxt = root.__cause__
        if nxt is None and not root.__suppress_context__:
            nxt = root.__context__
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        root = nxt
    text = " ".join(str(root).split()) or repr(root)
    if len(text) > limit:
        text = text[:limit] + " ..."
    return f"unreadable: {type(root).__name__}: {text}"


_ORBAX_READ_COROUTINE = "_read_array_index_and_device_put"
_unraisable_filter_installed = False


def _silence_abandoned_orbax_reads() -> None:
    """Drops Python's "Exception ignored in <coroutine _read_array_index_and_device_put>" reports.

    When one array of a damaged checkpoint fails to read, Orbax abandons the other reads; on garbage
    collection (often at exit) each abandoned coroutine turns its GeneratorExit into an Exception carrying
    a whole TensorStore spec, and Python prints it: pages of noise after the one error `restore` raised.
    Installed (once) only after such a failure; every other unraisable exception is passed on untouched.
    """
    global _unraisable_filter_installed
    if _unraisable_filter_installed:
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if (
            getattr(unraisable.object, "__qualname__", "") == _ORBAX_READ_COROUTINE
            and exc is not None
            and isinstance(exc.__cause__, GeneratorExit)
        ):
            logger.debug("dropped Orbax's report of an abandoned read after a damaged checkpoint")
            return
        previous(unraisable)

    sys.unraisablehook = hook
    _unraisable_filter_installed = True


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
    ):
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self._async = bool(async_save)
        self._default_config = _json_config(config)
        self._pending_config: tuple[int, dict] | None = None  # (step, config) awaiting finalization
        options = ocp.CheckpointManagerOptions(
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

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
        step = int(step)
        config = self._default_config if config is None else _json_config(config)
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
        items = {
            "state": ocp.args.StandardSave(state),
            "data": ocp.args.JsonSave({k: int(v) for k, v in data_state.items()}),
            "checksums": ocp.args.JsonSave({"algorithm": CHECKSUM_ALGORITHM, "arrays": tree_checksums(state)}),
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
            _write_json_atomic(os.path.join(self.directory, "config.json"), config)

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
            raise CheckpointDamagedError(step, self.directory, f"checksum record {_short_error(e)}") from e
        return record

    def read_config(self, step: int | None = None) -> dict | None:
        """The config saved with ``step`` (the latest if None).

        Falls back to ``config.json`` for checkpoints saved without one (older runs) and when there is no
        checkpoint; None if neither exists.
        """
        step = self.latest_step() if step is None else self._check_step(step)
        if step is not None and "config" in self._items(step):
            try:
                return dict(self._restore_json(step, "config"))
            except Exception as e:  # noqa: BLE001
                raise CheckpointDamagedError(step, self.directory, f"config {_short_error(e)}") from e
        path = os.path.join(self.directory, "config.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON ({e}); it should hold the run's config") from e

    def _saved_layout(self, step: int, record: dict | None) -> dict[str, tuple[tuple[int, ...], str | None]]:
        """{tree path: (shape, dtype)} of the saved state: from the checksum record, else Orbax's metadata."""
        if record is not None:
            return {p: (tuple(a["shape"]), a["dtype"]) for p, a in record["arrays"].items()}
        try:
            meta = ocp.StandardCheckpointHandler().metadata(epath.Path(self._step_dir(step), "state"))
            flat, _ = jax.tree_util.tree_flatten_with_path(getattr(meta, "tree", meta))
        except Exception as e:  # noqa: BLE001 - unreadable metadata means a damaged step
            raise CheckpointDamagedError(step, self.directory, f"state metadata {_short_error(e)}") from e
        layout = {}
        for path, m in flat:
            dtype = getattr(m, "dtype", None)
            shape = tuple(getattr(m, "shape", ()) or ())
            layout[_path_str(path)] = (shape, None if dtype is None else str(np.dtype(dtype)))
        return layout

    def _abstract_for_restore(self, step: int, target_state: Any, layout: dict) -> tuple[Any, Any]:
        """(abstract tree to restore into, the target's abstract tree), both with the target's structure.

        The target's tree paths and shapes must match the saved ``layout`` (else a ValueError naming the
        first differences: not damage, a changed model). Arrays are restored in their SAVED dtype (so their
        digest can be checked) and cast to the target's afterwards.
        """
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        flat, treedef = jax.tree_util.tree_flatten_with_path(target)
        paths = [_path_str(p) for p, _ in flat]
        missing, extra = sorted(set(layout) - set(paths)), sorted(set(paths) - set(layout))
        problems = [f"saved but not in the target: {missing[:5]}"] if missing else []
        problems += [f"in the target but not saved: {extra[:5]}"] if extra else []
        for path, (_, leaf) in zip(paths, flat):
            if path in layout and tuple(leaf.shape) != layout[path][0]:
                problems.append(f"{path}: saved shape {layout[path][0]}, target {tuple(leaf.shape)}")
        if problems:
            raise ValueError(
                f"checkpoint {step} in {self.directory} does not match the target state (was the model, "
                f"optimizer or data shape changed since it was saved?): " + "; ".join(problems[:5])
            )
        as_saved = [
            jax.ShapeDtypeStruct(
                leaf.shape, np.dtype(layout[path][1] or leaf.dtype), sharding=getattr(leaf, "sharding", None)
            )
            for path, (_, leaf) in zip(paths, flat)
        ]
        return jax.tree_util.tree_unflatten(treedef, as_saved), target

    def restore(self, step: int, target_state: Any, *, verify: bool = True) -> tuple[Any, dict[str, int]]:
        """Restores checkpoint ``step`` into the structure, dtypes and shardings of ``target_state``.

        ``target_state`` may be concrete arrays or `jax.ShapeDtypeStruct`s (with ``.sharding``). With
        ``verify`` (default) every array's digest is checked against the one saved with the step (older
        checkpoints without a record are restored unchecked). Raises `CheckpointDamagedError` (a
        ValueError) naming the step, and the array where one is to blame, on a digest mismatch or an
        unreadable file; a plain ValueError if the target's paths or shapes differ from what was saved.
        """
        step = self._check_step(step)
        try:
            record = self.read_checksums(step)
        except CheckpointDamagedError:
            if verify:
                raise
            record = None
        restore_as, target = self._abstract_for_restore(step, target_state, self._saved_layout(step, record))
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(restore_as), data=ocp.args.JsonRestore()),
            )
            data_state = {k: int(v) for k, v in dict(restored["data"]).items()}
        except Exception as e:  # noqa: BLE001 - the layout matched, so a failure to read is damage
            _silence_abandoned_orbax_reads()
            raise CheckpointDamagedError(step, self.directory, _short_error(e)) from e
        state = restored["state"]
        if verify and record is not None:
            self._verify_against(step, state, record)
        state = jax.tree.map(lambda x, t: x if x.dtype == t.dtype else x.astype(t.dtype), state, target)
        return state, data_state

    def _verify_against(self, step: int, state: Any, record: dict) -> None:
        """Raises CheckpointDamagedError naming the first array whose restored digest or dtype differs."""
        actual = tree_checksums(state)
        saved = record["arrays"]
        fingerprint = lambda entry: (entry.get("dtype"), entry.get("sha256"))  # noqa: E731
        bad = [path for path, entry in saved.items() if fingerprint(actual.get(path, {})) != fingerprint(entry)]
        if bad:
            first = bad[0]
            got = actual.get(first, {})
            more = f"; {len(bad) - 1} more: {bad[1:4]}" if len(bad) > 1 else ""
            raise CheckpointDamagedError(
                step,
                self.directory,
                f"checksum sha256 {str(got.get('sha256'))[:16]}... ({got.get('dtype')}) != saved "
                f"{saved[first]['sha256'][:16]}... ({saved[first]['dtype']}){more}",
                array=first,
            )

    def verify(self, step: int, target_state: Any | None = None) -> bool:
        """Reads every array of ``step`` and checks it against its saved digest.

        Returns True if verified, False for an older checkpoint saved without checksums (readable, but
        unverifiable); raises `CheckpointDamagedError` if damaged. Without ``target_state`` the arrays are
        read onto this process's first device in their saved shapes and dtypes.
        """
        step = self._check_step(step)
        record = self.read_checksums(step)
        if target_state is None:
            meta = ocp.StandardCheckpointHandler().metadata(epath.Path(self._step_dir(step), "state"))
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target_state = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), getattr(meta, "tree", meta)
            )
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
        the next older one tried. If an intact step is found and ``quarantine``, the newer damaged steps are
        moved to ``directory/damaged/`` (so that training from the older step can save those step numbers
        again; the files are kept for inspection). If every step is damaged, raises a ValueError listing
        them and what was wrong, and changes no file. A target mismatch (not damage) is raised at once.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        damaged: list[CheckpointDamagedError] = []
        for i, step in enumerate(steps):
            try:
                state, data_state = self.restore(step, target_state)
            except CheckpointDamagedError as e:
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
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            dest_root = os.path.join(self.directory, DAMAGED_DIR)
            os.makedirs(dest_root, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for step in steps:
                dest = os.path.join(dest_root, f"{step}-{stamp}")
                os.replace(self._step_dir(step), dest)
                logger.warning("moved damaged checkpoint %d to %s", step, dest)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("diffax_checkpoint_quarantine")
        self._manager.reload()

    # ---------------------------------------------------------------------------------------- lifecycle
    def wait(self) -> None:
        """Blocks until any background save has been finalized (then updates config.json)."""
        self._manager.wait_until_finished()
        self._flush_config()

    def close(self) -> None:
        """Waits for pending saves (and Orbax's clean-up of torn saves), updates config.json, releases the manager."""
        self._manager.wait_until_finished()
        self._flush_config()
        # Orbax deletes earlier runs' unfinalized temporary dirs in a background thread started by the
        # constructor and awaited only by `save`; a short-lived reader (e.g. `latest_step`) would otherwise
        # exit while it runs and print "cannot schedule new futures after interpreter shutdown".
        getattr(self._manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
