"""One trainer per workdir: an exclusive lock file ``<workdir>/.lock``, refreshed while it is held.

Two trainers writing the same checkpoints interleave their steps (each sees the other's as "latest")
and corrupt the run's record. `WorkdirLock` makes the second one fail at once, naming the holder::

    with WorkdirLock(workdir, stale_after_s=600):   # only process 0 of a multi-process job takes it
        train_and_evaluate(...)

The lock file is created atomically (``open(O_CREAT | O_EXCL)``) and holds JSON
``{"host", "pid", "pid_start", "started", "command"}``. While it is held, a daemon thread refreshes the
file's modification time every ``heartbeat_s`` (default min(30 s, stale_after_s / 4)): the heartbeat.
The thread starts when the lock is taken and is stopped on release; the file is removed on release,
also on an exception. A lock left behind by a killed trainer (``kill -9``, a crash, a preempted VM) is
judged thus:

- same host: stale if its pid is not running (or is running but started at another time: a reused pid);
  a running holder is respected whatever its age (this host can see that it is alive);
- another host, or a file that cannot be parsed (a holder killed between creating and writing it): stale
  once not refreshed for longer than ``stale_after_s`` (the holder's heartbeat stopped: it is gone, e.g.
  a preempted VM whose job restarted elsewhere); before that it is refused, the error naming the holder,
  when it was last refreshed and after how long it would be stale.

A stale lock is taken over with a warning naming the old holder. Host clocks must agree to well within
``stale_after_s`` (the age is now minus the file's modification time).
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from typing import Any

__all__ = ["WorkdirLock", "WorkdirLockedError", "LOCK_NAME", "DEFAULT_STALE_AFTER_S", "process_start"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
DEFAULT_STALE_AFTER_S = 600.0  # training.lock_stale_after_s's default: 20 missed heartbeats of 30 s
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


def process_start(pid: int) -> str | None:
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


def _positive_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def _describe(holder: dict | str) -> str:
    """'host 'h' pid 7 (started ..., command '...')' for a parsed lock, else its raw content."""
    if isinstance(holder, dict):
        return (f"host {holder.get('host')!r} pid {holder.get('pid')} (started {holder.get('started')}, "
                f"command {holder.get('command', '')!r})")  # fmt: skip
    return f"an unreadable lock file (content {holder[:80]!r})"


class WorkdirLock:
    """Context manager holding ``<workdir>/.lock`` for the duration of a training run.

    Args:
      workdir: the run's directory (created if missing).
      process_index: this process's index in a multi-process job; only process 0 takes the lock (the
        others do nothing). Default ``jax.process_index()``.
      stale_after_s: another host's (or an unreadable) lock not refreshed for longer than this is stale
        and taken over (the trainer passes training.lock_stale_after_s).
      heartbeat_s: how often the holder refreshes the file's modification time; default
        min(30, stale_after_s / 4), so that a live holder is never judged stale.

    Raises on enter: `WorkdirLockedError` if another live trainer holds it (message names host, pid,
    start time and the lock file), PermissionError "cannot write to <workdir> (read-only?)".
    """

    def __init__(self, workdir: str | os.PathLike, *, process_index: int | None = None,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S, heartbeat_s: float | None = None):  # fmt: skip
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.path = os.path.join(self.workdir, LOCK_NAME)
        if process_index is None:
            import jax

            process_index = jax.process_index()
        self.process_index = int(process_index)
        self.stale_after_s = _positive_seconds("stale_after_s", stale_after_s)
        self.heartbeat_s = _positive_seconds(
            "heartbeat_s", min(30.0, self.stale_after_s / 4) if heartbeat_s is None else heartbeat_s
        )
        self._record: dict | None = None
        self._fd: int | None = None  # the lock file we created, open for the heartbeat
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock (always False on processes other than 0)."""
        return self._record is not None

    def still_ours(self) -> bool:
        """Whether the lock file at ``path`` is still the one this trainer created (True on processes other
        than 0, which hold no lock). False once another trainer took it over as stale (this trainer's heartbeat
        stopped for longer than ``stale_after_s``, e.g. a host that was frozen or cut off) or it was deleted.
        The trainer checks it before every save, so that two trainers never write one workdir."""
        if self.process_index != 0:
            return True
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def lost_error(self) -> WorkdirLockedError:
        """The error a trainer raises when `still_ours` turned False: it names the lock's current holder."""
        holder, _ = self._read_holder()
        who = "nobody (the lock file was deleted)" if holder is None else _describe(holder)
        return WorkdirLockedError(
            f"this trainer no longer holds {self.path}: it was taken over by {who} (a lock not refreshed for "
            f"training.lock_stale_after_s={self.stale_after_s:g} s counts as stale); stopping before the next save "
            "so that two trainers never write one workdir", holder if isinstance(holder, dict) else None)

    # ---------------------------------------------------------------------------------------- acquire
    def acquire(self) -> "WorkdirLock":
        """Takes the lock (process 0 only) and starts the heartbeat; see the class docstring for errors."""
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
            "pid_start": process_start(os.getpid()),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        for _ in range(3):  # a stale lock taken over by someone else between our steps: try again
            fd = self._try_create(record)
            if fd is not None:
                self._record, self._fd = record, fd
                self._stop.clear()
                self._heartbeat = threading.Thread(target=self._beat, name=f"diffax-lock-heartbeat {self.path}",
                                                   daemon=True)  # fmt: skip
                self._heartbeat.start()
                return self
            holder, age = self._read_holder()
            if holder is None:
                continue  # vanished (released) between our create and read
            self._take_over_if_stale(holder, age)
        raise WorkdirLockedError(f"could not take the lock {self.path}: it keeps being re-created; is another "
                                 f"trainer starting in {self.workdir}?")  # fmt: skip

    def _try_create(self, record: dict) -> int | None:
        """The open descriptor of a newly created lock file holding ``record``; None if one exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        except OSError as e:
            if e.errno in _NOT_WRITABLE:
                raise _not_writable(self.workdir, e) from e
            raise
        try:
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
        except BaseException:  # e.g. a full disk: leave no empty lock file behind
            os.close(fd)
            os.unlink(self.path)
            raise
        return fd

    def _read_holder(self) -> tuple[dict | str | None, float]:
        """(the lock file's JSON (a dict), or its raw text if it never parses, or None if it is gone;
        seconds since its last refresh)."""
        text = ""
        for _ in range(_READ_RETRIES):
            try:
                with open(self.path) as f:
                    text = f.read()
                    age = time.time() - os.fstat(f.fileno()).st_mtime
            except FileNotFoundError:
                return None, 0.0
            try:
                holder = json.loads(text)
                if isinstance(holder, dict):
                    return holder, age
            except json.JSONDecodeError:
                pass
            time.sleep(0.05)
        return text, age

    def _locked_error(self, holder: dict | str, why: str) -> WorkdirLockedError:
        return WorkdirLockedError(
            f"workdir {self.workdir} is locked by {_describe(holder)}: {why}. Only one trainer may use a workdir. "
            f"If that process is gone, delete {self.path} and retry.",
            holder if isinstance(holder, dict) else None,
        )

    def _stale_reason(self, holder: dict | str, age: float) -> tuple[str, bool]:
        """(why ``holder``'s lock, last refreshed ``age`` s ago, is stale; whether by its age alone), or
        raises WorkdirLockedError saying why it is not."""
        by_age = f"not refreshed for {age:.0f} s (stale after {self.stale_after_s:g} s)"
        wait = (f"last refreshed {max(age, 0):.0f} s ago; it becomes stale (taken over by the next trainer) after "
                f"{self.stale_after_s:g} s without a refresh (training.lock_stale_after_s)")  # fmt: skip
        if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
            if age > self.stale_after_s:
                return by_age, True
            why = "it is another host's" if isinstance(holder, dict) else "cannot tell whether its owner is alive"
            raise self._locked_error(holder, f"{why}, {wait}")
        pid = holder.get("pid")
        if not isinstance(pid, int):
            if age > self.stale_after_s:
                return by_age, True
            raise self._locked_error(holder, f"it names no pid, {wait}")
        if pid == os.getpid():
            raise self._locked_error(holder, "this process already holds it (a second WorkdirLock in one process)")
        alive = _pid_alive(pid)
        now_start = process_start(pid) if alive else None
        reused = holder.get("pid_start") is not None and now_start not in (None, holder["pid_start"])
        if alive and not reused:
            raise self._locked_error(holder, "that process is still running")
        return ("a reused pid" if reused else "that process is not running"), False

    def _take_over_if_stale(self, holder: dict | str, age: float) -> None:
        """Removes ``holder``'s lock if it is stale (see the module docstring); else raises WorkdirLockedError."""
        why, by_age = self._stale_reason(holder, age)
        # Move it aside atomically (only one taker gets the file), then check it is the one we judged and,
        # if judged by its age, that its holder did not refresh it meanwhile (rename keeps the mtime).
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else removed it; the caller retries the create
        try:
            with open(aside) as f:
                text = f.read()
                refreshed = time.time() - os.fstat(f.fileno()).st_mtime <= self.stale_after_s
        except OSError:
            text, refreshed = "", False
        try:
            moved = json.loads(text)
        except json.JSONDecodeError:
            moved = text
        if moved != holder or (by_age and refreshed):  # not the lock we judged: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            raise self._locked_error(moved or holder, "it was just taken or refreshed by another trainer")
        os.unlink(aside)
        old = (f"pid {holder.get('pid')} on host {holder.get('host')!r} (started {holder.get('started')}, command "
               f"{holder.get('command', '')!r})" if isinstance(holder, dict) else _describe(holder))  # fmt: skip
        logger.warning("taking over the stale lock %s of %s: %s", self.path, old, why)

    # -------------------------------------------------------------------------------------- heartbeat
    def _beat(self) -> None:
        """The heartbeat thread: refreshes the lock file's mtime every ``heartbeat_s`` until released."""
        fd = self._fd
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(fd)  # our file, even if someone moved it away
                ours = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                ours = False
            except OSError as e:  # e.g. a network filesystem's hiccup: try again at the next beat
                logger.warning("could not refresh the lock %s: %s", self.path, e)
                continue
            if not ours:
                logger.warning("the lock %s is no longer this trainer's (taken over as stale?); another trainer "
                               "may now write this workdir", self.path)  # fmt: skip
                return

    # ---------------------------------------------------------------------------------------- release
    def release(self) -> None:
        """Stops the heartbeat and removes the lock file if it is still ours (never one another trainer
        took over)."""
        if not self.held:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        os.close(self._fd)
        record, self._record, self._fd = self._record, None, None
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
