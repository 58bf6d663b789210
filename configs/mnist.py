r"""MNIST (28x28x1) with a UNet, DDPM T=1000 linear, eps-prediction. Variants after a colon, comma-separated:

    python -m diffax.main --config=configs/mnist.py --workdir=/tmp/diffax_mnist --mode=train,sample,eval
    python -m diffax.main --config=configs/mnist.py:small,conditional --workdir=runs/mnist_small --mode=train

  (none)        ch 64, 2 res blocks, batch 128, 20k steps: recognisable digits (a GPU run: minutes).
  small         the 2-core-CPU UNet of experiments/mnist_small.py: ch 32, 1 res block, 8 groups, no dropout,
                batch 64, lr 5e-4 (warm-up 200), DDIM-100 sampling (~0.8 steps/s on 2 cores).
  tiny          ch 16 (experiments/schedules_and_losses.py's cells; otherwise as small).
  conditional   class-conditional (10 classes) with label dropout p_uncond = 0.1, for classifier-free guidance.
  ncsn          NCSN (Song & Ermon 2019): denoising score matching over 10 geometric sigmas in [0.02, 2]
                (the paper's [0.01, 1] for data in [0, 1], doubled for [-1, 1]), annealed Langevin sampling
                (eps = 1.6e-4: the paper's 2e-5 scaled by 2^2 x 2 for the doubled range), 100 steps per
                level + a final denoising step; the output is divided by sigma (NCSNv2).
  edm           EDM (Karras et al. 2022): the same UNet preconditioned (sigma_data 0.5, EDM's value for data in
                [-1, 1]), ln sigma ~ N(-1.2, 1.2^2), EDM's deterministic Heun sampler, 18 steps (35 NFE), no clipping.
  flow          flow matching / rectified flow (t uniform; the UNet sees 1000 t), Heun on the flow ODE, 18 steps
                (36 NFE), no clipping. edm / flow combine with small / tiny / conditional (not with each other).

Data: the local IDX files at ../shared/data/mnist (relative to the repository root, 'mnist_local'); with
TFDS prepared offline use ``--config.data.name=mnist`` (tfds data_source). Expected (no variant): loss
(L_simple) about 0.03, digits in samples.png after ~20k steps.
"""

import os

from diffax.training import presets

LOCAL_MNIST = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist"))
VARIANTS = ("small", "tiny", "conditional", "ncsn", "edm", "flow")


def get_config(arg=None):
    variants = presets.parse_variants(arg, VARIANTS, config_name="mnist")
    config = presets.base_config()
    config.seed = 0
    config.data.name = "mnist_local"
    config.data.path = LOCAL_MNIST
    config.training.num_steps = 20_000
    config.training.batch_size = 128
    config.training.checkpoint_every = 2000
    config.training.log_every = 100
    config.training.sample_every = 5000
    config.training.ema_decay = 0.999
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 500
    config.model = presets.unet_model_config()
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
    if "small" in variants or "tiny" in variants:
        config.model.ch = 16 if "tiny" in variants else 32
        config.model.num_res_blocks, config.model.num_groups, config.model.dropout = 1, 8, 0.0
        config.training.batch_size, config.training.checkpoint_every, config.training.sample_every = 64, 1000, 0
        config.optim.lr, config.optim.warmup_steps = 5e-4, 200
        config.sampling.method, config.sampling.num_steps, config.sampling.eta = "ddim", 100, 0.0
    if "conditional" in variants:
        config.model.num_classes = 10
        config.diffusion.p_uncond = 0.1
    if "ncsn" in variants:
        config.training.objective = "ncsn"
        config.training.sample_every = 0
        config.model.dropout = 0.0
        config.ncsn.sigma_max, config.ncsn.sigma_min, config.ncsn.num_levels = 2.0, 0.02, 10
        config.sampling.method, config.sampling.langevin_eps = "annealed_langevin", 1.6e-4
        config.sampling.steps_per_level, config.sampling.denoise, config.sampling.clip_x0 = 100, True, None
    if len({"ncsn", "edm", "flow"} & set(variants)) > 1:
        raise ValueError(f"mnist: variants ncsn / edm / flow are training objectives: pick one, got {variants}")
    if "edm" in variants:
        config.training.objective = "edm"
        config.sampling.method, config.sampling.num_steps, config.sampling.clip_x0 = "edm", 18, None
    if "flow" in variants:
        config.training.objective = "flow_matching"
        config.sampling.method, config.sampling.num_steps, config.sampling.clip_x0 = "heun", 18, None
    config.lock()
    return config
