r"""CIFAR-10 (32x32x3, unconditional) with the DDPM paper's settings (Ho et al. 2020, appendix B).

UNet ch=128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16x16, dropout 0.1 (35.7M params);
Adam lr 2e-4, warm-up 5000, grad clip 1.0, batch 128, 800k steps, EMA 0.9999; T=1000, linear betas
1e-4..0.02, eps-prediction, L_simple, fixed variance beta-tilde for sampling; random flips.

    python -m diffax.main --config=configs/cifar10.py --workdir=/tmp/diffax_cifar10 --mode=train,sample,eval

(TFDS 'cifar10' prepared offline under data.data_dir.) Small runs on the local 4000-image subset:

    python -m diffax.main --config=configs/cifar10.py --workdir=/tmp/diffax_cifar_small --mode=train,sample \
        --config.data.name=npz --config.data.path=../shared/data/cifar10-subset/cifar10_train_first4000_unlabeled.npz

Expected (the paper, TPU v3-8, ~10.6 h for 800k steps): FID 3.17, IS 9.46 (image metrics are not
in `eval` yet: it reports sample statistics).
"""

from diffax.training import presets


def get_config():
    config = presets.base_config()
    config.seed = 0
    config.data.name = "cifar10"
    config.data.random_flip = True
    config.training.num_steps = 800_000
    config.training.batch_size = 128
    config.training.checkpoint_every = 10_000
    config.training.keep_checkpoints = 3
    config.training.log_every = 100
    config.training.sample_every = 50_000
    config.training.ema_decay = 0.9999
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0
    config.model = presets.unet_model_config()  # ch=128, (1, 2, 2, 2), 2 blocks, attn 16, dropout 0.1
    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.diffusion.mean_type = "eps"
    config.diffusion.var_type = "fixed_large"  # Ho et al. sample CIFAR-10 with sigma_t^2 = beta_t
    config.diffusion.loss_type = "simple"
    config.sampling.method = "ddpm"
    config.sampling.num_samples = 64
    config.sampling.clip_x0 = 1.0
    config.lock()
    return config
