"""Config -> what a train step consumes: the objective's loss, timestep sampling, optimizer, data batches.

One of the per-part config readers of `diffax.training.builders` (which assembles them into an
`Experiment`); each function validates its section (``ValueError`` naming the bad value and what is
allowed): training.objective, ncsn.*, edm.*, flow.*, sde.* (through `score_sde_builders`), diffusion.* (the
loss and its timestep sampling), optim.*, training.batch_size and data.*.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffax import edm, flow_matching, losses, schedules
from diffax._util import check_choice, check_int
from diffax.schedules import Schedule
from diffax.training import optim, score_sde_builders, step
from diffax.training.model_builders import learn_sigma

__all__ = ["OBJECTIVES", "CONTINUOUS_OBJECTIVES", "FLOW_TIME_SCALE", "TIMESTEP_SAMPLING", "objective", "build_sigmas",
           "edm_loss_fn", "flow_loss_fn", "build_loss_fn", "importance_sampling",
           "initial_extra", "build_lr_schedule", "build_optimizer", "per_process_batch_size", "build_data"]  # fmt: skip

OBJECTIVES = ("diffusion", "ncsn", "noisy_classifier", "edm", "flow_matching", "score_sde")
CONTINUOUS_OBJECTIVES = ("edm", "flow_matching", "score_sde")  # no discrete schedule, no learned variance, no VLB
# A flow-matching network sees 1000 t (t in [0, 1]) as its time input: the range of the discrete models'
# integer timesteps, for which the sinusoidal embedding's frequencies (`diffax.models.layers.
# timestep_embedding`, max period 10^4) were chosen.
FLOW_TIME_SCALE = 1000.0
TIMESTEP_SAMPLING = ("uniform", "importance")


def objective(config: ml_collections.ConfigDict) -> str:
    """training.objective, checked against `OBJECTIVES` and against model.name."""
    obj = check_choice("training.objective", config.training.objective, OBJECTIVES)
    if (obj == "noisy_classifier") != (config.model.name == "classifier"):
        raise ValueError(
            f"training.objective={obj!r} does not fit model.name={config.model.name!r}: 'noisy_classifier' trains "
            "model.name='classifier', and a classifier trains only with 'noisy_classifier'"
        )
    if obj in CONTINUOUS_OBJECTIVES and config.model.get("init_from"):
        raise ValueError(f"model.init_from={config.model.init_from!r} holds a discrete-time eps-model: it cannot "
                         f"start a training.objective={obj!r} run; sample it with sampling.method='edm' instead")
    if obj in CONTINUOUS_OBJECTIVES and learn_sigma(config):
        raise ValueError(f"training.objective={obj!r} trains no variance: diffusion.var_type="
                         f"{config.diffusion.var_type!r} is for 'diffusion'; use 'fixed_small'")  # fmt: skip
    return obj


def build_sigmas(config: ml_collections.ConfigDict) -> jax.Array:
    """NCSN's geometric noise levels sigma_1 > ... > sigma_L from ncsn.* (`schedules.geometric_sigmas`)."""
    n = config.ncsn
    return schedules.geometric_sigmas(n.sigma_max, n.sigma_min, check_int("ncsn.num_levels", n.num_levels, 1))


def _labels(key, batch, train: bool, num_classes: int | None, p_uncond: float):
    """The batch's labels (None for an unconditional model), each replaced by the null class with probability
    p_uncond while training (`step.drop_labels`, as `step.diffusion_loss_fn` does)."""
    y = batch.get("y") if num_classes is not None else None
    if y is not None and train and p_uncond > 0:
        y = step.drop_labels(key, y, p_uncond, num_classes)
    return y


