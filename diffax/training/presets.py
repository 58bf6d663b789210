"""The config schema and model presets that every config in ``configs/`` starts from, and the loader
of config files with variants (``configs/mnist.py:small,conditional``).

``base_config()`` lists every key a diffax config has (a contract: the config files lock it, so a
misspelled key is an error). The presets return a ``model`` section for each network. A config file
is plain Python with ``get_config(arg=None)``; `load_config` imports one by path, as
``--config=FILE[:ARG]`` does on the command line (big_vision's convention).
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

__all__ = ["base_config", "mlp_model_config", "unet_model_config", "classifier_model_config", "load_config",
           "parse_variants"]  # fmt: skip


def mlp_model_config() -> ml_collections.ConfigDict:
    """`diffax.models.MLP`'s fields (learn_sigma is derived from diffusion.var_type)."""
    return ml_collections.ConfigDict(
        dict(name="mlp", hidden=128, num_layers=3, time_embed_dim=64, activation="silu", dropout=0.0,
             num_classes=config_dict.placeholder(int), dtype="float32")  # fmt: skip
    )


def unet_model_config() -> ml_collections.ConfigDict:
    """`diffax.models.UNet`'s fields, DDPM CIFAR-10 defaults (Ho et al. 2020, appendix B)."""
    return ml_collections.ConfigDict(
        dict(name="unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
             resblock_updown=False, use_scale_shift_norm=False, num_heads=1, num_head_channels=-1,
             num_groups=32, num_classes=config_dict.placeholder(int), skip_rescale=False, dtype="float32",
             init_from="")  # fmt: skip
    )


def classifier_model_config() -> ml_collections.ConfigDict:
    """`diffax.models.Classifier`'s fields for a noise-aware classifier f(y | x_t, t) (classifier guidance,
    Dhariwal & Nichol 2021, sec. 4): time-conditional; ch/ch_mult/num_res_blocks for images, hidden /
    num_layers for vectors."""
    return ml_collections.ConfigDict(
        dict(name="classifier", num_classes=10, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, hidden=256, num_layers=2,
             time_conditional=True, dropout=0.0, num_groups=32)  # fmt: skip
    )


