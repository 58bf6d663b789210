"""A saved state's layout (tree path -> shape, dtype) and the restore target checked against it.

A restore reads a step's arrays into the structure and shardings of a target state. Before anything is
read, the target's tree paths and shapes are compared with what was saved (`restore_target`): a difference
is a changed model, optimizer or data shape (a plain ValueError naming it), not damage. Arrays are read in
their SAVED dtype, so their digests can be checked (`diffax.checkpoint_integrity`), and cast afterwards.
The saved layout comes from the step's checksum record, or from Orbax's metadata for a step saved without
one (`saved_layout`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from diffax.checkpoint_integrity import CheckpointDamagedError, key_path_str, unreadable_reason

__all__ = ["Layout", "saved_layout", "restore_target", "saved_abstract_state"]

Layout = dict[str, tuple[tuple[int, ...], str | None]]
"""{tree path: (shape, dtype name or None when unknown)} of a saved state."""


def _state_metadata(step_dir: str) -> Any:
    """Orbax's metadata tree (shape and dtype per array) of the state item of a step directory."""
    meta = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir, "state"))
    return getattr(meta, "tree", meta)


def saved_layout(step: int, directory: str, record: dict | None) -> Layout:
    """The layout of step ``step``'s saved state: from its checksum ``record``, else Orbax's metadata
    (`CheckpointDamagedError` if that is unreadable)."""
    if record is not None:
        return {p: (tuple(a["shape"]), a["dtype"]) for p, a in record["arrays"].items()}
    try:
        flat, _ = jax.tree_util.tree_flatten_with_path(_state_metadata(os.path.join(directory, str(int(step)))))
    except Exception as e:  # noqa: BLE001 - unreadable metadata means a damaged step
        raise CheckpointDamagedError(step, directory, f"state metadata {unreadable_reason(e)}") from e
    layout = {}
    for path, m in flat:
        dtype = getattr(m, "dtype", None)
        shape = tuple(getattr(m, "shape", ()) or ())
        layout[key_path_str(path)] = (shape, None if dtype is None else str(np.dtype(dtype)))
    return layout


def restore_target(step: int, directory: str, target_state: Any, layout: Layout) -> tuple[Any, Any]:
    """(abstract tree to restore into, the target's abstract tree), both with the target's structure.

    The target's tree paths and shapes must match the saved ``layout`` (else a ValueError naming the
    first differences: not damage, a changed model). Arrays are restored in their SAVED dtype (so their
    digest can be checked) and cast to the target's afterwards.
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    flat, treedef = jax.tree_util.tree_flatten_with_path(target)
    paths = [key_path_str(p) for p, _ in flat]
    missing, extra = sorted(set(layout) - set(paths)), sorted(set(paths) - set(layout))
    problems = [f"saved but not in the target: {missing[:5]}"] if missing else []
    problems += [f"in the target but not saved: {extra[:5]}"] if extra else []
    for path, (_, leaf) in zip(paths, flat):
        if path in layout and tuple(leaf.shape) != layout[path][0]:
            problems.append(f"{path}: saved shape {layout[path][0]}, target {tuple(leaf.shape)}")
    if problems:
        raise ValueError(
            f"checkpoint {step} in {directory} does not match the target state (was the model, "
            f"optimizer or data shape changed since it was saved?): " + "; ".join(problems[:5])
        )
    as_saved = [
        jax.ShapeDtypeStruct(
            leaf.shape, np.dtype(layout[path][1] or leaf.dtype), sharding=getattr(leaf, "sharding", None)
        )
        for path, (_, leaf) in zip(paths, flat)
    ]
    return jax.tree_util.tree_unflatten(treedef, as_saved), target


def saved_abstract_state(step_dir: str) -> Any:
    """The saved state's tree as `jax.ShapeDtypeStruct`s on this process's first device (Orbax's metadata):
    a target that reads every array in its saved shape and dtype."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), _state_metadata(step_dir))
