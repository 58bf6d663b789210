"""Private helpers shared across diffax modules (the math, data, evaluation, training), each written once.

  ModelFn                 the type of a denoiser ``model_fn(x_t, t) -> output``
  check_choice            an option, returned if it is one of the allowed values (else ValueError naming both)
  check_shape, check_int  static (pre-trace) checks of a sample shape and of an int option
  check_positive          a concrete float option is finite and > 0 (a traced one passes)
  check_timestep_range    ValueError for a concrete index outside [0, T-1] (traced: no check)
  expand_to               (B,) -> (B, 1, ..., 1), to broadcast against a batch-first array
  mean_flat, sum_flat     mean / sum over every non-batch axis: (B, ...) -> (B,)
  check_timesteps         an explicit timestep subsequence: strictly monotone ints in [0, T-1]
  resolve_timesteps       the ascending subsequence a sampler visits (explicit, spaced, or all T)
  alphas_cumprod_on_grid  (abar_{tau_k}, abar_{tau_{k-1}}) on an ascending subsequence, abar_prev[0] = 1
  batch_t                 a scalar index as the (B,) int32 array a model is called with
  initial_x               x_T ~ N(0, I) of a shape, or a given x_init checked against it
  scan_trajectory         one lax.scan over the steps, optionally stacking the states
  write_atomic            write a file via temporary file + fsync + rename + directory fsync (never torn)
  npz_bytes               the bytes ``np.savez`` writes, to hand to `write_atomic`
  sha256_of_array         sha256 of an array's C-order bytes (optionally after its shape and dtype)

Nothing here imports another diffax module at import time (`schedules` is imported inside
`resolve_timesteps`), so any module, `diffax.schedules` included, may import this one.
"""

from __future__ import annotations

import hashlib
import io
import math
import numbers
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from diffax.schedules import Schedule

Array = jnp.ndarray
ModelFn = Callable[[Array, Array], Array]
"""A denoiser ``model_fn(x_t, t) -> output``: x_t batch-first, t an int32 array of shape (B,)."""

__all__ = [
    "Array",
    "ModelFn",
    "check_choice",
    "check_shape",
    "check_int",
    "check_positive",
    "check_timestep_range",
    "expand_to",
    "mean_flat",
    "sum_flat",
    "check_timesteps",
    "resolve_timesteps",
    "alphas_cumprod_on_grid",
    "batch_t",
    "initial_x",
    "scan_trajectory",
    "write_atomic",
    "npz_bytes",
    "sha256_of_array",
]


# --------------------------------------------------------------------------- boundary checks


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value``; ``ValueError("unknown {name} {value!r}; allowed: [...]")`` unless ``value in allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {list(allowed)}")
    return value


def check_shape(shape: Any) -> tuple[int, ...]:
    """A sample shape as a tuple of Python ints: non-empty, batch first, every entry an int >= 1."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of positive ints (batch first), got {shape!r}") from None
    if not dims or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in dims
    ):
        raise ValueError(f"shape must be a non-empty tuple of positive ints (batch first), got {shape!r}")
    return tuple(int(d) for d in dims)


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as a Python int; ValueError naming it unless it is an int (not a bool) >= minimum
    (and <= maximum, if given)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum
    if maximum is None:
        if not ok:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    elif not (ok and value <= maximum):
        raise ValueError(f"{name} must be an int in [{minimum}, {maximum}], got {value!r}")
    return int(value)


def check_number(name: str, value: Any, *, low: float = 0.0, strict: bool = False, allow_inf: bool = False) -> float:
    """``value`` (a config's int or float, not a bool) as a float; ValueError naming it unless it is finite
    (or +inf with ``allow_inf``) and >= low (> low with ``strict``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (math.isfinite(value) or (allow_inf and value == math.inf)) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be a {'' if allow_inf else 'finite '}number {'>' if strict else '>='} {low:g}, "
                         f"got {value!r}")  # fmt: skip
    return float(value)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """ValueError unless a CONCRETE scalar is finite and > 0 (>= 0 with ``allow_zero``).

    A traced value (a hyperparameter passed through jit) cannot be inspected and passes.
    """
    if isinstance(value, jax.core.Tracer):
        return
    scalar = isinstance(value, (numbers.Number, np.ndarray, jnp.ndarray)) and np.ndim(value) == 0
    if scalar and not isinstance(value, bool):
        v = float(value)
        if math.isfinite(v) and (v >= 0.0 if allow_zero else v > 0.0):
            return
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name} must be a finite scalar {bound}, got {value!r}")


