r"""NCSN (Song & Ermon 2019) on MNIST: a UNet noise-conditional score network, denoising score
matching over 10 geometric sigmas, annealed Langevin sampling.

    python -m diffax.main --config=configs/ncsn_mnist.py --workdir=/tmp/diffax_ncsn_mnist --mode=train,sample

Data in [-1, 1] (twice NCSN's [0, 1] range), so the paper's levels sigma in [0.01, 1] become [0.02, 2]
and its step eps = 2 x 2e-5 (the code's step_lr) becomes 4 x 4e-5 = 1.6e-4 (alpha scales as sigma^2);
100 Langevin steps per level, then one Tweedie denoising step (Jolicoeur-Martineau et al. 2021).
The network sees log sigma as its time input and its output is divided by sigma (NCSNv2's
parameterization). Local IDX files by default (``--config.data.name=mnist`` for TFDS).
Expected: digits after ~20k steps (GPU: minutes); this is a CPU-heavy config, see
experiments/mnist_small.py for the DDPM counterpart sized for 2 cores.
"""

import os

from diffax.training import builders

_LOCAL_MNIST = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist"))


def get_config():
    config = builders.base_config()
    config.seed = 0
    config.data.name = "mnist_local"
    config.data.path = _LOCAL_MNIST
    config.training.objective = "ncsn"
    config.training.num_steps = 20_000
    config.training.batch_size = 128
    config.training.checkpoint_every = 2000
    config.training.log_every = 100
    config.training.ema_decay = 0.999
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 500
    config.model = builders.unet_model_config()
    config.model.ch = 64
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (7,)
    config.model.dropout = 0.0
    config.ncsn.sigma_max = 2.0
    config.ncsn.sigma_min = 0.02
    config.ncsn.num_levels = 10
    config.sampling.method = "annealed_langevin"
    config.sampling.langevin_eps = 1.6e-4
    config.sampling.steps_per_level = 100
    config.sampling.denoise = True
    config.sampling.num_samples = 64
    config.lock()
    return config
