"""Training: state, optimizer, train step, data-parallel sharding, multi-host start-up.

  state        `TrainState` (a plain checkpointable pytree), `create_train_state`
  optim        `make_optimizer` (DDPM's Adam + warm-up + clipping), `make_lr_schedule`, `ema_update`
  step         `diffusion_loss_fn`, `dsm_loss_fn`, `ncsn_score_fn`, `noisy_classifier_loss_fn`, `make_train_step`, `check_finite`
  sharding     `make_mesh`, `shard_batch`, `replicate`, `jit_train_step` (jit over a 'data' mesh)
  distributed  `initialize` (``jax.distributed.initialize`` from flags, env, or SLURM/TPU)

The run layer (import these modules directly; they pull in data and checkpoint code):
  presets      `base_config` (every key), model presets, `load_config('configs/x.py:variant')`
  builders     `build(config) -> Experiment` (the only reader of a config) and its parts `build_*`
  train        `train_and_evaluate(experiment, workdir)`: the loop, NaN guard, checkpoints, workdir lock
  evaluate     `sample`, `evaluate`, `generate` (sample i depends only on (seed, i))
  restore      `restore_ema(workdir)`, `load_run`, `read_run_config`, `stream_key`, `check_compatible`
(`loop` re-exports the old names.)
"""

from diffax.training import distributed, optim, sharding, state, step  # noqa: F401
from diffax.training.distributed import initialize  # noqa: F401
from diffax.training.optim import ema_update, make_lr_schedule, make_optimizer  # noqa: F401
from diffax.training.sharding import (  # noqa: F401
    batch_sharding,
    jit_train_step,
    make_mesh,
    replicate,
    replicated,
    shard_batch,
)
from diffax.training.state import TrainState, create_train_state  # noqa: F401
from diffax.training.step import (  # noqa: F401
    LossFn,
    check_finite,
    diffusion_loss_fn,
    dsm_loss_fn,
    noisy_classifier_loss_fn,
    make_train_step,
    ncsn_score_fn,
)