def base_config() -> ml_collections.ConfigDict:
    """Every key a diffax config has, with defaults (unlocked; the config files lock it).

    seed                       int, the root of every key (init, data order, steps, sampling) and of the toy
                               data sets: a resume must keep it; sample / eval may change it (other samples).
    data.name                  a toy ('gmm1d', 'gmm2d', 'swiss_roll', 'two_moons', 'checkerboard') or image
                               data set ('mnist', 'fashion_mnist', 'cifar10', 'celeb_a' via tfds;
                               'mnist_local' IDX files in data.path; 'npz' file data.path).
    data.path / data.data_dir  local files / a tfds data_dir.      data.num_train: toy set size / subset.
    data.random_flip           horizontal flips (images).
    training.num_steps         total optimizer steps (a resumed run trains up to it).
    training.batch_size        GLOBAL batch size (split over processes, then over devices); a resume must keep
                               it (the saved data position counts its batches).
    training.checkpoint_every  save every n steps (and at the end); keep_checkpoints: keep the last K.
    training.log_every         log metrics (TensorBoard + metrics.jsonl) every n steps; each row holds the means
                               over the steps since the previous row and "steps_averaged", their count
                               (fewer than log_every in the first row after a resume).
    training.lock_stale_after_s   seconds (> 0): the trainer refreshes WORKDIR/.lock every min(30, this / 4) s;
                               a lock of another host not refreshed for longer is stale and taken over with a
                               warning (a preempted job restarted elsewhere); a fresher one is refused
                               (`diffax.workdir_lock`).
    training.sample_every      save a sample picture every n steps (0 = off).
    training.ema_decay         EMA of the parameters (sampling uses the EMA); ema_warmup: decay of update k
                               min(ema_decay, (1 + k) / (10 + k)) (`optim.ema_decay_at`), so the EMA
                               forgets the initialisation (without it, 0.999^n of it stays).
    training.objective         'diffusion' (DDPM family; diffusion.*), 'ncsn' (denoising score matching over
                               ncsn.num_levels geometric sigmas in [ncsn.sigma_min, ncsn.sigma_max], Song &
                               Ermon 2019) or 'noisy_classifier' (cross-entropy of f(y | x_t, t) on labelled
                               data, x_t ~ q(x_t | x_0) with diffusion.*; model.name 'classifier'),
                               'edm' (Karras et al. 2022: the network wrapped in `diffax.models.Preconditioned`
                               (edm.kind, edm.sigma_data), loss `diffax.edm.edm_loss` with ln sigma ~
                               N(edm.p_mean, edm.p_std^2)) or 'flow_matching' (`diffax.flow_matching`: x_t =
                               (1 - t) x_0 + t eps, the network predicts eps - x_0 and sees 1000 t as its time
                               input; t ~ flow.t_sampling 'uniform' | 'logit_normal' (flow.logit_mean, logit_std)),
                               or 'score_sde' (Song et al. 2021's continuous-time denoising score matching,
                               `diffax.score_sde`: t ~ U(sde.t_eps, T) on sde.process 'vp' (sde.beta_min,
                               beta_max) | 'vp_cosine' | 've' (sde.sigma_min, sigma_max), lambda(t) = sigma^2 or
                               g^2 (sde.likelihood_weighting); VP family: an eps-network at time input 999 t; VE:
                               the output divided by sigma, time input log sigma; sampled by sampling.method
                               'ode' | 'pc' | 'edm', ending at sde.sampling_eps (None: 1e-3 VP, 1e-5 VE);
                               `diffax.training.score_sde_builders`).
    optim.*                    `diffax.training.optim.make_optimizer` (lr, warmup_steps, grad_clip, ...).
    model.*                    model.name ('mlp' | 'unet' | 'classifier') and that model's fields.
    model.skip_rescale         (unet) divide each residual block's and attention block's sum by sqrt(2)
                               (score_sde's NCSN++/DDPM++ skip_rescale, `diffax.models.UNet`); False = DDPM.
    model.init_from            (unet) a diffusers UNet2DModel directory (`diffax.interop`, e.g. google/ddpm-cifar10-32):
                               sample / eval use its weights when the workdir has no checkpoint, train starts
                               from them (params and EMA). The config must agree with it on the architecture
                               and the schedule (`diffax.interop.config_overrides`); '' = off.
    model.dtype                'float32' | 'bfloat16' (mlp, unet): the activations' dtype; 'bfloat16' is
                               mixed precision (parameters, EMA, optimizer state, the time embedding,
                               GroupNorm statistics, softmax and the loss stay float32; the U-Net's input
                               convolution and output head (norm, SiLU, conv) run in float32 too, so x_t is
                               never rounded to bf16 and the output is float32).
    diffusion.schedule, num_timesteps   the beta schedule and T.
    diffusion.beta_start, beta_end      linear / quadratic schedules: None = 1e-4 and 0.02 scaled by 1000 / T
                               (improved-diffusion's rule, so x_T is close to N(0, I) at any T); set both
                               to use fixed values.
    diffusion.max_terminal_alpha_bar    refuse a schedule whose alpha-bar_{T-1} exceeds this (x_T would not
                               be close to the N(0, I) the samplers start from); 1.0 allows any.
    diffusion.mean_type, var_type, loss_type, lambda_vlb, p_uncond, timestep_sampling ('uniform' |
                               'importance': t ~ sqrt(E[L_t^2]), Nichol & Dhariwal 2021 sec. 3.3; needs a
                               loss_type that computes L_t).
    sampling.method            'ddpm' | 'ddim' | 'annealed_langevin' (ncsn); num_steps (None = T; respaced
                               with sampling.spacing: 'leading' | 'linspace' | 'trailing'), eta (DDIM),
                               clip_x0 (> 0 or None).
    sampling.num_samples, batch_size   N samples, drawn in chunks of batch_size (0 = all at once). Sample i
                               depends only on (seed, i): its noise comes from fold_in(key, i) and its
                               label is i mod K, so any chunk size gives the same samples up to float32
                               rounding (XLA compiles one program per chunk shape; rtol 1e-5 / atol 1e-6).
    sampling.langevin_eps, steps_per_level, denoise   method 'annealed_langevin' (ncsn): eps of Algorithm 1.
    sampling.method 'edm'      EDM Algorithm 2 (`diffax.edm.edm_sampler`; 2 num_steps - 1 network calls,
                               num_steps None = 18) over edm.sigma_min..edm.sigma_max with sampling.rho,
                               s_churn, s_min, s_max (None = inf), s_noise; for 'edm' runs (the preconditioned
                               network), 'diffusion' runs (`diffax.edm.denoiser_from_discrete`, the sigma range
                               clipped to the schedule's sigma_0..sigma_{T-1}) and 'flow_matching' runs
                               (D(x; sigma) = x_t - t v(x_t, t) at t = sigma / (1 + sigma), x_t = x / (1 + sigma)).
                               clip_x0 clips D. 'euler' | 'heun' (flow_matching runs): `diffax.flow_matching.
                               flow_euler` / `flow_heun` from t = 1 to 0 in num_steps uniform steps (None = 18;
                               NFE N / 2N).
    sampling.method 'dpm_solver_pp' | 'unipc' | 'ode' | 'pc'   ('diffusion' runs; `diffax.training.solver_builders`):
                               multistep DPM-Solver++ / UniPC with sampling.order (1..3, None = 2; refused for
                               every other method), NFE = sampling.num_steps (None = 20) on sampling.timestep_grid
                               ('time_uniform' (default; within one index of diffusers' default 'linspace'
                               grid), 'logSNR', 'edm', 'leading', 'linspace', 'trailing': `dpm_solver.
                               dpm_solver_timesteps`), UniPC's sampling.unipc_variant 'bh2' | 'bh1'; 'ode': the
                               adaptive probability-flow ODE (`diffax.ode.ode_sample`, sampling.ode_rtol / ode_atol);
                               'pc': the VP predictor-corrector over all T steps (`diffax.samplers.pc`,
                               sampling.pc_snr, pc_n_corrector). Every method starts from the x_T 'ddpm' / 'ddim'
                               draw from the same key (runs of one seed are paired); guidance and
                               diffusion.mean_type work with all of them.
    sampling.guidance_w        classifier-free guidance weight w (class-conditional models trained with
                               diffusion.p_uncond > 0; 0 = off, -1 = unconditional, < -1 guides away from
                               the class).
    sampling.classifier_workdir, classifier_scale   classifier guidance with the noisy classifier trained
                               in that workdir, gradient scale gamma (0 = off).
    eval.num_reference         held-out data points for the toy distances (0 = sampling.num_samples).
    eval.bpd_num_examples      images: test images scored by the full VLB in bits/dim (0 = off; each costs T
                               network calls), in batches of eval.bpd_batch_size.
    eval.classifier_path       images: a classifier (.msgpack, `diffax.evaluation.classifier_features`) for the
                               classifier FID of the samples against the first eval.classifier_fid_num_test
                               TEST images (0 = all).
    eval.inception_weights     images: pytorch-fid's FID Inception-v3 weights (.npz of its state dict; .pth with
                               torch): FID, Inception Score and KID of the first eval.num_samples samples (50,000
                               as the papers; sampling.num_samples must be at least that: refused by `builders.
                               build` before any work), quantised to uint8,
                               in batches of eval.fid_batch_size over every device (`diffax.evaluation.
                               inception_metrics`). Reference: eval.fid_reference (a pytorch-fid .npz with mu,
                               sigma), else the first eval.fid_num_train (0 = all) TRAINING images, computed
                               once and cached in workdir/fid_reference/ (keyed by the images and weights).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(name="two_moons", path=config_dict.placeholder(str), data_dir=config_dict.placeholder(str),
                  num_train=config_dict.placeholder(int), random_flip=False)  # fmt: skip
    c.training = dict(num_steps=1000, batch_size=128, checkpoint_every=500, keep_checkpoints=3, log_every=50,
                      sample_every=0, ema_decay=0.999, ema_warmup=True, objective="diffusion",
                      lock_stale_after_s=600.0)  # fmt: skip
    c.optim = dict(lr=1e-3, warmup_steps=0, grad_clip=1.0, weight_decay=0.0, decay_steps=config_dict.placeholder(int))
    c.model = mlp_model_config()
    c.diffusion = dict(schedule="linear", num_timesteps=1000, beta_start=config_dict.placeholder(float),
                       beta_end=config_dict.placeholder(float), max_terminal_alpha_bar=1e-3, mean_type="eps",
                       var_type="fixed_small", loss_type="simple", lambda_vlb=0.001, p_uncond=0.0,
                       timestep_sampling="uniform")  # fmt: skip
    c.ncsn = dict(sigma_max=1.0, sigma_min=0.01, num_levels=10)
    c.edm = dict(kind="edm", sigma_data=0.5, p_mean=-1.2, p_std=1.2, sigma_min=0.002, sigma_max=80.0)
    c.flow = dict(t_sampling="uniform", logit_mean=0.0, logit_std=1.0)
    c.sde = dict(process="vp", beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=50.0, t_eps=1e-5,
                 likelihood_weighting=False, sampling_eps=config_dict.placeholder(float))  # fmt: skip
    c.sampling = dict(method="ddpm", num_steps=config_dict.placeholder(int), eta=0.0, num_samples=1000,
                      clip_x0=config_dict.placeholder(float), batch_size=0, spacing="leading",
                      langevin_eps=2e-5, steps_per_level=100, denoise=True, guidance_w=0.0,
                      classifier_workdir=config_dict.placeholder(str), classifier_scale=0.0, rho=7.0,
                      s_churn=0.0, s_min=0.0, s_max=config_dict.placeholder(float), s_noise=1.0,
                      # dpm_solver_pp / unipc: order None = 2, the grid (a `dpm_solver.SPACINGS` name), UniPC's B(h)
                      order=config_dict.placeholder(int), timestep_grid="time_uniform", unipc_variant="bh2",
                      ode_rtol=1e-5, ode_atol=1e-5,  # ode: the adaptive solve's tolerances (score_sde's)
                      pc_snr=0.16, pc_n_corrector=1)  # fmt: skip  (pc: score_sde's VP corrector setting)
    c.eval = dict(num_reference=0, bpd_num_examples=0, bpd_batch_size=64, classifier_path=config_dict.placeholder(str),
                  classifier_fid_num_test=0, fid_num_train=0, inception_weights=config_dict.placeholder(str),
                  num_samples=50_000, fid_reference=config_dict.placeholder(str), fid_batch_size=200)  # fmt: skip
    return c


def parse_variants(arg: str | None, allowed: tuple[str, ...], *, config_name: str) -> list[str]:
    """'small,conditional' -> ['small', 'conditional']; raises ValueError naming an unknown variant."""
    variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
    bad = [v for v in variants if v not in allowed]
    if bad:
        raise ValueError(f"{config_name}: unknown variant(s) {bad}; allowed: {list(allowed)} (comma-separated)")
    return variants


def load_config(spec: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config of ``'path/to/config.py[:arg]'``: imports the file and calls ``get_config(arg)`` (or
    ``get_config()`` without an arg), exactly as ``--config=path/to/config.py:arg`` does."""
    spec = os.fspath(spec)
    path, _, arg = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    name = "diffax_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