def edm_loss_fn(apply_fn, *, p_mean: float, p_std: float, sigma_data: float, num_classes: int | None = None,
                p_uncond: float = 0.0) -> step.LossFn:
    """The batch mean of `diffax.edm.edm_loss` as a `LossFn`: ``apply_fn`` is the preconditioned network's
    (`diffax.models.Preconditioned`, called ``apply_fn({'params': p}, x, sigma, y=y, train=train, rngs=...)``
    -> D(x; sigma)). The step key is split three ways: dropout, loss (sigma and noise), label dropout.
    Metrics: 'loss'."""

    def loss_fn(params, key, batch, train):
        k_dropout, k_loss, k_label = jax.random.split(key, 3)
        y = _labels(k_label, batch, train, num_classes, p_uncond)

        def denoise_fn(x, sigma):
            return apply_fn({"params": params}, x, sigma, y=y, train=train, rngs={"dropout": k_dropout})

        loss = jnp.mean(edm.edm_loss(denoise_fn, k_loss, batch["x"], p_mean=p_mean, p_std=p_std,
                                     sigma_data=sigma_data))  # fmt: skip
        return loss, {"loss": loss}

    return loss_fn


def flow_loss_fn(apply_fn, *, t_sampling: str, logit_mean: float, logit_std: float, num_classes: int | None = None,
                 p_uncond: float = 0.0) -> step.LossFn:
    """The batch mean of `diffax.flow_matching.flow_matching_loss` as a `LossFn`: the network predicts the
    velocity eps - x_0 at time t, called as ``apply_fn({'params': p}, x_t, FLOW_TIME_SCALE * t, y=y, ...)``.
    The step key is split three ways: dropout, loss (t and noise), label dropout. Metrics: 'loss'."""

    def loss_fn(params, key, batch, train):
        k_dropout, k_loss, k_label = jax.random.split(key, 3)
        y = _labels(k_label, batch, train, num_classes, p_uncond)

        def velocity_fn(x, t):
            return apply_fn({"params": params}, x, FLOW_TIME_SCALE * t, y=y, train=train, rngs={"dropout": k_dropout})

        loss = jnp.mean(flow_matching.flow_matching_loss(velocity_fn, k_loss, batch["x"], t_sampling=t_sampling,
                                                         logit_mean=logit_mean, logit_std=logit_std))  # fmt: skip
        return loss, {"loss": loss}

    return loss_fn


