"""Config -> objects. The ONLY module that reads an `ml_collections.ConfigDict`.

Each builder reads its section of the config, validates it (``ValueError`` naming the bad value and
what is allowed) and returns a plain object or a pure function; everything downstream takes plain
arguments. `base_config` is the key set every config in ``configs/`` shares (a contract: configs are
locked, so an unknown key is an error).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from ml_collections import config_dict

from diffax import diffusion, guidance, models, samplers, schedules
from diffax.schedules import Schedule
from diffax.training import optim, step

__all__ = [
    "base_config",
    "mlp_model_config",
    "unet_model_config",
    "build_schedule",
    "build_model",
    "build_optimizer",
    "build_lr_schedule",
    "build_data",
    "build_loss_fn",
    "build_sampler",
    "init_params",
    "per_process_batch_size",
]

MODELS = ("mlp", "unet", "classifier")
SAMPLING_METHODS = ("ddpm", "ddim", "annealed_langevin")
OBJECTIVES = ("diffusion", "ncsn", "noisy_classifier")


def mlp_model_config() -> ml_collections.ConfigDict:
    """`diffax.models.MLP`'s fields (learn_sigma is derived from diffusion.var_type)."""
    return ml_collections.ConfigDict(
        dict(name="mlp", hidden=128, num_layers=3, time_embed_dim=64, activation="silu", dropout=0.0,
             num_classes=config_dict.placeholder(int))  # fmt: skip
    )


