r"""A noise-aware classifier f(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, sec. 4).

    python -m diffax.main --config=configs/noisy_classifier.py:gmm2d --workdir=/tmp/clf_gmm2d --mode=train,eval
    python -m diffax.main --config=configs/toy2d.py:gmm2d --workdir=/tmp/ddpm_gmm2d --mode=train
    python -m diffax.main --config=configs/toy2d.py:gmm2d --workdir=/tmp/ddpm_gmm2d --mode=sample,eval \
        --config.sampling.classifier_workdir=/tmp/clf_gmm2d --config.sampling.classifier_scale=2.0

Trained on x_t ~ q(x_t | x_0) at t ~ U{0..T-1} of the same schedule as the diffusion model it guides
(diffusion.* here must match that model's). Data after the colon: a labelled toy (gmm2d,
gmm2d_grid, gmm2d_ring, two_moons: an MLP classifier) or 'mnist' (the local MNIST files: a small
conv classifier). `--mode=eval` writes the accuracy on held-out data at t in {0, T/4, T/2, 3T/4,
T-1} (chance-level at T-1). Guided samples are drawn for the labels i mod K, and the toy eval
reports label_accuracy: how often the requested component is the most likely one.
"""

import os

from diffax.training import presets

NAMES = ("gmm2d", "gmm2d_grid", "gmm2d_ring", "two_moons", "mnist")
_NUM_CLASSES = {"gmm2d": 3, "gmm2d_grid": 25, "gmm2d_ring": 8, "two_moons": 2, "mnist": 10}


def get_config(arg=None):
    name = arg or "gmm2d"
    if name not in NAMES:
        raise ValueError(f"noisy_classifier: unknown data set {name!r}; allowed: {NAMES}")
    config = presets.base_config()
    config.seed = 0
    config.training.objective = "noisy_classifier"
    config.model = presets.classifier_model_config()
    config.model.num_classes = _NUM_CLASSES[name]
    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.training.log_every = 100
    config.training.ema_decay = 0.99
    if name == "mnist":
        mnist = presets.load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist.py"))
        config.data.name, config.data.path = mnist.data.name, mnist.data.path
        config.model.ch, config.model.ch_mult, config.model.num_groups = 16, (1, 2, 2), 8
        config.training.num_steps, config.training.batch_size, config.training.checkpoint_every = 3000, 128, 1000
        config.optim.lr, config.optim.warmup_steps = 1e-3, 100
    else:
        config.data.name = name
        config.model.hidden, config.model.num_layers = 128, 3
        config.training.num_steps, config.training.batch_size, config.training.checkpoint_every = 2000, 256, 1000
        config.optim.lr, config.optim.warmup_steps = 2e-3, 100
    config.lock()
    return config
