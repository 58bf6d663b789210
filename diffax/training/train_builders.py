"""Config -> what a train step consumes: the objective's loss, timestep sampling, optimizer, data batches.

One of the per-part config readers of `diffax.training.builders` (which assembles them into an
`Experiment`); each function validates its section (``ValueError`` naming the bad value and what is
allowed): training.objective, ncsn.*, diffusion.* (the loss and its timestep sampling), optim.*,
training.batch_size and data.*.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from diffax import losses, schedules
from diffax._util import check_choice, check_int
from diffax.schedules import Schedule
from diffax.training import optim, step
from diffax.training.model_builders import learn_sigma

__all__ = ["OBJECTIVES", "TIMESTEP_SAMPLING", "objective", "build_sigmas", "build_loss_fn", "importance_sampling",
           "initial_extra", "build_lr_schedule", "build_optimizer", "per_process_batch_size", "build_data"]  # fmt: skip

OBJECTIVES = ("diffusion", "ncsn", "noisy_classifier")
TIMESTEP_SAMPLING = ("uniform", "importance")


def objective(config: ml_collections.ConfigDict) -> str:
    """training.objective, checked against `OBJECTIVES` and against model.name."""
    obj = check_choice("training.objective", config.training.objective, OBJECTIVES)
    if (obj == "noisy_classifier") != (config.model.name == "classifier"):
        raise ValueError(
            f"training.objective={obj!r} does not fit model.name={config.model.name!r}: 'noisy_classifier' trains "
            "model.name='classifier', and a classifier trains only with 'noisy_classifier'"
        )
    return obj


def build_sigmas(config: ml_collections.ConfigDict) -> jax.Array:
    """NCSN's geometric noise levels sigma_1 > ... > sigma_L from ncsn.* (`schedules.geometric_sigmas`)."""
    n = config.ncsn
    return schedules.geometric_sigmas(n.sigma_max, n.sigma_min, check_int("ncsn.num_levels", n.num_levels, 1))


def build_loss_fn(config: ml_collections.ConfigDict, model, schedule: Schedule) -> step.LossFn:
    """The training objective's `LossFn`: `step.diffusion_loss_fn` (diffusion.*, model.num_classes),
    `step.dsm_loss_fn` over `build_sigmas` ('ncsn') or `step.noisy_classifier_loss_fn` ('noisy_classifier')."""
    obj = objective(config)
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
