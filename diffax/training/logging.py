"""Metric writers: TensorBoard event files (tensorboardX) and a ``metrics.jsonl`` beside them.

Only process 0 writes (``MetricWriter(workdir, enabled=jax.process_index() == 0)``); on other
processes every method is a no-op, so the loop calls them unconditionally.
``metrics.jsonl`` holds one JSON object per logged step, ``{"step": 100, "loss": 0.41, ...}``,
appended and flushed at once. A run resumed from step k first drops the rows after k (they belong to
work that was lost), so the file never holds one step twice.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

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

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Logs each ``name -> float`` at ``step`` (TensorBoard scalar + one jsonl line)."""
        if not self.enabled:
            return
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
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


def _drop_rows_after(path: str, step: int) -> None:
    """Rewrites ``path`` (atomically) without the rows whose step is > ``step``."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    keep = [line for line in lines if int(json.loads(line)["step"]) <= step]
    if len(keep) == len(lines):
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (empty if missing), keeping the LAST record of each step.

    A run resumed from a checkpoint re-logs the steps after that checkpoint; the later values win.
    """
    path = os.path.join(os.fspath(workdir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]
