"""Checkpoint integrity: the digests a step is saved with, and the checks that what was read is what was saved.

Orbax/TensorStore detect a truncated or unreadable file, but NOT a flipped bit in an array chunk (it
decodes to different numbers), nor a changed digit in a JSON item. So a saved step carries a checksum
record (`checksum_record`)::

    {"algorithm": "sha256", "step": <step>,
     "arrays": {tree path: {"shape": [...], "dtype": str, "sha256": hex}},    # `tree_checksums`
     "items": {"data": sha256, "config": sha256}}                            # `json_sha256`

computed on the host from the exact values handed to Orbax, and a restore recomputes the digests on what
it read (`check_arrays`, `check_json_item`), raising `CheckpointDamagedError` naming the step and the array
or item on a mismatch. A record without an item's digest (a step saved before the record covered it)
leaves that item unchecked. Cost: one device-to-host copy of the state per save and per restore, and
sha256 at ~0.5-1 GB/s per core (threads).

Multi-host: each process hashes the full value of every array: a replicated array (the project's train
state) from its local replica; an array sharded across processes is all-gathered first (correct, but
costly: documented, not optimised). So every process computes the same record.

Nothing here reads or writes files or calls Orbax: `diffax.checkpoint.Checkpointer` does the I/O.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np

from diffax._util import sha256_of_array

__all__ = [
    "CHECKSUM_ALGORITHM",
    "CheckpointDamagedError",
    "key_path_str",
    "tree_checksums",
    "json_sha256",
    "checksum_record",
    "check_json_item",
    "check_arrays",
    "unreadable_reason",
]

CHECKSUM_ALGORITHM = "sha256"


class CheckpointDamagedError(ValueError):
    """A checkpoint step that cannot be trusted: an array's checksum differs, or a file is unreadable.

    Attributes: ``step`` (int), ``directory`` (the checkpoint directory), ``array`` (tree path of the
    first bad array, "data position" / "config" for those items, or None when the damage is not tied to one
    of them) and ``reason`` (one line).
    """

    def __init__(self, step: int, directory: str, reason: str, array: str | None = None):
        self.step, self.directory, self.reason, self.array = int(step), directory, reason, array
        where = f"{array}: " if array else ""
        super().__init__(f"checkpoint {step} in {directory} is damaged ({where}{reason})")


# ------------------------------------------------------------------------------------------------ digests
def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def key_path_str(path: tuple) -> str:
    """'params/Dense_0/kernel' for a jax key path: the name of an array in a checksum record."""
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


def tree_checksums(tree: Any) -> dict[str, dict[str, Any]]:
    """{tree path: {"shape": [...], "dtype": str, "sha256": hex}} for every array leaf of ``tree``.

    The digest is the sha256 of the array's bytes (C order, little-endian; `diffax._util.sha256_of_array`),
    so it can be recomputed with numpy + hashlib alone:
    ``hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()``. The arrays are copied to the host in
    one batched transfer and hashed in parallel threads (hashlib releases the GIL); ~0.5-1 GB/s per core.
    Leaves may be jax or numpy arrays or scalars. Multi-host: call it on every process; each hashes the
    full (replicated) values, so every process computes the same record.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    arrays = _host_arrays([x for _, x in flat])
    workers = max(1, min(8, os.cpu_count() or 1, len(arrays)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(sha256_of_array, arrays))
    return {
        key_path_str(path): {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": d}
        for (path, _), a, d in zip(flat, arrays, digests)
    }


def json_sha256(obj: Any) -> str:
    """sha256 of ``obj``'s canonical JSON (sorted keys, no spaces, UTF-8): the digest of a JSON item.

    Recomputable with the standard library alone:
    ``hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()``.
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def checksum_record(step: int, state: Any, data_state: Mapping[str, int], config: Any | None) -> dict:
    """The record saved with ``step``: the digests of ``state``'s arrays, of the data position and of the
    config (omitted when None), and the step number (see the module docstring for the format)."""
    digests = {"data": json_sha256(data_state)} | ({} if config is None else {"config": json_sha256(config)})
    return {"algorithm": CHECKSUM_ALGORITHM, "step": int(step), "arrays": tree_checksums(state), "items": digests}


# ------------------------------------------------------------------------------------------------- checks
def check_json_item(step: int, directory: str, record: dict | None, name: str, value: Any) -> None:
    """Raises CheckpointDamagedError unless JSON item ``name`` (as read) has the digest saved in ``record``
    (nothing to check for steps saved before the record covered the item)."""
    saved = (record or {}).get("items", {}).get(name)
    if saved is None:
        return
    got = json_sha256(value)
    if got != saved:
        reason = f"checksum sha256 {got[:16]}... != saved {saved[:16]}..."
        item = "data position" if name == "data" else name
        raise CheckpointDamagedError(step, directory, reason, array=item)


def check_arrays(step: int, directory: str, state: Any, record: dict) -> None:
    """Raises CheckpointDamagedError naming the first array of ``state`` (as read) whose digest or dtype
    differs from ``record``'s (and how many more do)."""
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
            directory,
            f"checksum sha256 {str(got.get('sha256'))[:16]}... ({got.get('dtype')}) != saved "
            f"{saved[first]['sha256'][:16]}... ({saved[first]['dtype']}){more}",
            array=first,
        )


def unreadable_reason(e: BaseException, limit: int = 300) -> str:
    """A `CheckpointDamagedError` reason for a file that failed to read: "unreadable: <type>: <first words>"
    of the exception chain's innermost cause.

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
