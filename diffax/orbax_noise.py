"""Drops the unraisable-exception reports Orbax leaves behind after a damaged checkpoint; passes on all others.

When one array of a damaged checkpoint fails to read, Orbax abandons the other reads: on garbage
collection (often at exit) each abandoned coroutine turns its GeneratorExit into an Exception carrying a
whole TensorStore spec ("Exception ignored in <coroutine _read_array_index_and_device_put>"), and the reads
still running in TensorStore's threads complete into an event loop Orbax has closed ("RuntimeError: Event
loop is closed", e.g. after a damaged manifest), and the futures of failed TensorStore reads that nobody
awaited any more are logged by asyncio at garbage collection ("Future exception was never retrieved" with
the whole spec): pages of noise after the one error a restore raised. `silence_abandoned_orbax_reads` wraps
``sys.unraisablehook`` to drop exactly the first two kinds of report, and filters asyncio's log records of
the third kind (the exception's text names a ``tensorstore_spec``); every other report and record passes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

__all__ = ["ORBAX_READ_COROUTINE", "is_abandoned_orbax_read", "is_unretrieved_tensorstore_read",
           "silence_abandoned_orbax_reads"]  # fmt: skip

logger = logging.getLogger(__name__)

ORBAX_READ_COROUTINE = "_read_array_index_and_device_put"
"""The ``__qualname__`` of Orbax 0.12's per-array read coroutine, the one it abandons after a failed read."""


def _is_callback_into_closed_loop(unraisable: Any) -> bool:
    """A TensorStore read finishing after Orbax closed the event loop that awaited it: "RuntimeError: Event
    loop is closed" raised by ``call_soon_threadsafe``, reported with no object (from a C++ thread)."""
    exc = unraisable.exc_value
    if unraisable.object is not None or not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    tb, names = unraisable.exc_traceback, set()
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return "call_soon_threadsafe" in names


def is_abandoned_orbax_read(unraisable: Any) -> bool:
    """Whether a ``sys.unraisablehook`` report is one of Orbax's abandoned reads (see the module docstring):
    an `ORBAX_READ_COROUTINE` whose GeneratorExit became an Exception, or a read completing into a closed loop."""
    exc = unraisable.exc_value
    return (
        getattr(unraisable.object, "__qualname__", "") == ORBAX_READ_COROUTINE
        and exc is not None
        and isinstance(exc.__cause__, GeneratorExit)
    ) or _is_callback_into_closed_loop(unraisable)


def _dropping_orbax_reads(previous: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``previous`` behind a filter that drops `is_abandoned_orbax_read` reports."""

    def hook(unraisable: Any) -> None:
        if is_abandoned_orbax_read(unraisable):
            logger.debug("dropped Orbax's report of an abandoned read after a damaged checkpoint")
            return
        previous(unraisable)

    hook.drops_abandoned_orbax_reads = True  # type: ignore[attr-defined]
    return hook


def is_unretrieved_tensorstore_read(record: logging.LogRecord) -> bool:
    """Whether an asyncio log record is "Future exception was never retrieved" for a failed TensorStore read
    (its exception's text carries a ``tensorstore_spec``): a read Orbax abandoned after a damaged array."""
    exc = record.exc_info[1] if record.exc_info else None
    return (
        record.name == "asyncio"
        and str(record.msg).startswith("Future exception was never retrieved")
        and exc is not None
        and "tensorstore_spec" in str(exc)
    )


class _UnretrievedTensorStoreReads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not is_unretrieved_tensorstore_read(record)


def silence_abandoned_orbax_reads() -> None:
    """Makes ``sys.unraisablehook`` drop Orbax's abandoned-read reports and pass every other one on.

    Idempotent: does nothing when the current hook already filters them. Call it before the first restore
    (the closed-loop reports can come while Orbax is still unwinding, before its error reaches the caller).
    """
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedTensorStoreReads) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_UnretrievedTensorStoreReads())
    if getattr(sys.unraisablehook, "drops_abandoned_orbax_reads", False):
        return
    sys.unraisablehook = _dropping_orbax_reads(sys.unraisablehook)
