r"""CIFAR-10 (32x32x3, unconditional) with the DDPM paper's settings (Ho et al. 2020, appendix B).

UNet ch=128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16x16, dropout 0.1 (35.7M params);
Adam lr 2e-4, warm-up 5000, grad clip 1.0, batch 128, 800k steps, EMA 0.9999; T=1000, linear betas
1e-4..0.02, eps-prediction, L_simple, random flips; samples with the fixed variance sigma_t^2 = beta_t
(diffusion.var_type 'fixed_large', the DDPM code's CIFAR-10 setting; Ho et al. 2020, sec. 3.2, found it
and beta-tilde similar; --config.diffusion.var_type=fixed_small samples with beta-tilde).

Train -> sample 50k -> FID on a multi-device machine. Every mode uses all devices of all processes (one
process per host: run the same command on every host, with --coordinator_address/--num_processes/--process_id
or DIFFAX_* env vars, or under SLURM / a Cloud TPU slice, which JAX detects; see diffax/main.py). The FID
Inception is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a .pth needs torch; convert it once to
.npz where torch is installed, see diffax/models/inception.py):

    W=runs/cifar10; C=configs/cifar10.py
    python -m diffax.main --config=$C --workdir=$W --mode=train        # resumes from $W/checkpoints
    # 50,000 samples in chunks of 2,000 over every device; rerun the same command after a preemption: the
    # finished chunks in $W/samples/ are kept. Writes $W/samples.npz (uint8) and samples.png.
    S="--config.sampling.num_samples=50000 --config.sampling.batch_size=2000"
    python -m diffax.main --config=$C --workdir=$W --mode=sample $S
    # FID / IS / KID of those 50,000 samples (eval.num_samples, default 50,000) against the 50,000 training
    # images; their Inception statistics are computed once and cached in $W/fid_reference/. With pytorch-fid's
    # own statistics instead: --config.eval.fid_reference=fid_stats_cifar10_train.npz (mu, sigma; FID only).
    python -m diffax.main --config=$C --workdir=$W --mode=eval $S \
        --config.eval.inception_weights=weights/pt_inception-2015-12-05-6726825d.npz
    # eval.json: fid, inception_score (+ _std over 10 splits), kid (+ _std over 100 subsets of 1000),
    # fid_num_samples, inception_weights_sha256, fid_reference (the statistics file used) and its source.
    # Test-set bits/dim as well: --config.eval.bpd_num_examples=10000 --config.eval.bpd_batch_size=500.

(TFDS 'cifar10' prepared offline under data.data_dir.) The same three commands end to end on this repository's
4000-image subset, a tiny UNet, DDIM-20 and random Inception weights, on 8 forced CPU devices (a dry run of
the pipeline: the numbers mean nothing):

    export XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu
    python experiments/random_inception_weights.py /tmp/random_inception.npz
    W=/tmp/diffax_cifar_tiny; C=configs/cifar10.py
    T="--config.data.name=npz --config.data.path=../shared/data/cifar10-subset/cifar10_train_first4000_unlabeled.npz
       --config.model.ch=16 --config.model.ch_mult=(1,2) --config.model.num_res_blocks=1
       --config.model.attn_resolutions=() --config.model.num_groups=4 --config.model.dropout=0.0
       --config.diffusion.num_timesteps=100 --config.training.num_steps=20 --config.training.batch_size=32
       --config.training.checkpoint_every=20 --config.training.sample_every=0 --config.optim.warmup_steps=0"
    S="--config.sampling.method=ddim --config.sampling.num_steps=10 --config.sampling.num_samples=256
       --config.sampling.batch_size=64"
    python -m diffax.main --config=$C --workdir=$W --mode=train $T
    python -m diffax.main --config=$C --workdir=$W --mode=sample $T $S
    python -m diffax.main --config=$C --workdir=$W --mode=eval $T $S --config.eval.inception_weights=/tmp/random_inception.npz \
        --config.eval.num_samples=256 --config.eval.fid_num_train=256 --config.eval.fid_batch_size=32 \
        --config.eval.bpd_num_examples=16 --config.eval.bpd_batch_size=8

Expected (the paper, TPU v3-8, ~10.6 h for 800k steps): FID 3.17, IS 9.46 (Ho et al. 2020, Table 1; FID of
50,000 samples against the training set).

Published DDPM weights (variant ``:pretrained``; docs/pretrained.md). google/ddpm-cifar10-32 in diffusers'
layout (model.init_from = weights/ddpm-cifar10-32, relative to the working directory; the directory's
config.json and scheduler config must agree with this config, which they do), fetched once on a machine
with network access:  huggingface-cli download google/ddpm-cifar10-32 --local-dir weights/ddpm-cifar10-32
Sample / eval use these weights while the workdir has no checkpoint; --mode=train fine-tunes from them.
FID settings (eval.inception_weights, eval.fid_reference) as in the FID commands above. None of these
numbers was run here (no weights, no GPU); times are estimates for one H100-class GPU.

    I=weights/pt_inception-2015-12-05-6726825d.npz
    P="--config.eval.inception_weights=$I --config=configs/cifar10.py:pretrained"
    # DDPM, 1000 steps, sigma^2 = beta, x0 clipped: FID of 50k samples (paper: 3.17; Ho et al. 2020,
    # Table 1). 5e7 network calls: ~0.5-2 h.
    python -m diffax.main $P --workdir=runs/pt_ddpm1000 --mode=sample,eval
    # DDIM eta = 0, S steps, 'leading' spacing, no clipping (paper: FID 13.36 / 6.84 / 4.67 / 4.16 / 4.04 at
    # S = 10 / 20 / 50 / 100 / 1000; Song et al. 2021, Table 1): S/1000 of the DDPM time (+ ~1 min features).
    # (variant ddim: sampling.method ddim, eta 0, spacing 'leading', clip_x0 None)
    for S in 10 20 50 100 1000; do python -m diffax.main $P,ddim --workdir=runs/pt_ddim$S --mode=sample,eval \
        --config.sampling.num_steps=$S; done
    # Test-set bits/dim, full VLB over T = 1000 terms, 10,000 test images (paper: <= 3.75; 1e7 calls, ~10-30 min)
    python -m diffax.main --config=configs/cifar10.py:pretrained --workdir=runs/pt_bpd --mode=eval \
        --config.eval.bpd_num_examples=10000 --config.eval.bpd_batch_size=500 --config.sampling.num_samples=16
    # DPM-Solver++(2M) at 10 / 20 NFE (no paper value for this checkpoint; Lu et al. 2022 report FID ~4.7 /
    # ~4.2 at 10 / 20 NFE for a similar discrete CIFAR-10 model): not a sampling.method of the CLI yet; the
    # Python lines are in docs/pretrained.md (~1 min each + features).

Variant ``:edm``: EDM's unconditional CIFAR-10 training (Karras et al. 2022, Table 7 "VP, config F" column and
NVlabs/edm train.py --arch=ddpmpp --cond=0 --batch=512 --lr=10e-4 --dropout=0.13) with OUR UNet: loss
`diffax.edm.edm_loss` (ln sigma ~ N(-1.2, 1.2^2), sigma_data 0.5) on the network wrapped in
`diffax.models.Preconditioned` (kind 'edm'); Adam lr 1e-3 ramped up linearly over 10 Mimg (19,531 steps at
batch 512), batch 512, 200 Mimg (390,625 steps), dropout 0.13, no gradient clipping (EDM has none), EMA
half-life 0.5 Mimg -> decay per step 0.5^(512 / 500,000) = 0.999290 (our EMA warm-up instead of EDM's
ema_rampup_ratio 0.05), random flips and EDM's non-leaking augmentation both OFF; samples with EDM's Heun
sampler, 18 steps (35 NFE), sigma in [0.002, 80], rho 7, deterministic (paper: FID 1.97 with their network).
Differences from EDM's DDPM++ network (56M parameters; ours 56,524,291, counted by `jax.eval_shape` of
`init_params`): ours is DDPM's UNet with ch 128, ch_mult (2, 2, 2)
(256 channels at 32, 16, 8 as DDPM++'s 128 x [2, 2, 2]), 4 res blocks per resolution, attention at 16x16,
down/up-sampling inside residual blocks (model.resblock_updown, as SongUNet's down / up UNetBlocks) and
model.skip_rescale on (DDPM++'s skip_scale sqrt(1/2)); but the resampling of those blocks is average pooling /
nearest instead of the [1, 1] FIR filter, GroupNorm(32) everywhere, the
time embedding of c_noise = ln(sigma) / 4 by DDPM's sinusoid (DDPM++ uses positional embedding of
c_noise with channel_mult_noise 1 as well, but a different frequency layout), no augmentation
conditioning, and the loss averaged (not summed) over the 3072 dimensions (the same Adam step up to its eps).

    W=runs/cifar10_edm; C=configs/cifar10.py:edm
    python -m diffax.main --config=$C --workdir=$W --mode=train
    python -m diffax.main --config=$C --workdir=$W --mode=sample,eval --config.sampling.num_samples=50000 \
        --config.sampling.batch_size=2000 --config.eval.inception_weights=weights/pt_inception-2015-12-05-6726825d.npz
"""