def _number(name: str, value, *, positive: bool = False) -> float:
    """``value`` as a float; ValueError unless it is a finite number (> 0 with ``positive``), not a bool."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return float(value)


def build_loss_fn(config: ml_collections.ConfigDict, model, schedule: Schedule) -> step.LossFn:
    """The training objective's `LossFn`: `step.diffusion_loss_fn` (diffusion.*, model.num_classes),
    `step.dsm_loss_fn` over `build_sigmas` ('ncsn'), `step.noisy_classifier_loss_fn` ('noisy_classifier'),
    `edm_loss_fn` (edm.p_mean, p_std, sigma_data), `flow_loss_fn` (flow.*) or, for 'score_sde',
    `score_sde_builders.build_loss_fn` (sde.*)."""
    obj = objective(config)
    num_classes, p_uncond = config.model.num_classes, float(config.diffusion.p_uncond)
    if obj == "score_sde":
        return score_sde_builders.build_loss_fn(config, model)
    if obj == "edm":
        e = config.edm
        return edm_loss_fn(model.apply, p_mean=_number("edm.p_mean", e.p_mean),
                           p_std=_number("edm.p_std", e.p_std, positive=True),
                           sigma_data=_number("edm.sigma_data", e.sigma_data, positive=True),
                           num_classes=num_classes, p_uncond=p_uncond)  # fmt: skip
    if obj == "flow_matching":
        f = config.flow
        return flow_loss_fn(model.apply, t_sampling=check_choice("flow.t_sampling", f.t_sampling,
                                                                 flow_matching.T_SAMPLINGS),
                            logit_mean=_number("flow.logit_mean", f.logit_mean),
                            logit_std=_number("flow.logit_std", f.logit_std, positive=True),
                            num_classes=num_classes, p_uncond=p_uncond)  # fmt: skip
    if obj == "ncsn":
        return step.dsm_loss_fn(model.apply, build_sigmas(config))
    if obj == "noisy_classifier":
        return step.noisy_classifier_loss_fn(model.apply, schedule)
    d = config.diffusion
    return step.diffusion_loss_fn(
        model.apply, schedule, loss_type=d.loss_type, mean_type=d.mean_type, var_type=d.var_type,
        lambda_vlb=d.lambda_vlb, p_uncond=d.p_uncond, num_classes=config.model.num_classes,
    )  # fmt: skip


def importance_sampling(config: ml_collections.ConfigDict) -> bool:
    """True for diffusion.timestep_sampling='importance'; raises for an unknown value, or where the loss has
    no per-timestep L_t to learn p_t ∝ sqrt(E[L_t^2]) from (`diffax.losses.hybrid`):

      loss_type 'vlb' / 'rescaled_vlb'             L_t for every var_type: allowed;
      loss_type 'hybrid' / 'rescaled_mse'          L_t only with var_type 'learned' / 'learned_range'; with a
                                                   fixed variance the L_t term has nothing to train and is
                                                   omitted (L_t = 0 for every t: t would stay uniform);
      loss_type 'simple', or training.objective other than 'diffusion'   no L_t at all.
    """
    d = config.diffusion
    if check_choice("diffusion.timestep_sampling", d.timestep_sampling, TIMESTEP_SAMPLING) == "uniform":
        return False
    obj = objective(config)
    if obj != "diffusion":
        raise ValueError(f"diffusion.timestep_sampling='importance' applies to training.objective='diffusion', got "
                         f"{obj!r}; use 'uniform'")  # fmt: skip
    if check_choice("diffusion.loss_type", d.loss_type, losses.LOSS_TYPES) in ("vlb", "rescaled_vlb"):
        return True
    if d.loss_type in ("hybrid", "rescaled_mse") and learn_sigma(config):
        return True
    got = (f"loss_type={d.loss_type!r}, which has no L_t term" if d.loss_type == "simple" else
           f"loss_type={d.loss_type!r} with the fixed var_type={d.var_type!r}, whose L_t term is omitted (L_t = 0)")
    raise ValueError("diffusion.timestep_sampling='importance' needs a loss with a per-timestep L_t to learn p_t "
                     "from: diffusion.loss_type 'vlb' / 'rescaled_vlb', or 'hybrid' / 'rescaled_mse' with a learned "
                     f"variance (diffusion.var_type 'learned' / 'learned_range'); got {got}: t would stay uniform")


def initial_extra(config: ml_collections.ConfigDict) -> dict:
    """The TrainState.extra of step 0: the loss history when importance-sampling t, else {}."""
    if importance_sampling(config):
        from diffax import importance_sampling as importance_lib

        return {step.LOSS_HISTORY: importance_lib.init_loss_history(int(config.diffusion.num_timesteps))}
    return {}


def build_lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """`optim.make_lr_schedule` from optim.lr / warmup_steps / decay_steps."""
    o = config.optim
    return optim.make_lr_schedule(lr=o.lr, warmup_steps=o.warmup_steps, decay_steps=o.decay_steps)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """`optim.make_optimizer` from optim.* (Adam, linear warm-up, global-norm clipping)."""
    o = config.optim
    return optim.make_optimizer(lr=o.lr, warmup_steps=o.warmup_steps, grad_clip=o.grad_clip,
                                weight_decay=o.weight_decay, decay_steps=o.decay_steps)  # fmt: skip


def per_process_batch_size(config: ml_collections.ConfigDict) -> int:
    """training.batch_size / jax.process_count(); raises if it does not divide."""
    global_bs = check_int("training.batch_size", config.training.batch_size, 1)
    n = jax.process_count()
    if global_bs % n:
        raise ValueError(f"training.batch_size={global_bs} (global) must be divisible by the process count {n}")
    return global_bs // n


def build_data(config: ml_collections.ConfigDict, *, split: str = "train"):
    """`diffax.data.build_batches` for this process: per-process batch, seeded by config.seed."""
    from diffax import data  # imported here: tfds is slow to import and only training needs it

    return data.build_batches(
        config.data.name,
        batch_size=per_process_batch_size(config),
        seed=config.seed,
        split=split,
        data_dir=config.data.data_dir,
        path=config.data.path,
        random_flip=config.data.random_flip,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_train=config.data.num_train,
    )
