r"""MNIST (28x28x1, unconditional) with a small UNet, DDPM T=1000 linear, eps-prediction.

Data: by default the local IDX files at ../shared/data/mnist (relative to the repository root,
'mnist_local'); with TFDS prepared offline use ``--config.data.name=mnist`` (tfds data_source).

    python -m diffax.main --config=configs/mnist.py --workdir=/tmp/diffax_mnist --mode=train,sample,eval

Expected: recognisable digits in samples.png after ~20k steps (a GPU run: minutes); on a CPU, see
experiments/mnist_small.py (a smaller UNet, a bounded-time run). Loss (L_simple) about 0.03.
"""

import os

from diffax.training import builders

_LOCAL_MNIST = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist"))


def get_config():
    config = builders.base_config()
    config.seed = 0
    config.data.name = "mnist_local"
    config.data.path = _LOCAL_MNIST
    config.training.num_steps = 20_000
    config.training.batch_size = 128
    config.training.checkpoint_every = 2000
    config.training.log_every = 100
    config.training.sample_every = 5000
    config.training.ema_decay = 0.999
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 500
    config.model = builders.unet_model_config()
    config.model.ch = 64
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (7,)
    config.model.dropout = 0.1
    config.model.num_groups = 32
    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.sampling.method = "ddpm"
    config.sampling.num_samples = 64
    config.sampling.clip_x0 = 1.0
    config.lock()
    return config