from diffax.training import presets

VARIANTS = ("pretrained", "ddim", "edm")
EDM_BATCH = 512
EDM_EMA_HALFLIFE_IMAGES = 500_000  # EDM's ema_halflife_kimg = 500
PRETRAINED_DIR = "weights/ddpm-cifar10-32"


def get_config(arg=None):
    variants = presets.parse_variants(arg, VARIANTS, config_name="cifar10")
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
    if "pretrained" in variants:  # the architecture and schedule above are google/ddpm-cifar10-32's
        config.model.init_from = PRETRAINED_DIR
        config.sampling.num_samples = 50_000
        config.sampling.batch_size = 1000
    if "ddim" in variants:  # DDIM's Table 1 setting: eta = 0, 'leading' steps, no clipping (Song et al. 2021)
        config.sampling.method, config.sampling.num_steps, config.sampling.eta = "ddim", 10, 0.0
        config.sampling.spacing, config.sampling.clip_x0 = "leading", None
    if "edm" in variants:
        if len(variants) > 1:
            raise ValueError(f"cifar10: variant 'edm' stands alone, got {variants}")
        config.training.objective = "edm"
        config.training.batch_size = EDM_BATCH
        config.training.num_steps = 200_000_000 // EDM_BATCH  # 200 Mimg: 390,625 steps
        config.training.ema_decay = 0.5 ** (EDM_BATCH / EDM_EMA_HALFLIFE_IMAGES)  # 0.999290
        config.optim.lr = 1e-3
        config.optim.warmup_steps = 10_000_000 // EDM_BATCH  # lr ramp-up over 10 Mimg: 19,531 steps
        config.optim.grad_clip = None
        config.data.random_flip = False
        config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 128, (2, 2, 2), 4
        config.model.attn_resolutions, config.model.dropout, config.model.skip_rescale = (16,), 0.13, True
        config.model.resblock_updown = True
        config.diffusion.var_type = "fixed_small"  # unused by 'edm' (no discrete schedule); fixed, not learned
        config.edm.kind, config.edm.sigma_data, config.edm.p_mean, config.edm.p_std = "edm", 0.5, -1.2, 1.2
        config.sampling.method, config.sampling.num_steps, config.sampling.rho = "edm", 18, 7.0
        config.sampling.clip_x0 = None
    config.lock()
    return config
