"""`Batches`: a seeded, sharded, checkpointable numpy batch iterator.

Order of examples (the whole contract; everything is a pure function of ``(seed, epoch, step)``):

    perm_e        = default_rng((seed, PERM_TAG, e)).permutation(N)      (arange(N) if not shuffle)
    global batch s of epoch e = perm_e[s G : (s + 1) G],                  G = batch_size * process_count
    process p's batch         = global batch[p B : (p + 1) B],            B = batch_size
    flip mask of global batch = default_rng((seed, FLIP_TAG, e, s)).random(G) < 1/2, sliced the same way.

So P processes together see exactly what 1 process with batch size P B sees (same examples, same order,
same flips), and the iterator's state is just ``(epoch, position)``: no hidden RNG state to save.
The tags keep the streams apart: numpy's SeedSequence pads entropy with zeros, so ``(seed, 0)`` and
``seed`` would otherwise be the *same* stream (and the toy data are drawn from ``default_rng(seed)``).
"""

from __future__ import annotations

import numpy as np

from diffax._util import check_int

__all__ = ["Batches"]

PERM_TAG = 0x5045524D  # "PERM"
FLIP_TAG = 0x464C4950  # "FLIP"


class _ArrayPair:
    """In-memory (x, labels) with vectorised gathers."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None):
        x = np.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"Batches: data must have a leading example axis, got shape {x.shape}")
        if y is not None:
            y = np.asarray(y)
            if y.shape != x.shape[:1] or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"Batches: labels must be integers of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def gather(self, idx: np.ndarray):
        return self.x[idx], None if self.y is None else self.y[idx]


class _RandomAccess:
    """Any ``__len__`` + ``__getitem__(int)`` source; items are dicts with 'image'/'x' (and 'label'/'y'),
    ``(x, y)`` pairs, or bare arrays. Read one item at a time (the mocked TFDS ``__getitems__`` is broken
    in tfds 4.9.10, and per-item reads work for every source)."""

    def __init__(self, source):
        self.source = source
        n = len(source)
        self.has_labels = n > 0 and self._split(source[0])[1] is not None

    @staticmethod
    def _split(item):
        if isinstance(item, dict):
            x = item["image"] if "image" in item else item["x"]
            y = item.get("label", item.get("y"))
            return x, y
        if isinstance(item, tuple):
            return item
        return item, None

    def __len__(self) -> int:
        return len(self.source)

    def gather(self, idx: np.ndarray):
        items = [self._split(self.source[int(i)]) for i in idx]
        x = np.stack([np.asarray(it[0]) for it in items]) if items else None
        y = np.asarray([it[1] for it in items], np.int32) if self.has_labels else None
        return x, y


class Batches:
    """Iterator over batches ``{'x': float32 (batch_size, ...), 'y': int32 (batch_size,)}`` ('y' if labelled).

    Args:
      source: ``(x, labels)`` arrays (a tuple; labels may be None), a bare array, or a random-access
        object (``__len__``, ``__getitem__(int)``; e.g. a ``tfds.data_source``).
      batch_size: the PER-PROCESS batch size B (the global batch is B * process_count).
      seed: non-negative int; fixes the per-epoch permutations and flips (see the module docstring).
      shuffle: permute each epoch (else the natural order).
      drop_remainder: drop the last incomplete global batch (else it is yielded, split contiguously
        across processes, so processes may get fewer, even zero, examples then).
      random_flip: flip images (N, H, W, C) horizontally with probability 1/2, per example.
      process_index, process_count: this process' shard of each global batch.
      to_float: uint8 -> float32 via x / 127.5 - 1 (0 -> -1, 255 -> 1 exactly); float data -> float32
        unchanged. With False the source dtype is kept.
      num_epochs: stop after this many epochs (None: forever).

    ``get_state()`` -> ``{'epoch': e, 'position': s}`` (plain ints: batches of epoch e already yielded);
    ``set_state`` restores it, after which the batches are bitwise those of an uninterrupted run. The state
    counts global batches, so it stays valid when the same global batch is split over another process count.
    """

    def __init__(
        self,
        source,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_remainder: bool = True,
        random_flip: bool = False,
        process_index: int = 0,
        process_count: int = 1,
        to_float: bool = True,
        num_epochs: int | None = None,
    ):
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.process_count = check_int("process_count", process_count, 1)
        self.process_index = check_int("process_index", process_index, 0)
        if self.process_index >= self.process_count:
            raise ValueError(f"process_index must be in [0, {self.process_count}), got {process_index}")
        self.num_epochs = None if num_epochs is None else check_int("num_epochs", num_epochs, 1)
        self.shuffle, self.drop_remainder = bool(shuffle), bool(drop_remainder)
        self.random_flip, self.to_float = bool(random_flip), bool(to_float)

        if isinstance(source, tuple):
            if len(source) != 2:
                raise ValueError(f"Batches: a tuple source must be (x, labels), got {len(source)} items")
            self._source = _ArrayPair(*source)
        elif isinstance(source, np.ndarray):
            self._source = _ArrayPair(source, None)
        elif hasattr(source, "__len__") and hasattr(source, "__getitem__"):
            self._source = _RandomAccess(source)
        else:
            raise ValueError(f"Batches: source must be (x, labels), an array or a random-access object, got {type(source)}")
        self.num_examples = len(self._source)
        if self.num_examples == 0:
            raise ValueError("Batches: the data source is empty (0 examples)")
        if self.drop_remainder and self.global_batch_size > self.num_examples:
            raise ValueError(
                f"global batch size {self.global_batch_size} (batch_size {self.batch_size} x process_count "
                f"{self.process_count}) exceeds the data set size {self.num_examples}"
            )
        if self.random_flip:
            x0, _ = self._source.gather(np.zeros(1, np.int64))
            if x0.ndim != 4:
                raise ValueError(f"random_flip needs images (N, H, W, C), got examples of shape {x0.shape[1:]}")
        self._epoch, self._position = 0, 0
        self._perm_epoch, self._perm = None, None

    # ------------------------------------------------------------------------------------------ properties
    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.process_count

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch: N // G with drop_remainder, else ceil(N / G)."""
        g = self.global_batch_size
        return self.num_examples // g if self.drop_remainder else -(-self.num_examples // g)

    # ------------------------------------------------------------------------------------------- state
    def get_state(self) -> dict[str, int]:
        """``{'epoch', 'position'}``: the next batch is batch ``position`` of epoch ``epoch``."""
        epoch, pos = self._epoch, self._position
        if pos >= self.steps_per_epoch:
            epoch, pos = epoch + 1, 0
        return {"epoch": int(epoch), "position": int(pos)}

    def set_state(self, state: dict) -> None:
        """Resume from a `get_state` dict (the values may be numpy/JAX scalars, e.g. from a checkpoint)."""
        if set(state) != {"epoch", "position"}:
            raise ValueError(f"Batches.set_state: expected keys {{'epoch', 'position'}}, got {sorted(state)}")
        epoch, pos = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= pos <= self.steps_per_epoch:
            raise ValueError(
                f"Batches.set_state: need epoch >= 0 and 0 <= position <= {self.steps_per_epoch}, got {state}"
            )
        self._epoch, self._position = epoch, pos

    # ------------------------------------------------------------------------------------------ iteration
    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the examples in ``epoch`` (cached for the current epoch)."""
        if self._perm_epoch != epoch:
            n = self.num_examples
            rng = np.random.default_rng((self.seed, PERM_TAG, epoch))
            self._perm = rng.permutation(n) if self.shuffle else np.arange(n)
            self._perm_epoch = epoch
        return self._perm

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._position >= self.steps_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
        if self.num_epochs is not None and self._epoch >= self.num_epochs:
            raise StopIteration
        epoch, step = self._epoch, self._position
        g, b, p = self.global_batch_size, self.batch_size, self.process_index
        global_idx = self.permutation(epoch)[step * g : (step + 1) * g]
        local = slice(p * b, (p + 1) * b)
        x, y = self._source.gather(global_idx[local])
        if x is None:  # an empty shard of the last partial batch (drop_remainder=False)
            x, _ = self._source.gather(global_idx[:1])
            x = x[:0]
            y = None if not self._has_labels() else np.zeros((0,), np.int32)
        if self.random_flip:
            flips = np.random.default_rng((self.seed, FLIP_TAG, epoch, step)).random(global_idx.shape[0]) < 0.5
            flips = flips[local]
            x = np.where(flips[:, None, None, None], x[:, :, ::-1], x)
        self._position += 1
        batch = {"x": self._convert(x)}
        if y is not None:
            batch["y"] = np.asarray(y, np.int32)
        return batch

    def _has_labels(self) -> bool:
        return self._source.y is not None if isinstance(self._source, _ArrayPair) else self._source.has_labels

    def _convert(self, x: np.ndarray) -> np.ndarray:
        if not self.to_float:
            return x
        if x.dtype == np.uint8:
            return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        return x.astype(np.float32)
