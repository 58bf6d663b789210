"""The training step: loss functions over a batch, one pure optimizer + EMA update, and its jit over the mesh.

A `LossFn` is ``loss_fn(params, key, batch, train) -> (scalar_loss, metrics)``: it closes over the
model's apply function and the static hyperparameters, and draws all its randomness (t, noise,
dropout, label dropout) from `key`. `make_train_step` turns it into
``train_step(state, batch) -> (state, metrics)``, a pure function with no jit inside; the caller
compiles it once (`jit_train_step`, over a `diffax.device_mesh` mesh). `check_finite` is the host-side guard
the loop calls on the metrics.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diffax import device_mesh, diffusion, losses
from diffax import importance_sampling as importance_lib
from diffax._util import check_choice
from diffax.diffusion import MEAN_TYPES, VAR_TYPES
from diffax.schedules import Schedule
from diffax.training.optim import ema_decay_at, ema_update
from diffax.training.state import TrainState

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]
LossFn = Callable[[PyTree, Array, Batch, bool], "tuple[Array, dict[str, Array]]"]
ApplyFn = Callable[..., Array]

PER_EXAMPLE_VB = "per_example_vb"
PER_EXAMPLE_T = "per_example_t"
LOSS_HISTORY = "loss_history"

__all__ = [
    "LOSS_HISTORY", "PER_EXAMPLE_T", "PER_EXAMPLE_VB", "LossFn", "diffusion_loss_fn", "dsm_loss_fn", "ncsn_score_fn",
    "noisy_classifier_loss_fn", "make_train_step", "jit_train_step", "check_finite",
]  # fmt: skip


def drop_labels(key: Array, y: Array, p_uncond: float, null_class: int) -> Array:
    """Each label replaced by the null class `null_class` with probability `p_uncond` (independently).

    Classifier-free guidance training (Ho & Salimans 2022, alg. 1).
    """
    drop = jax.random.bernoulli(key, p_uncond, y.shape)
    return jnp.where(drop, jnp.asarray(null_class, y.dtype), y)


def diffusion_loss_fn(
    apply_fn: ApplyFn,
    schedule: Schedule,
    *,
    loss_type: str = "simple",
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    lambda_vlb: float = 0.001,
    p_uncond: float = 0.0,
    num_classes: int | None = None,
) -> LossFn:
    """The batch-mean DDPM objective as a `LossFn`.

    loss = mean_b L(x0_b), with L = `diffax.losses.simple` (L_simple, Ho et al. 2020, eq. 14) for
    ``loss_type='simple'`` and `diffax.losses.hybrid` otherwise ('vlb', 'rescaled_vlb', 'hybrid',
    'rescaled_mse'; Nichol & Dhariwal 2021, sec. 3.1). t ~ U{0..T-1} and eps ~ N(0, I) are drawn
    inside from the step key, which is split three ways: dropout, loss (t and noise), label dropout.

    The model is called as ``apply_fn({'params': params}, x_t, t, y=y, train=train,
    rngs={'dropout': k})``. When `num_classes` is set and the batch has 'y', y is the class label,
    and while training each label becomes the null class `num_classes` with probability `p_uncond`
    (classifier-free guidance, Ho & Salimans 2022); otherwise y is None.

    If the batch carries 't' (B,) and 't_weights' (B,) (importance-sampled timesteps, put there by
    `make_train_step` with ``importance_sampling=True``), those t are used instead of uniform draws
    and the weights multiply the per-example loss (`diffax.losses.hybrid`).

    Metrics: 'loss', and for the hybrid family also the batch means 'mse' and 'vb' (bits/dim) and the
    per-example L_t and t under `PER_EXAMPLE_VB` / `PER_EXAMPLE_T` (consumed by `make_train_step`,
    which removes them from the metrics it returns).
    """
    check_choice("loss_type", loss_type, losses.LOSS_TYPES)
    check_choice("mean_type", mean_type, MEAN_TYPES)
    check_choice("var_type", var_type, VAR_TYPES)
    if not (isinstance(p_uncond, (int, float)) and 0.0 <= p_uncond <= 1.0):
        raise ValueError(f"p_uncond must be a number in [0, 1], got {p_uncond!r}")
    bad_classes = isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    if num_classes is not None and bad_classes:
        raise ValueError(f"num_classes must be None or an int >= 1, got {num_classes!r}")
    if p_uncond > 0 and num_classes is None:
        raise ValueError(f"p_uncond={p_uncond} needs num_classes (the null label), got num_classes=None")

    def loss_fn(params: PyTree, key: Array, batch: Batch, train: bool) -> tuple[Array, dict[str, Array]]:
        k_dropout, k_loss, k_label = jax.random.split(key, 3)
        x0 = batch["x"]
        y = batch.get("y") if num_classes is not None else None
        if y is not None and train and p_uncond > 0:
            y = drop_labels(k_label, y, p_uncond, num_classes)

        def model_fn(x_t: Array, t: Array) -> Array:
            return apply_fn({"params": params}, x_t, t, y=y, train=train, rngs={"dropout": k_dropout})

        t, t_weights = batch.get("t"), batch.get("t_weights")
        if loss_type == "simple":
            per_example = losses.simple(model_fn, schedule, k_loss, x0, mean_type=mean_type, t=t)
            loss = jnp.mean(per_example)
            return loss, {"loss": loss}
        per_example, terms = losses.hybrid(
            model_fn, schedule, k_loss, x0, mean_type=mean_type, var_type=var_type,
            loss_type=loss_type, lambda_vlb=lambda_vlb, t=t, t_weights=t_weights, return_terms=True,
        )  # fmt: skip
        loss = jnp.mean(per_example)
        return loss, {"loss": loss, "mse": jnp.mean(terms["mse"]), "vb": jnp.mean(terms["vb"]),
                      PER_EXAMPLE_VB: terms["vb"], PER_EXAMPLE_T: terms["t"]}  # fmt: skip

    return loss_fn


def ncsn_score_fn(
    apply_fn: ApplyFn, variables: PyTree, *, y: Array | None = None, train: bool = False, rngs=None
) -> Callable[[Array, Array], Array]:
    """The score s(x, sigma) of a noise-conditional network f (NCSN; Song & Ermon 2019, 2020):

        s(x, sigma) = f(x, log sigma) / sigma

    The network sees log sigma (shape (B,), or broadcast from a scalar) as its "t" argument (a float
    time embedding), and its output is divided by sigma: NCSNv2's parameterization (Song & Ermon
    2020, technique 3), under which ||sigma s|| is O(1) at every level. Pass the same function to
    `diffax.losses.dsm` (training) and to `diffax.samplers.annealed_langevin` (sampling).
    """

    def score_fn(x: Array, sigma: Array) -> Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
        out = apply_fn(variables, x, jnp.log(sigma), y=y, train=train, rngs=rngs or {})
        return out / sigma.reshape((-1,) + (1,) * (x.ndim - 1))

    return score_fn


def dsm_loss_fn(apply_fn: ApplyFn, sigmas: Array) -> LossFn:
    """Denoising score matching over noise levels as a `LossFn` (Song & Ermon 2019, eqs. 5-6).

    loss = mean_b `diffax.losses.dsm` with the score `ncsn_score_fn` (the model sees log sigma as t and
    its output is divided by sigma). The key is split into dropout and loss (level, noise) keys.
    Metrics: 'loss'.
    """
    sigmas = jnp.asarray(sigmas)
    if sigmas.ndim != 1 or sigmas.shape[0] < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D array, got shape {sigmas.shape}")

    def loss_fn(params: PyTree, key: Array, batch: Batch, train: bool) -> tuple[Array, dict[str, Array]]:
        k_dropout, k_loss = jax.random.split(key)
        score_fn = ncsn_score_fn(apply_fn, {"params": params}, train=train, rngs={"dropout": k_dropout})
        loss = jnp.mean(losses.dsm(score_fn, sigmas, k_loss, batch["x"]))
        return loss, {"loss": loss}

    return loss_fn


def noisy_classifier_loss_fn(apply_fn: ApplyFn, schedule: Schedule) -> LossFn:
    """Cross-entropy of a noise-aware classifier f(y | x_t, t) as a `LossFn` (classifier guidance;
    Dhariwal & Nichol 2021, sec. 4.1, guided-diffusion's classifier_train.py):

        t ~ U{0..T-1},  eps ~ N(0, I),  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
        loss = mean_b -log softmax(f(x_t, t))_{y_b}.

    The batch needs labels 'y' (B,). The model is called as ``apply_fn({'params': params}, x_t, t,
    train=train, rngs={'dropout': k})``. Metrics: 'loss' and 'accuracy' (argmax f = y on the noisy x_t).
    """

    def loss_fn(params: PyTree, key: Array, batch: Batch, train: bool) -> tuple[Array, dict[str, Array]]:
        if "y" not in batch:
            raise ValueError(f"noisy_classifier_loss_fn needs labels: the batch has keys {sorted(batch)}, no 'y'")
        k_dropout, k_t, k_noise = jax.random.split(key, 3)
        x0, y = batch["x"], batch["y"]
        t = jax.random.randint(k_t, (x0.shape[0],), 0, schedule.num_timesteps)
        x_t = diffusion.q_sample(schedule, x0, t, jax.random.normal(k_noise, x0.shape, x0.dtype))
        logits = apply_fn({"params": params}, x_t, t, train=train, rngs={"dropout": k_dropout})
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
        return loss, {"loss": loss, "accuracy": accuracy}

    return loss_fn


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    ema_decay: float,
    lr_schedule: optax.Schedule | None = None,
    importance_sampling: bool = False,
    uniform_prob: float = 0.001,
    ema_warmup: bool = False,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """One update, pure:  train_step(state, batch) -> (new_state, metrics).

        key     = fold_in(state.rng, state.step)
        (loss, metrics), g = value_and_grad(loss_fn)(params, key, batch, train=True)
        params' = params + tx.update(g, opt_state, params)
        ema'    = ema_decay * ema + (1 - ema_decay) * params'      (`ema_update`)
        step'   = step + 1

    With ``ema_warmup`` the decay of update k is ``min(ema_decay, (1 + k) / (10 + k))``
    (`diffax.training.optim.ema_decay_at`); the config default (training.ema_warmup) is on.

    Metrics: those of `loss_fn` plus 'grad_norm' (global L2 norm of g, before clipping) and, if
    `lr_schedule` is given, 'lr' (the rate used by this update). Under a 'data'-sharded batch the
    batch means in `loss_fn` are global means, so the update is the one of a single device.
    No jit here: compile with `jit_train_step` (or `jax.jit`).

    ``importance_sampling=True`` (Nichol & Dhariwal 2021, sec. 3.3): the state must carry
    ``extra['loss_history']`` (`diffax.importance_sampling.init_loss_history`). Each step then splits
    the step key into (loss key, t key), draws ``t, w = sample_timesteps(t_key, history, B)``
    (uniform until every t has 10 values, then p_t ∝ sqrt(E[L_t^2]) mixed with `uniform_prob`), passes
    them to `loss_fn` as ``batch['t']``, ``batch['t_weights']`` and appends the per-example L_t the
    loss reports (`PER_EXAMPLE_VB`) to the history. The weighted loss is an unbiased estimate of
    the uniform-t loss. Needs a loss from the hybrid family (one that computes L_t).
    """
    if not (isinstance(ema_decay, (int, float)) and 0.0 <= ema_decay <= 1.0):
        raise ValueError(f"ema_decay must be a number in [0, 1], got {ema_decay!r}")
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        key = jax.random.fold_in(state.rng, state.step)
        extra = state.extra
        if importance_sampling:
            if LOSS_HISTORY not in extra:
                raise ValueError(
                    f"importance_sampling=True needs state.extra[{LOSS_HISTORY!r}] "
                    f"(diffax.importance_sampling.init_loss_history(T)); state.extra has keys {sorted(extra)}"
                )
            key, k_t = jax.random.split(key)
            history = extra[LOSS_HISTORY]
            t, w = importance_lib.sample_timesteps(k_t, history, batch["x"].shape[0], uniform_prob=uniform_prob)
            batch = dict(batch, t=t, t_weights=w)
        (loss, metrics), grads = grad_fn(state.params, key, batch, True)
        metrics = dict(metrics)
        per_example_vb, per_example_t = metrics.pop(PER_EXAMPLE_VB, None), metrics.pop(PER_EXAMPLE_T, None)
        if importance_sampling:
            if per_example_vb is None:
                raise ValueError(
                    "importance_sampling=True needs a loss that reports per-example L_t (diffusion_loss_fn "
                    "with loss_type in ('vlb', 'rescaled_vlb', 'hybrid', 'rescaled_mse'), not 'simple')"
                )
            extra = dict(extra, **{LOSS_HISTORY: importance_lib.update_loss_history(history, per_example_t,
                                                                                       per_example_vb)})
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            ema_params=ema_update(state.ema_params, params, ema_decay_at(state.step, ema_decay, ema_warmup)),
            opt_state=opt_state,
            extra=extra,
        )
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
        return new_state, metrics

    return train_step


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
    """``jax.jit(train_step, in_shardings=(replicated, rows), out_shardings=(replicated, replicated),
    donate_argnums=(0,))``: state replicated and donated (updated in place), batch rows split over 'data'.

    The returned function compiles once per (state structure, batch shape) and must be called on
    every process with its `diffax.device_mesh.shard_batch` output. Put the state on the mesh first
    (``state = device_mesh.replicate(state, mesh)``): a state still on one device has another input
    sharding than the step's output, so the second call would trace and compile again.
    """
    rep, data = device_mesh.replicated(mesh), device_mesh.row_sharding(mesh)
    return jax.jit(train_step, in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=(0,))


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
    """Raise `FloatingPointError` if any metric is NaN or infinite (host side; fetches the values).

    The message names the step and every non-finite metric, e.g.
    ``"non-finite metrics at step 1200: loss=nan, grad_norm=inf"``. The training loop calls it and
    stops, keeping the last good checkpoint.
    """
    values = jax.device_get(dict(metrics))
    bad = [f"{name}={np.asarray(v).item() if np.size(v) == 1 else v}" for name, v in sorted(values.items())
           if not np.all(np.isfinite(np.asarray(v, dtype=np.float64)))]  # fmt: skip
    if bad:
        raise FloatingPointError(
            f"non-finite metrics at step {int(step)}: {', '.join(bad)} (stopping; the last checkpoint "
            f"before step {int(step)} is the last good one)"
        )
