"""Training: state, optimizer, train step and its jit over the device mesh, multi-host start-up.

  state        `TrainState` (a plain checkpointable pytree), `create_train_state`
  optim        `make_optimizer` (DDPM's Adam + warm-up + clipping), `make_lr_schedule`, `ema_update`
  step         `diffusion_loss_fn`, `dsm_loss_fn`, `ncsn_score_fn`, `noisy_classifier_loss_fn`, `make_train_step`,
               `jit_train_step` (jit over `diffax.device_mesh`'s 'data' mesh, state donated), `check_finite`
  distributed  `initialize` (``jax.distributed.initialize`` from flags, env, or SLURM/TPU)

The run layer (import these modules directly; they pull in data and checkpoint code):
  presets      `base_config` (every key), model presets, `load_config('configs/x.py:variant')`
  builders     `build(config) -> Experiment`: checks a whole config and assembles its parts, once
  model_builders, train_builders, sampler_builders
               the parts `build_*`: config -> network and schedule / loss, optimizer, data / sampler
               (these four and `restore`'s upgrade and comparison of saved configs read configs; nothing else)
  train        `train_and_evaluate(experiment, workdir)`: the loop, NaN guard, checkpoints, workdir lock
  evaluate     `sample`, `evaluate`, `generate` (sample i depends only on (seed, i))
  sample_parts `draw_samples`: many samples over every device and process, resumable from parts on disk
  restore      `restore_ema(workdir)`, `load_run`, `read_run_config`, `stream_key`, `check_compatible`
"""

from diffax.training import distributed, optim, state, step  # noqa: F401
from diffax.training.distributed import initialize  # noqa: F401
from diffax.training.optim import ema_update, make_lr_schedule, make_optimizer  # noqa: F401
from diffax.training.state import TrainState, create_train_state  # noqa: F401
from diffax.training.step import (  # noqa: F401
    LossFn,
    check_finite,
    diffusion_loss_fn,
    dsm_loss_fn,
    jit_train_step,
    noisy_classifier_loss_fn,
    make_train_step,
    ncsn_score_fn,
)