def check_timestep_range(t: Any, num_timesteps: int) -> None:
    """ValueError if a CONCRETE index t has an entry outside [0, T-1], naming the bad values.

    A traced t (inside jit / vmap / scan) cannot be inspected and passes unchecked; see
    `diffax.diffusion.extract` for what an out-of-range traced index gives there.
    """
    if isinstance(t, jax.core.Tracer):
        return
    t_np = np.asarray(t)
    if t_np.size == 0 or not np.issubdtype(t_np.dtype, np.number):
        return
    bad = (t_np < 0) | (t_np > num_timesteps - 1)
    if np.any(bad):
        values = np.unique(t_np[bad]).tolist()
        raise ValueError(
            f"timestep index t out of range: got {values[:8]}{' ...' if len(values) > 8 else ''}; "
            f"allowed: integers in [0, {num_timesteps - 1}] (T = {num_timesteps})"
        )


# --------------------------------------------------------------------------- batch-first reductions


def expand_to(v: Array, ndim: int) -> Array:
    """v of shape (B,) (or any leading shape S) reshaped to S + (1,) * (ndim - len(S)).

    Broadcasts a per-example value against a batch-first array of rank ``ndim``.
    """
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def mean_flat(x: Array) -> Array:
    """Mean over every axis but the first (improved-diffusion's ``mean_flat``): (B, ...) -> (B,)."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def sum_flat(x: Array) -> Array:
    """Sum over every axis but the first: (B, ...) -> (B,)."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


# --------------------------------------------------------------------------- timestep grids


def check_timesteps(timesteps: Any, num_timesteps: int, *, min_len: int = 1) -> np.ndarray:
    """An explicit timestep subsequence, validated and returned ASCENDING (NumPy int64).

    Accepted: a 1-D int array of at least ``min_len`` entries, strictly monotone (ascending or
    descending; a descending one is reversed), within [0, T-1]. Resolved before tracing.
    """
    ts = np.asarray(timesteps)
    if ts.ndim != 1 or ts.shape[0] < min_len or not np.issubdtype(ts.dtype, np.integer):
        raise ValueError(
            f"timesteps must be a 1-D int array of at least {min_len} entries, got {timesteps!r}"
        )
    if ts.shape[0] > 1 and np.all(np.diff(ts) < 0):
        ts = ts[::-1]
    if np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] >= num_timesteps:
        raise ValueError(
            f"timesteps must be strictly monotone (ascending or descending) within "
            f"[0, {num_timesteps - 1}], got {np.asarray(timesteps).tolist()}"
        )
    return ts.astype(np.int64)


def resolve_timesteps(
    num_timesteps: int, num_steps: int | None, timesteps: Any, spacing: str, *, min_len: int = 1
) -> np.ndarray:
    """The ASCENDING subsequence tau_0 < ... < tau_{K-1} of {0..T-1} that a sampler visits.

    ``timesteps`` if given (`check_timesteps`), else ``schedules.space_timesteps(T, num_steps,
    spacing)``, else (both None) all T indices. Passing both is an error. NumPy, before tracing.
    """
    if timesteps is not None:
        if num_steps is not None:
            raise ValueError(
                f"pass either num_steps or timesteps, not both (got num_steps={num_steps!r})"
            )
        return check_timesteps(timesteps, num_timesteps, min_len=min_len)
    if num_steps is None:
        return np.arange(num_timesteps, dtype=np.int64)
    from diffax import schedules  # here, not at the top: schedules may import this module

    return schedules.space_timesteps(num_timesteps, num_steps, spacing).astype(np.int64)


