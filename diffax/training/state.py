"""The training state: one plain, checkpointable pytree.

`TrainState` holds arrays only (no apply function, no optimizer object), so Orbax can save and
restore it as it is and `jax.jit` can donate it. The per-step key is derived, never stored:
``key_t = jax.random.fold_in(state.rng, state.step)`` (big_vision's convention), so resuming at
step t reproduces the same randomness as an uninterrupted run.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any

__all__ = ["TrainState", "create_train_state"]


class TrainState(flax.struct.PyTreeNode):
    """Arrays of a training run.

    Fields:
      step:        int32 scalar, the number of optimizer updates applied so far.
      params:      the model parameters being optimized.
      ema_params:  exponential moving average of `params` (Polyak averaging; Ho et al. 2020 use
                   decay 0.9999 for images); what one samples from.
      opt_state:   the Optax optimizer state of `params`.
      rng:         a RAW uint32 key (``jax.random.PRNGKey(seed)``, shape (2,)) so Orbax can save it;
                   the key of step t is ``fold_in(rng, t)``.
      extra:       a dict pytree for optional state (e.g. a loss history for importance sampling
                   of t); ``{}`` by default.
    """

    step: jax.Array
    params: PyTree
    ema_params: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    extra: dict = flax.struct.field(default_factory=dict)


def _raw_key(rng: jax.Array) -> jax.Array:
    """A raw uint32 key from a raw or typed (``jax.random.key``) key; raises on anything else."""
    if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    rng = jnp.asarray(rng)
    if rng.dtype != jnp.uint32 or rng.ndim != 1:
        raise ValueError(
            f"rng must be a key from jax.random.PRNGKey(seed) (uint32, shape (2,)) or jax.random.key(seed), "
            f"got dtype {rng.dtype} shape {rng.shape}"
        )
    return rng


def create_train_state(
    *, params: PyTree, tx: optax.GradientTransformation, rng: jax.Array, extra: dict | None = None
) -> TrainState:
    """The state at step 0: ``opt_state = tx.init(params)``, ``ema_params`` = a copy of `params`.

    `rng` may be a raw (``jax.random.PRNGKey``) or typed (``jax.random.key``) key; it is stored raw.
    """
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(
        step=jnp.zeros((), dtype=jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
        rng=_raw_key(rng),
        extra={} if extra is None else dict(extra),
    )
