"""Fixed-size batches of a data set, the last one zero-padded, so one compiled program serves any N."""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["pad_to", "padded_batches"]


def pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """``x`` with zero rows appended on axis 0 up to ``size`` rows (``x`` itself when it has them)."""
    x = np.asarray(x)
    if x.shape[0] >= size:
        return x
    return np.concatenate([x, np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)])


def padded_batches(batch_size: int, *arrays: np.ndarray | None) -> Iterator[tuple[int, int, tuple]]:
    """Yields ``(j, m, batch)`` for consecutive slices of ``arrays`` (same length N on axis 0): batch j holds
    rows [j * batch_size, j * batch_size + m), each array zero-padded to exactly ``batch_size`` rows (a None
    array stays None). Trim the outputs of a padded batch to their first m rows."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    sizes = {len(a) for a in arrays if a is not None}
    if len(sizes) != 1:
        raise ValueError(f"padded_batches needs arrays of one common length, got lengths {sorted(sizes)}")
    (n,) = sizes
    for j, lo in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - lo)
        yield j, m, tuple(None if a is None else pad_to(a[lo : lo + m], batch_size) for a in arrays)