def unet_model_config() -> ml_collections.ConfigDict:
    """`diffax.models.UNet`'s fields, DDPM CIFAR-10 defaults (Ho et al. 2020, appendix B)."""
    return ml_collections.ConfigDict(
        dict(name="unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
             resblock_updown=False, use_scale_shift_norm=False, num_heads=1, num_head_channels=-1,
             num_groups=32, num_classes=config_dict.placeholder(int))  # fmt: skip
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

    seed                       int, the root of every key (init, data order, steps, sampling).
    data.name                  a toy ('gmm1d', 'gmm2d', 'swiss_roll', 'two_moons', 'checkerboard') or image
                               data set ('mnist', 'fashion_mnist', 'cifar10', 'celeb_a' via tfds;
                               'mnist_local' IDX files in data.path; 'npz' file data.path).
    data.path / data.data_dir  local files / a tfds data_dir.      data.num_train: toy set size / subset.
    data.random_flip           horizontal flips (images).
    training.num_steps         total optimizer steps (a resumed run trains up to it).
    training.batch_size        GLOBAL batch size (split over processes, then over devices).
    training.checkpoint_every  save every n steps (and at the end); keep_checkpoints: keep the last K.
    training.log_every         log metrics (TensorBoard + metrics.jsonl) every n steps.
    training.sample_every      save a sample picture every n steps (0 = off).
    training.ema_decay         EMA of the parameters (sampling uses the EMA); ema_warmup: decay of update k
                               min(ema_decay, (1 + k) / (10 + k)) (`optim.ema_decay_at`), so the EMA
                               forgets the initialisation (without it, 0.999^n of it stays).
    optim.*                    `diffax.training.optim.make_optimizer` (lr, warmup_steps, grad_clip, ...).
    model.*                    model.name ('mlp' | 'unet') and that model's fields.
    diffusion.*                schedule, num_timesteps, mean_type, var_type, loss_type, lambda_vlb, p_uncond,
                               timestep_sampling ('uniform' | 'importance': t ~ sqrt(E[L_t^2]), Nichol &
                               Dhariwal 2021 sec. 3.3; needs a loss_type that computes L_t).
    sampling.*                 method ('ddpm' | 'ddim'), num_steps (None = T), eta, num_samples, clip_x0,
                               batch_size (0 = all at once), spacing (DDIM's timestep spacing).
    training.objective         'diffusion' (DDPM family; diffusion.*), 'ncsn' (denoising score matching over
                               ncsn.num_levels geometric sigmas in [ncsn.sigma_min, ncsn.sigma_max], Song &
                               Ermon 2019) or 'noisy_classifier' (cross-entropy of f(y | x_t, t) on labelled
                               data, x_t ~ q(x_t | x_0) with diffusion.*; model.name 'classifier').
    sampling.langevin_eps, steps_per_level, denoise   method 'annealed_langevin' (ncsn): eps of Algorithm 1.
    sampling.guidance_w        classifier-free guidance weight w (class-conditional diffusion models; 0 = off).
    sampling.classifier_workdir, classifier_scale   classifier guidance with the noisy classifier trained
                               in that workdir, gradient scale gamma (0 = off).
    eval.num_reference         held-out data points for the toy distances (0 = sampling.num_samples).
    eval.bpd_num_examples      images: test images scored by the full VLB in bits/dim (0 = off; each costs T
                               network calls), in batches of eval.bpd_batch_size.
    eval.classifier_path       images: a `diffax.feature_fid` classifier (.msgpack) for the classifier FID
                               of the samples against eval.fid_num_reference test images (0 = all).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(name="two_moons", path=config_dict.placeholder(str), data_dir=config_dict.placeholder(str),
                  num_train=config_dict.placeholder(int), random_flip=False)  # fmt: skip
    c.training = dict(num_steps=1000, batch_size=128, checkpoint_every=500, keep_checkpoints=3, log_every=50,
                      sample_every=0, ema_decay=0.999, ema_warmup=True)  # fmt: skip
    c.optim = dict(lr=1e-3, warmup_steps=0, grad_clip=1.0, weight_decay=0.0, decay_steps=config_dict.placeholder(int))
    c.model = mlp_model_config()
    c.diffusion = dict(schedule="linear", num_timesteps=1000, mean_type="eps", var_type="fixed_small",
                       loss_type="simple", lambda_vlb=0.001, p_uncond=0.0, timestep_sampling="uniform")  # fmt: skip
    c.training.objective = "diffusion"
    c.ncsn = dict(sigma_max=1.0, sigma_min=0.01, num_levels=10)
    c.sampling = dict(method="ddpm", num_steps=config_dict.placeholder(int), eta=0.0, num_samples=1000,
                      clip_x0=config_dict.placeholder(float), batch_size=0, spacing="leading",
                      langevin_eps=2e-5, steps_per_level=100, denoise=True, guidance_w=0.0,
                      classifier_workdir=config_dict.placeholder(str), classifier_scale=0.0)  # fmt: skip
    c.eval = dict(num_reference=0, bpd_num_examples=0, bpd_batch_size=64, classifier_path=config_dict.placeholder(str),
                  fid_num_reference=0)  # fmt: skip
    return c


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def build_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """`schedules.get(diffusion.schedule, diffusion.num_timesteps)`."""
    return schedules.get(config.diffusion.schedule, _positive_int("diffusion.num_timesteps", config.diffusion.num_timesteps))


def _learn_sigma(config: ml_collections.ConfigDict) -> bool:
    var_type = _choice("diffusion.var_type", config.diffusion.var_type, diffusion.VAR_TYPES)
    return var_type in ("learned", "learned_range")


def build_model(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]):
    """The Flax module named by model.name, with the other model.* fields as its attributes.

    `data_shape` is one example's shape ((D,) for toys, (H, W, C) for images); the MLP needs 1-D
    data, the UNet 3-D. learn_sigma = diffusion.var_type in ('learned', 'learned_range').
    """
    name = _choice("model.name", config.model.name, MODELS)
    fields = {k: v for k, v in config.model.to_dict().items() if k != "name"}
    for k in ("ch_mult", "attn_resolutions"):
        if k in fields:
            fields[k] = tuple(fields[k])
    data_shape = tuple(int(d) for d in data_shape)
    if name == "classifier":
        fields.setdefault("num_classes", 10)
        return models.Classifier(**fields)
    if name == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"model.name='mlp' needs vector data (D,), got example shape {data_shape}; use 'unet'")
        return models.MLP(learn_sigma=_learn_sigma(config), **fields)
    if len(data_shape) != 3:
        raise ValueError(f"model.name='unet' needs image data (H, W, C), got example shape {data_shape}; use 'mlp'")
    return models.UNet(learn_sigma=_learn_sigma(config), **fields)


def init_params(model, key: jax.Array, data_shape: tuple[int, ...]):
    """``model.init`` on a zero batch of 2 examples (t = 0), returning the 'params' collection.

    Not jitted (the caller jits, e.g. together with the optimizer state, or `jax.eval_shape`s it).
    """
    k_params, k_dropout = jax.random.split(key)
    x = jnp.zeros((2,) + tuple(data_shape), jnp.float32)
    t = jnp.zeros((2,), jnp.int32)
    return model.init({"params": k_params, "dropout": k_dropout}, x, t, train=False)["params"]


def build_lr_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """`optim.make_lr_schedule` from optim.lr / warmup_steps / decay_steps."""
    o = config.optim
    return optim.make_lr_schedule(lr=o.lr, warmup_steps=o.warmup_steps, decay_steps=o.decay_steps)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """`optim.make_optimizer` from optim.* (Adam, linear warm-up, global-norm clipping)."""
    o = config.optim
    return optim.make_optimizer(lr=o.lr, warmup_steps=o.warmup_steps, grad_clip=o.grad_clip,
                                weight_decay=o.weight_decay, decay_steps=o.decay_steps)  # fmt: skip