def alphas_cumprod_on_grid(s: "Schedule", timesteps: Any) -> tuple[Array, Array]:
    """(abar, abar_prev) on an ascending subsequence tau: abar_k = alpha-bar_{tau_k},
    abar_prev_k = alpha-bar_{tau_{k-1}} with abar_prev_0 = 1 (the data, alpha-bar_{-1} = 1).

    The tables of a DDIM step from tau_k to tau_{k-1} (Song et al. 2021, eq. 12) and of its
    inverse; arrays of shape (K,) in ascending order of tau.
    """
    abar = jnp.take(s.alphas_cumprod, jnp.asarray(np.asarray(timesteps)))
    abar_prev = jnp.concatenate([jnp.ones((1,), abar.dtype), abar[:-1]])
    return abar, abar_prev


# --------------------------------------------------------------------------- sampler plumbing


def batch_t(t: Array, batch: int) -> Array:
    """The scalar index t as the (batch,) int32 array a model is called with."""
    return jnp.full((batch,), t, dtype=jnp.int32)


def initial_x(key: Array | None, shape: tuple[int, ...], dtype: Any, x_init: Array | None) -> Array:
    """x_T ~ N(0, I) of ``shape`` drawn from ``key``, or ``x_init`` (which must have that shape;
    ``key`` is then unused and may be None)."""
    if x_init is None:
        return jax.random.normal(key, shape, dtype=dtype)
    x_init = jnp.asarray(x_init)
    if tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected shape {tuple(shape)}")
    return x_init


def scan_trajectory(
    step: Callable[[Any, Any], Any],
    init: Any,
    xs: Any,
    return_trajectory: bool,
    state: Callable[[Any], Array] | None = None,
):
    """One ``lax.scan`` of ``step(carry, x_step) -> carry'`` over ``xs``.

    ``state(carry)`` is the sample x the trajectory records (the carry itself by default; e.g.
    ``lambda c: c[0]`` for a multistep solver carrying (x, previous prediction)). Returns
    ``state(final carry)``, or with ``return_trajectory`` also the (num_steps + 1, ...) stack of
    states, ``state(init)`` first and ``state(final)`` last. Without it nothing is stacked, so
    memory is flat in the number of steps.
    """
    state = (lambda c: c) if state is None else state

    def body(carry, inp):
        new = step(carry, inp)
        return new, (state(new) if return_trajectory else None)

    final, ys = jax.lax.scan(body, init, xs)
    if return_trajectory:
        return state(final), jnp.concatenate([state(init)[None], ys], axis=0)
    return state(final)


# --------------------------------------------------------------------------- files


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or str encoded as UTF-8) to ``path`` atomically and durably.

    The data go to ``{path}.tmp-{pid}`` in the same directory, are flushed and fsynced, the file is
    renamed over ``path`` (``os.replace``, atomic on POSIX), and the directory is fsynced so that the
    rename itself survives a power loss: a reader, or a run restarted after a crash, sees the old file
    or the complete new one, never a torn write. The temporary file is removed on failure.
    """
    path = os.fspath(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def npz_bytes(**arrays: Any) -> bytes:
    """The bytes ``np.savez(file, **arrays)`` writes (an uncompressed zip of .npy files), for `write_atomic`."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def sha256_of_array(a: Any, *, with_shape: bool = False) -> str:
    """Hex sha256 of ``a``'s bytes in C order (native, i.e. little-endian, byte order).

    Recomputable with numpy + hashlib alone: ``hashlib.sha256(np.ascontiguousarray(a).tobytes())``.
    With ``with_shape``, ``repr((a.shape, str(a.dtype)))`` (UTF-8) is hashed first, so arrays with the
    same bytes but another shape or dtype get another digest (the FID reference cache's key).
    """
    a = np.asarray(a)
    h = hashlib.sha256(repr((a.shape, str(a.dtype))).encode() if with_shape else b"")
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    return h.hexdigest()
