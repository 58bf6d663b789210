r"""The seed experiment: 800 points of 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2), MLP, DDPM T=1000.

    python -m diffax.main --config=configs/gmm1d.py --workdir=/tmp/diffax_gmm1d --mode=train,sample,eval

Expected (measured, ~15 s on 2 CPU cores): W1 of the 2000 samples to the true mixture 1.6x the mean
W1 of 2000 fresh data points (tests/test_main.py bounds it by 2.5x), mode weights 0.505 / 0.495;
samples.png is a histogram over the true density.
"""

from diffax.training import presets


def get_config():
    config = presets.base_config()
    config.seed = 0
    config.data.name = "gmm1d"
    config.data.num_train = 800
    config.training.num_steps = 3000
    config.training.batch_size = 200
    config.training.checkpoint_every = 1000
    config.training.log_every = 100
    config.training.ema_decay = 0.999
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 100
    config.model.hidden = 64
    config.model.num_layers = 2
    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.sampling.method = "ddpm"
    config.sampling.num_samples = 2000
    config.lock()
    return config