def per_process_batch_size(config: ml_collections.ConfigDict) -> int:
    """training.batch_size / jax.process_count(); raises if it does not divide."""
    global_bs = _positive_int("training.batch_size", config.training.batch_size)
    n = jax.process_count()
    if global_bs % n:
        raise ValueError(f"training.batch_size={global_bs} (global) must be divisible by the process count {n}")
    return global_bs // n


def build_data(config: ml_collections.ConfigDict, *, split: str = "train"):
    """`diffax.data.build_batches` for this process: per-process batch, seeded by config.seed."""
    from diffax import data  # imported here: tfds is slow to import and only training needs it

    return data.build_batches(
        config.data.name,
        batch_size=per_process_batch_size(config),
        seed=config.seed,
        split=split,
        data_dir=config.data.data_dir,
        path=config.data.path,
        random_flip=config.data.random_flip,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_train=config.data.num_train,
    )


def objective(config: ml_collections.ConfigDict) -> str:
    """training.objective, checked against `OBJECTIVES` and against model.name."""
    obj = _choice("training.objective", config.training.objective, OBJECTIVES)
    if (obj == "noisy_classifier") != (config.model.name == "classifier"):
        raise ValueError(
            f"training.objective={obj!r} does not fit model.name={config.model.name!r}: 'noisy_classifier' trains "
            "model.name='classifier', and a classifier trains only with 'noisy_classifier'"
        )
    return obj


def build_sigmas(config: ml_collections.ConfigDict) -> jax.Array:
    """NCSN's geometric noise levels sigma_1 > ... > sigma_L from ncsn.* (`schedules.geometric_sigmas`)."""
    n = config.ncsn
    return schedules.geometric_sigmas(n.sigma_max, n.sigma_min, _positive_int("ncsn.num_levels", n.num_levels))


def build_loss_fn(config: ml_collections.ConfigDict, model, schedule: Schedule) -> step.LossFn:
    """The training objective's `LossFn`: `step.diffusion_loss_fn` (diffusion.*, model.num_classes),
    `step.dsm_loss_fn` over `build_sigmas` ('ncsn') or `step.noisy_classifier_loss_fn` ('noisy_classifier')."""
    obj = objective(config)
    if obj == "ncsn":
        return step.dsm_loss_fn(model.apply, build_sigmas(config))
    if obj == "noisy_classifier":
        return step.noisy_classifier_loss_fn(model.apply, schedule)
    d = config.diffusion
    return step.diffusion_loss_fn(
        model.apply, schedule, loss_type=d.loss_type, mean_type=d.mean_type, var_type=d.var_type,
        lambda_vlb=d.lambda_vlb, p_uncond=d.p_uncond, num_classes=config.model.num_classes,
    )  # fmt: skip


TIMESTEP_SAMPLING = ("uniform", "importance")


def importance_sampling(config: ml_collections.ConfigDict) -> bool:
    """True for diffusion.timestep_sampling='importance'; raises for an unknown value, or for
    'importance' with loss_type 'simple' (which has no L_t term to weight or to learn p_t from)."""
    d = config.diffusion
    if _choice("diffusion.timestep_sampling", d.timestep_sampling, TIMESTEP_SAMPLING) == "uniform":
        return False
    if d.loss_type == "simple":
        raise ValueError(
            "diffusion.timestep_sampling='importance' needs a loss with an L_t term: set diffusion.loss_type to "
            "one of 'vlb', 'rescaled_vlb', 'hybrid', 'rescaled_mse' (got 'simple')"
        )
    return True


def initial_extra(config: ml_collections.ConfigDict) -> dict:
    """The TrainState.extra of step 0: the loss history when importance-sampling t, else {}."""
    if importance_sampling(config):
        from diffax import timestep_sampler

        return {step.LOSS_HISTORY: timestep_sampler.init_loss_history(int(config.diffusion.num_timesteps))}
    return {}


