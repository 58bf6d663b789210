"""Importance sampling of timesteps by the loss's second moment (Nichol & Dhariwal 2021, sec. 3.3).

The VLB is a sum over t, L = sum_t L_t, estimated by sampling one t per example. With t ~ p and
weight w_t = 1 / (T p_t), E_{t~p}[w_t L_t] = (1/T) sum_t L_t for any p with full support, so the
estimator stays unbiased while p_t ∝ sqrt(E[L_t^2]) minimises its variance (Nichol & Dhariwal 2021,
eq. 18; improved-diffusion's ``LossSecondMomentResampler``).

The state is a pure pytree, meant to live in a TrainState's ``extra`` dict and be checkpointed:

    state = init_loss_history(T)                       # dict(values (T, H) f32, counts (T,) i32)
    t, w = sample_timesteps(key, state, batch_size)    # (B,) int32, (B,) float32
    loss = jnp.mean(w * per_example_loss(t))           # unbiased for the uniform-t objective
    state = update_loss_history(state, t, per_example_vb_loss)   # jit-safe, no Python loops

Like improved-diffusion, the history stores the last H values of L_t itself (not L_t^2) per t and
the proposal uses sqrt(mean(L_t^2)) over them; this is the same quantity as keeping L_t^2 and
taking sqrt(mean(.)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffax._util import check_int

Array = jnp.ndarray

__all__ = ["init_loss_history", "update_loss_history", "timestep_probs", "sample_timesteps"]


def init_loss_history(num_timesteps: int, history: int = 10) -> dict[str, Array]:
    """An empty loss history: dict(values=(T, history) float32 zeros, counts=(T,) int32 zeros).

    `history` is the number of recent L_t kept per timestep (10 in Nichol & Dhariwal 2021, sec. 3.3).
    """
    num_timesteps = check_int("num_timesteps", num_timesteps, 1)
    history = check_int("history", history, 1)
    return dict(
        values=jnp.zeros((num_timesteps, history), jnp.float32),
        counts=jnp.zeros((num_timesteps,), jnp.int32),
    )


def update_loss_history(state: dict[str, Array], t: Array, losses: Array) -> dict[str, Array]:
    """Append one batch of per-example losses L_{t_i} to the history, keeping the last H per t.

    Semantics are exactly those of improved-diffusion's ``update_with_all_losses``: the batch is
    consumed in order i = 0..B-1, so when a timestep appears several times in one batch its values
    are appended in batch order (the latest ones survive when more than H arrive). Implemented
    without loops: element i lands at position n_t + r_i - shift_t of row t, with n_t the stored
    count, r_i = #{j < i : t_j = t_i} and shift_t = max(0, n_t + c_t - H) (c_t = occurrences of t in
    the batch); positions < 0 are dropped. Jit-safe; gradients are stopped through `losses`.
    """
    values, counts = state["values"], state["counts"]
    t = jnp.asarray(t)
    losses = jnp.asarray(losses)
    if t.ndim != 1 or losses.shape != t.shape:
        raise ValueError(f"t and losses must both have shape (B,), got {t.shape} and {losses.shape}")
    num_t, hist = values.shape
    t = t.astype(jnp.int32)
    losses = jax.lax.stop_gradient(losses).astype(values.dtype)
    batch = t.shape[0]

    same = t[:, None] == t[None, :]
    earlier = jnp.arange(batch)[None, :] < jnp.arange(batch)[:, None]
    rank = jnp.sum(same & earlier, axis=1)  # r_i
    arrivals = jnp.zeros((num_t,), jnp.int32).at[t].add(1)  # c_t
    total = counts + arrivals
    shift = jnp.maximum(total - hist, 0)

    # New values scattered to their final slots (dropped ones sent out of bounds).
    pos = counts[t] + rank - shift[t]
    pos = jnp.where(pos >= 0, pos, hist)
    fresh = jnp.zeros_like(values).at[t, pos].set(losses, mode="drop")
    # Surviving old values move left by shift_t.
    k = jnp.arange(hist)[None, :]
    src = k + shift[:, None]
    old = jnp.take_along_axis(values, jnp.minimum(src, hist - 1), axis=1)
    new_values = jnp.where(src < counts[:, None], old, fresh)
    new_counts = jnp.minimum(total, hist)
    new_values = jnp.where(k < new_counts[:, None], new_values, 0.0)
    return dict(values=new_values, counts=new_counts.astype(counts.dtype))


def timestep_probs(state: dict[str, Array], uniform_prob: float = 0.001) -> Array:
    """Proposal p over {0..T-1}: shape (T,).

    Uniform (1/T) until every t has a full history of H values; then
    p_t = (1 - u) sqrt(mean_h L_{t,h}^2) / sum_s sqrt(mean_h L_{s,h}^2) + u / T  with u = `uniform_prob`
    (Nichol & Dhariwal 2021, sec. 3.3). Also uniform if every stored loss is 0.
    """
    if not 0.0 <= uniform_prob <= 1.0:
        raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob!r}")
    values, counts = state["values"], state["counts"]
    num_t, hist = values.shape
    rms = jnp.sqrt(jnp.mean(jnp.square(values), axis=-1))
    norm = jnp.sum(rms)
    warm = jnp.all(counts >= hist) & (norm > 0)
    p = (1.0 - uniform_prob) * rms / jnp.where(norm > 0, norm, 1.0) + uniform_prob / num_t
    return jnp.where(warm, p, jnp.full_like(p, 1.0 / num_t))


def sample_timesteps(
    key: Array, state: dict[str, Array], batch_size: int, *, uniform_prob: float = 0.001
) -> tuple[Array, Array]:
    """Draw t_i ~ p i.i.d. (`timestep_probs`) with importance weights w_i = 1 / (T p_{t_i}).

    E_{t~p}[w_t L_t] = (1/T) sum_t L_t for every loss L: the weighted batch mean is an unbiased
    estimate of the uniform-t objective (Nichol & Dhariwal 2021, sec. 3.3).
    Returns (t (B,) int32, weights (B,) float32).
    """
    batch_size = check_int("batch_size", batch_size, 1)
    p = timestep_probs(state, uniform_prob)
    num_t = p.shape[0]
    t = jax.random.choice(key, num_t, shape=(batch_size,), replace=True, p=p).astype(jnp.int32)  # inverse CDF
    weights = 1.0 / (num_t * p[t])
    return t, weights.astype(jnp.float32)
