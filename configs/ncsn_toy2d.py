r"""NCSN (Song & Ermon 2019) on a 2-D toy: an MLP noise-conditional score network trained by denoising
score matching over 10 geometric noise levels, sampled with annealed Langevin dynamics (Algorithm 1).

    python -m diffax.main --config=configs/ncsn_toy2d.py:gmm2d --workdir=/tmp/diffax_ncsn2d --mode=train,sample,eval

Data set after the colon (as configs/toy2d.py; default gmm2d: 3 anisotropic components, weights
0.3/0.5/0.2). Levels sigma in [0.01, 3] (sigma_1 about the data's diameter, NCSNv2's technique 1);
Langevin eps = 1e-4 (alpha_i = eps sigma_i^2 / sigma_L^2), 100 steps per level, final Tweedie
denoising step. The network sees log sigma as its time input and its output is divided by sigma
(`diffax.training.step.ncsn_score_fn`). Expected: samples.png covers the data; eval.json's
distance_ratio ~1-2 and, for the mixtures, mode weights near the true ones (the annealing is what
recovers the weights; plain Langevin does not, see experiments/score_2d.py). About a minute on 2 cores.
"""

from diffax.training import presets

NAMES = ("two_moons", "swiss_roll", "checkerboard", "gmm2d", "gmm2d_grid", "gmm2d_ring")


def get_config(arg=None):
    name = arg or "gmm2d"
    if name not in NAMES:
        raise ValueError(f"ncsn_toy2d: unknown data set {name!r}; allowed: {NAMES}")
    config = presets.base_config()
    config.seed = 0
    config.data.name = name
    config.training.objective = "ncsn"
    config.training.num_steps = 3000
    config.training.batch_size = 256
    config.training.checkpoint_every = 1000
    config.training.log_every = 200
    config.training.ema_decay = 0.995
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 100
    config.optim.decay_steps = 3000
    config.model.hidden = 256
    config.model.num_layers = 3
    config.ncsn.sigma_max = 3.0
    config.ncsn.sigma_min = 0.01
    config.ncsn.num_levels = 10
    config.sampling.method = "annealed_langevin"
    config.sampling.langevin_eps = 1e-4
    config.sampling.steps_per_level = 100
    config.sampling.denoise = True
    config.sampling.num_samples = 2000
    config.lock()
    return config