def build_sampler(
    config: ml_collections.ConfigDict,
    model,
    schedule: Schedule,
    data_shape: tuple[int, ...],
    classifier: tuple[Any, Any] | None = None,
) -> Callable[[Any, jax.Array, int], jax.Array]:
    """``sample_fn(params, key, n) -> (n, *data_shape)`` samples of the model (not jitted; jit it).

    sampling.method 'ddpm' (ancestral; respaced to sampling.num_steps if given, Nichol & Dhariwal 2021
    sec. 4) or 'ddim' (eta = sampling.eta, Song et al. 2021); clip_x0 as in `diffusion.p_mean_variance`.
    A class-conditional model (model.num_classes = K) samples the labels i mod K, with classifier-free
    guidance if sampling.guidance_w != 0 (`diffax.guidance.classifier_free`, null class K).
    ``classifier = (module, params)`` of a noise-aware classifier (K classes) with
    sampling.classifier_scale != 0: classifier guidance toward the labels i mod K
    (`diffax.guidance.classifier`; Dhariwal & Nichol 2021, Algorithms 1-2).
    'annealed_langevin' (training.objective 'ncsn'): Song & Ermon 2019, Algorithm 1 over `build_sigmas`,
    from x ~ N(0, sigma_1^2 I) (the sigma_1-perturbed data is close to it when sigma_1 is large).
    """
    s = config.sampling
    method = _choice("sampling.method", s.method, SAMPLING_METHODS)
    obj = objective(config)
    if obj == "noisy_classifier":
        raise ValueError("training.objective='noisy_classifier' trains a classifier: it has no sampler (use it "
                         "through sampling.classifier_workdir of a diffusion config)")
    if (obj == "ncsn") != (method == "annealed_langevin"):
        raise ValueError(f"sampling.method={method!r} does not fit training.objective={obj!r}: 'ncsn' samples "
                         "with 'annealed_langevin', diffusion models with 'ddpm' or 'ddim'")
    num_classes = config.model.num_classes
    data_shape = tuple(int(d) for d in data_shape)
    if method == "annealed_langevin":
        sigmas = build_sigmas(config)
        steps_per_level = _positive_int("sampling.steps_per_level", s.steps_per_level)

        def langevin_fn(params, key: jax.Array, n: int) -> jax.Array:
            y = None if num_classes is None else jnp.arange(n, dtype=jnp.int32) % num_classes
            k_init, k_run = jax.random.split(key)
            x_init = sigmas[0] * jax.random.normal(k_init, (n,) + data_shape)
            score_fn = step.ncsn_score_fn(model.apply, {"params": params}, y=y)
            return samplers.annealed_langevin(score_fn, sigmas, k_run, x_init, eps=s.langevin_eps,
                                              steps_per_level=steps_per_level, denoise=s.denoise)  # fmt: skip

        return langevin_fn
    T = schedule.num_timesteps
    num_steps = T if s.num_steps is None else _positive_int("sampling.num_steps", s.num_steps)
    if num_steps > T:
        raise ValueError(f"sampling.num_steps must be <= diffusion.num_timesteps={T}, got {num_steps}")
    mean_type, var_type = config.diffusion.mean_type, config.diffusion.var_type
    w, scale = float(s.guidance_w), float(s.classifier_scale)
    if w != 0 and num_classes is None:
        raise ValueError(f"sampling.guidance_w={w} needs a class-conditional model (model.num_classes), got None")
    if scale != 0 and classifier is None:
        raise ValueError(f"sampling.classifier_scale={scale} needs a classifier (sampling.classifier_workdir)")
    num_labels = num_classes
    if scale != 0:
        clf_module, clf_params = classifier
        num_labels = clf_module.num_classes

    def sample_fn(params, key: jax.Array, n: int) -> jax.Array:
        y = None if num_labels is None else jnp.arange(n, dtype=jnp.int32) % num_labels
        y_model = y if num_classes is not None else None

        def eps_fn(x_t, t, labels):
            return model.apply({"params": params}, x_t, t, y=labels, train=False)

        def model_fn(x_t, t):
            return eps_fn(x_t, t, y_model)

        if w != 0:
            model_fn = guidance.classifier_free(eps_fn, y, w=w, null_label=num_classes)
        if scale != 0:
            def log_prob_fn(x_t, t, labels):
                logits = clf_module.apply({"params": clf_params}, x_t, t, train=False)
                logp = jax.nn.log_softmax(logits, axis=-1)
                return jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]

            model_fn = guidance.classifier(model_fn, log_prob_fn, schedule, y, scale=scale)

        shape = (n,) + data_shape
        if method == "ddpm":
            timesteps = None if num_steps == T else schedules.space_timesteps(T, num_steps)
            return samplers.ddpm(model_fn, schedule, key, shape, mean_type=mean_type, var_type=var_type,
                                 clip_x0=s.clip_x0, timesteps=timesteps)  # fmt: skip
        return samplers.ddim(model_fn, schedule, key, shape, num_steps=num_steps, spacing=s.spacing, eta=s.eta,
                             mean_type=mean_type, var_type=var_type, clip_x0=s.clip_x0)  # fmt: skip

    return sample_fn
