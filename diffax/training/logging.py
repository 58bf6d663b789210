"""Metric writers: TensorBoard event files (tensorboardX) and a ``metrics.jsonl`` beside them.

Only process 0 writes (``MetricWriter(workdir, enabled=jax.process_index() == 0)``); on other
processes every method is a no-op, so the loop calls them unconditionally.
``metrics.jsonl`` holds one JSON object per logged step, ``{"step": 100, "loss": 0.41, ...,
"steps_averaged": 50}``, appended and flushed at once. Each value is the mean over the steps since the
previous row; ``steps_averaged`` says how many (``log_every``, except in the first row after a resume,
which covers only the steps since the checkpoint, and in the last row of a run whose num_steps is no
multiple of log_every). A run resumed from step k first drops the rows after k (they belong to work
that was lost), so the file never holds one step twice.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping

import numpy as np

from diffax._util import write_atomic

_log = logging.getLogger(__name__)

__all__ = ["MetricWriter", "read_metrics"]


class MetricWriter:
    """Writes scalars and images of a run into ``workdir`` (``tensorboard/`` and ``metrics.jsonl``)."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it

            os.makedirs(workdir, exist_ok=True)
            if resume_step is not None:
                _drop_rows_after(os.path.join(os.fspath(workdir), "metrics.jsonl"), int(resume_step))
            self._tb = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"))
            self._jsonl = open(os.path.join(os.fspath(workdir), "metrics.jsonl"), "a")

    def write_scalars(self, step: int, scalars: Mapping[str, float], *, steps_averaged: int | None = None) -> None:
        """Logs each ``name -> float`` at ``step`` (TensorBoard scalar + one jsonl line); the jsonl line
        also records ``steps_averaged``, the number of steps the values are means over, where given."""
        if not self.enabled:
            return
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))
        row = {"step": int(step), **values}
        if steps_averaged is not None:
            row["steps_averaged"] = int(steps_averaged)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """Logs one uint8 (H, W, C) image at ``step`` (TensorBoard only)."""
        if not self.enabled:
            return
        self._tb.add_image(name, np.asarray(image), int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def _rows(path: str) -> tuple[list[tuple[str, int, dict]], int]:
    """((line, step, record) of each row of a metrics.jsonl, the number of non-blank lines). A row that does
    not parse (the torn last row of a process killed mid-append: rows are appended, not written atomically)
    is skipped with a warning."""
    rows, num_lines = [], 0
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            num_lines += 1
            try:
                rec = json.loads(line)
                rows.append((line if line.endswith("\n") else line + "\n", int(rec["step"]), rec))
            except (ValueError, KeyError, TypeError) as e:
                _log.warning("%s line %d is not a metrics row (torn by a crash?): skipped (%s)", path, n, e)
    return rows, num_lines


def _drop_rows_after(path: str, step: int) -> None:
    """Rewrites ``path`` without the rows whose step is > ``step`` (and without a torn row), atomically
    (`diffax._util.write_atomic`): a crash meanwhile leaves the old file, never a truncated one."""
    if not os.path.exists(path):
        return
    rows, num_lines = _rows(path)
    keep = [line for line, s, _ in rows if s <= step]
    if len(keep) == num_lines:
        return
    write_atomic(path, "".join(keep))


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (empty if missing), keeping the LAST record of each step.

    A run resumed from a checkpoint re-logs the steps after that checkpoint; the later values win.
    """
    path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_step = {s: rec for _, s, rec in _rows(path)[0]}
    return [by_step[s] for s in sorted(by_step)]
