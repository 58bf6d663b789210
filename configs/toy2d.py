r"""2-D toy data sets with an MLP, DDPM T=1000. Pick the data set after a colon:

    python -m diffax.main --config=configs/toy2d.py:swiss_roll --workdir=/tmp/diffax_swiss --mode=train,sample,eval
    python -m diffax.main --config=configs/toy2d.py:checkerboard --workdir=/tmp/diffax_checker --mode=train,sample,eval

Names: two_moons, swiss_roll, checkerboard, gmm2d, gmm2d_grid, gmm2d_ring (default swiss_roll).
Expected: samples.png traces the data; eval.json's distance_ratio (sliced W1 of the samples to
held-out data over the data-vs-data baseline) below ~2; for the mixtures mode weights within 0.05.
A few minutes on 2 CPU cores.
"""

from diffax.training import presets

NAMES = ("two_moons", "swiss_roll", "checkerboard", "gmm2d", "gmm2d_grid", "gmm2d_ring")


def get_config(arg=None):
    name = arg or "swiss_roll"
    if name not in NAMES:
        raise ValueError(f"toy2d: unknown data set {name!r}; allowed: {NAMES}")
    config = presets.base_config()
    config.seed = 0
    config.data.name = name
    config.training.num_steps = 6000
    config.training.batch_size = 256
    config.training.checkpoint_every = 2000
    config.training.log_every = 200
    config.training.ema_decay = 0.995
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 100
    config.optim.decay_steps = 6000
    config.model.hidden = 256
    config.model.num_layers = 4
    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.sampling.method = "ddpm"
    config.sampling.num_samples = 4000
    config.lock()
    return config
