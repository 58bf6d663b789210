"""One trainer per workdir: an exclusive lock file ``<workdir>/.lock``.

Two trainers writing the same checkpoints interleave their steps (each sees the other's as "latest")
and corrupt the run's record. `WorkdirLock` makes the second one fail at once, naming the holder::

    with WorkdirLock(workdir):          # only process 0 of a multi-process job takes it
        train_and_evaluate(...)

The lock file is created atomically (``open(O_CREAT | O_EXCL)``) and holds JSON
``{"host", "pid", "pid_start", "started", "command"}``. It is removed on exit, also on an exception.
A lock left behind by a killed trainer (``kill -9``, a crash, a preempted VM) is handled thus:

- same host, and the pid is not running (or is running but started at another time: a reused pid) —
  stale: taken over with a warning;
- another host — we cannot tell whether that process is alive, so the lock is respected: the error says
  which host and pid hold it and that the file may be deleted if that process is gone.

A lock file that cannot be parsed (e.g. a holder killed between creating and writing it) is treated like
one from another host: refused, with the same instruction.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import sys
import time
from typing import Any

__all__ = ["WorkdirLock", "WorkdirLockedError", "LOCK_NAME"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_READ_RETRIES = 10  # a just-created lock may be empty for a moment: re-read for up to ~0.5 s
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class WorkdirLockedError(RuntimeError):
    """The workdir is locked by another trainer; ``holder`` is the lock file's content (or None)."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...), or None where there is no /proc entry."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces; the fields after it are plain.
    return stat.rsplit(")", 1)[-1].split()


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22), else None."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (exited, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    fields = _proc_stat(pid)
    return not (fields and fields[0] in ("Z", "X"))


def _not_writable(workdir: str, e: OSError) -> PermissionError:
    return PermissionError(f"cannot write to {workdir} (read-only?): {e.strerror or e}")


class WorkdirLock:
    """Context manager holding ``<workdir>/.lock`` for the duration of a training run.

    Args:
      workdir: the run's directory (created if missing).
      process_index: this process's index in a multi-process job; only process 0 takes the lock (the
        others do nothing). Default ``jax.process_index()``.

    Raises on enter: `WorkdirLockedError` if another live trainer holds it (message names host, pid,
    start time and the lock file), PermissionError "cannot write to <workdir> (read-only?)".
    """

    def __init__(self, workdir: str | os.PathLike, *, process_index: int | None = None):
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.path = os.path.join(self.workdir, LOCK_NAME)
        if process_index is None:
            import jax

            process_index = jax.process_index()
        self.process_index = int(process_index)
        self._record: dict | None = None

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock (always False on processes other than 0)."""
        return self._record is not None

    # ---------------------------------------------------------------------------------------- acquire
    def acquire(self) -> "WorkdirLock":
        """Takes the lock (process 0 only); see the class docstring for what is raised."""
        if self.process_index != 0 or self.held:
            return self
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            if e.errno in _NOT_WRITABLE:
                raise _not_writable(self.workdir, e) from e
            raise
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        for _ in range(3):  # a stale lock taken over by someone else between our steps: try again
            if self._try_create(record):
                self._record = record
                return self
            holder = self._read_holder()
            if holder is None:
                continue  # vanished (released) between our create and read
            self._take_over_if_stale(holder)
        raise WorkdirLockedError(f"could not take the lock {self.path}: it keeps being re-created; is another "
                                 f"trainer starting in {self.workdir}?")  # fmt: skip

    def _try_create(self, record: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno in _NOT_WRITABLE:
                raise _not_writable(self.workdir, e) from e
            raise
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:  # e.g. a full disk: leave no empty lock file behind
            os.unlink(self.path)
            raise
        return True

    def _read_holder(self) -> dict | str | None:
        """The lock file's JSON (a dict), its raw text if it never parses, or None if it is gone."""
        text = ""
        for _ in range(_READ_RETRIES):
            try:
                with open(self.path) as f:
                    text = f.read()
            except FileNotFoundError:
                return None
            try:
                holder = json.loads(text)
                if isinstance(holder, dict):
                    return holder
            except json.JSONDecodeError:
                pass
            time.sleep(0.05)
        return text

    def _locked_error(self, holder: dict | str, why: str) -> WorkdirLockedError:
        if isinstance(holder, dict):
            who = (f"host {holder.get('host')!r} pid {holder.get('pid')} (started {holder.get('started')}, "
                   f"command {holder.get('command', '')!r})")  # fmt: skip
        else:
            who = f"an unreadable lock file (content {holder[:80]!r})"
        return WorkdirLockedError(
            f"workdir {self.workdir} is locked by {who}: {why}. Only one trainer may use a workdir. If that "
            f"process is gone, delete {self.path} and retry.",
            holder if isinstance(holder, dict) else None,
        )

    def _take_over_if_stale(self, holder: dict | str) -> None:
        """Removes ``holder``'s lock if it is stale (same host, process gone); else raises WorkdirLockedError."""
        if not isinstance(holder, dict):
            raise self._locked_error(holder, "cannot tell whether its owner is alive")
        if holder.get("host") != socket.gethostname():
            raise self._locked_error(holder, "it is another host's, so this host cannot tell whether it is alive")
        pid = holder.get("pid")
        if not isinstance(pid, int):
            raise self._locked_error(holder, "it names no pid")
        if pid == os.getpid():
            raise self._locked_error(holder, "this process already holds it (a second WorkdirLock in one process)")
        alive = _pid_alive(pid)
        now_start = _process_start(pid) if alive else None
        reused = holder.get("pid_start") is not None and now_start not in (None, holder["pid_start"])
        if alive and not reused:
            raise self._locked_error(holder, "that process is still running")
        # Stale. Move it aside atomically (only one taker gets the file), check it is the one we judged.
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else removed it; the caller retries the create
        try:
            with open(aside) as f:
                moved = json.loads(f.read())
        except (OSError, json.JSONDecodeError):
            moved = None
        if moved != holder:  # we grabbed a lock someone took over meanwhile: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            raise self._locked_error(moved or holder, "it was just taken by another trainer")
        os.unlink(aside)
        logger.warning(
            "taking over the stale lock %s of pid %s on this host (started %s): %s",
            self.path, pid, holder.get("started"), "a reused pid" if reused else "that process is not running",
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------- release
    def release(self) -> None:
        """Removes the lock file if it is still ours (never one another trainer took over)."""
        if not self.held:
            return
        record, self._record = self._record, None
        try:
            with open(self.path) as f:
                current = json.loads(f.read())
        except (OSError, json.JSONDecodeError):
            return
        if current == record:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        else:
            logger.warning("not removing %s: it no longer holds this process's lock (%s)", self.path, current)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
