"""Config -> objects. The ONLY module that reads an `ml_collections.ConfigDict`.

``build(config) -> Experiment`` turns a whole config into plain objects and pure functions, once;
the train loop, sampling and evaluation (`diffax.training.train`, `diffax.training.evaluate`) take
the `Experiment` and never read the config. The single ``build_*`` functions below are its parts
(public: tests and scripts build one piece at a time). Each validates its section (``ValueError``
naming the bad value and what is allowed). The key schema, `base_config`, lives in
`diffax.training.presets` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffax import diffusion, guidance, models, samplers, schedules
from diffax.schedules import Schedule
from diffax.training import optim, step
from diffax.training.presets import base_config, classifier_model_config, mlp_model_config, unet_model_config

__all__ = [
    "Experiment",
    "build",
    "as_experiment",
    "base_config",
    "mlp_model_config",
    "unet_model_config",
    "classifier_model_config",
    "build_schedule",
    "build_model",
    "check_init_from",
    "build_optimizer",
    "build_lr_schedule",
    "build_data",
    "build_loss_fn",
    "build_sampler",
    "per_example_sampler",
    "init_params",
    "per_process_batch_size",
]

MODELS = ("mlp", "unet", "classifier")
SAMPLING_METHODS = ("ddpm", "ddim", "annealed_langevin")
OBJECTIVES = ("diffusion", "ncsn", "noisy_classifier")
SPACINGS = ("leading", "linspace", "trailing")
MODEL_DTYPES = ("float32", "bfloat16")  # model.dtype: the activations (parameters stay float32)

def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def build_schedule(config: ml_collections.ConfigDict) -> Schedule:
    """`schedules.get(diffusion.schedule, diffusion.num_timesteps, ...)`, refused when x_T is far from N(0, I).

    The linear and quadratic schedules take diffusion.beta_start / beta_end (None: 1e-4 and 0.02 scaled by
    1000 / T, improved-diffusion's rule). A schedule whose alpha-bar_{T-1} > diffusion.max_terminal_alpha_bar
    is refused: every sampler starts from x_T ~ N(0, I), which q(x_T | x_0) then is not.
    """
    d = config.diffusion
    T = _positive_int("diffusion.num_timesteps", d.num_timesteps)
    kwargs = {}
    if d.beta_start is not None or d.beta_end is not None:
        if d.schedule not in ("linear", "quadratic", "sigmoid"):
            raise ValueError(f"diffusion.beta_start / beta_end apply to the 'linear', 'quadratic' and 'sigmoid' schedules, "
                             f"not {d.schedule!r}; leave them None")
        if d.beta_start is None or d.beta_end is None:
            raise ValueError(f"set both diffusion.beta_start and diffusion.beta_end (or neither), got "
                             f"beta_start={d.beta_start!r}, beta_end={d.beta_end!r}")
        kwargs = dict(beta_start=float(d.beta_start), beta_end=float(d.beta_end))
    s = schedules.get(d.schedule, T, **kwargs)
    limit = float(d.max_terminal_alpha_bar)
    terminal = float(np.asarray(s.alphas_cumprod)[-1])
    if not terminal <= limit:
        raise ValueError(
            f"diffusion.schedule={d.schedule!r} at num_timesteps={T} ends at alpha-bar_(T-1) = {terminal:.3g} > "
            f"diffusion.max_terminal_alpha_bar={limit:g}: x_T is not close to N(0, I), where sampling starts. "
            "Use more timesteps, a larger diffusion.beta_end, or set diffusion.max_terminal_alpha_bar=1.0 to allow it"
        )
    return s


def _learn_sigma(config: ml_collections.ConfigDict) -> bool:
    var_type = _choice("diffusion.var_type", config.diffusion.var_type, diffusion.VAR_TYPES)
    return var_type in ("learned", "learned_range")


def build_model(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]):
    """The Flax module named by model.name, with the other model.* fields as its attributes.

    `data_shape` is one example's shape ((D,) for toys, (H, W, C) for images); the MLP needs 1-D
    data, the UNet 3-D. learn_sigma = diffusion.var_type in ('learned', 'learned_range').
    With model.init_from (a diffusers UNet2DModel directory), the UNet of its config.json
    (`diffax.interop`), after `check_init_from`; model.dropout and model.dtype are the config's.
    """
    name = _choice("model.name", config.model.name, MODELS)
    fields = {k: v for k, v in config.model.to_dict().items() if k not in ("name", "init_from")}
    for k in ("ch_mult", "attn_resolutions"):
        if k in fields:
            fields[k] = tuple(fields[k])
    if "dtype" in fields:
        fields["dtype"] = jnp.dtype(_choice("model.dtype", fields["dtype"], MODEL_DTYPES))
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
    if init_from(config):
        from diffax.interop import diffusers as hf

        check_init_from(config, data_shape)
        return hf.unet_from_config(hf.read_unet_config(init_from(config)), dropout=float(config.model.dropout),
                                   dtype=fields.get("dtype", jnp.float32))  # fmt: skip
    return models.UNet(learn_sigma=_learn_sigma(config), **fields)


def init_from(config: ml_collections.ConfigDict) -> str | None:
    """model.init_from, the diffusers directory whose weights the run starts from (None when unset or '')."""
    return config.model.get("init_from") or None


def _flag_value(v: Any) -> str:
    return "(" + ",".join(str(x) for x in v) + ",)" if isinstance(v, (tuple, list)) else str(v)


def check_init_from(config: ml_collections.ConfigDict, data_shape: tuple[int, ...]) -> None:
    """Refuses (one-line ValueError) a config that contradicts the diffusers directory of model.init_from.

    The directory decides the architecture and the forward process (`diffax.interop.config_overrides`):
    every model.* key it decides must be equal; diffusion.* must give the same betas as its scheduler
    config and the same mean_type; the data must have its image shape; the variance is not learned (the
    DDPM checkpoints predict eps only; fixed_small / fixed_large and sampling.* are free). The message lists
    every contradiction and the flags that fix them.
    """
    from diffax.interop import diffusers as hf

    path = init_from(config)
    expected = hf.config_overrides(path)
    flat = {f"{section}.{k}": v for section in ("model", "diffusion") for k, v in config[section].items()}
    norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    bad = [k for k, v in expected.items() if k.startswith("model.") and norm(flat.get(k)) != norm(v)]
    if "diffusion.mean_type" in expected and flat["diffusion.mean_type"] != expected["diffusion.mean_type"]:
        bad.append("diffusion.mean_type")
    sched = hf.read_scheduler_config(path)
    if sched is not None:
        ours = np.asarray(build_schedule(config).betas, np.float64)
        if ours.shape != sched.betas.shape or not np.allclose(ours, sched.betas, rtol=1e-6, atol=0.0):
            bad += [k for k in ("diffusion.schedule", "diffusion.num_timesteps", "diffusion.beta_start",
                                "diffusion.beta_end") if k in expected]  # fmt: skip
    problems = [f"{k}={flat.get(k)!r} (checkpoint: {expected[k]!r})" for k in bad]
    want = hf.image_shape(hf.read_unet_config(path))
    if tuple(data_shape) != want:
        problems.append(f"data shape {tuple(data_shape)} (checkpoint: {want}, its sample_size and in_channels)")
    if _learn_sigma(config):
        problems.append(f"diffusion.var_type={config.diffusion.var_type!r} (checkpoint: no learned variance; use "
                        "'fixed_small' or 'fixed_large')")  # fmt: skip
    if problems:
        fix = " ".join(f"--config.{k}={_flag_value(expected[k])}" for k in bad)
        raise ValueError(f"model.init_from={path!r} contradicts the config: {'; '.join(problems)}"
                         + (f". Set: {fix}" if fix else ""))  # fmt: skip


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
        from diffax import importance_sampling as importance_lib

        return {step.LOSS_HISTORY: importance_lib.init_loss_history(int(config.diffusion.num_timesteps))}
    return {}


SampleBatchFn = Callable[[Any, jax.Array, int], jax.Array]


def _check_clip(clip_x0: Any) -> float | None:
    if clip_x0 is None:
        return None
    if isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float)) or not (0 < clip_x0 < math.inf):
        raise ValueError(f"sampling.clip_x0 must be None (no clipping) or a finite number > 0, got {clip_x0!r} "
                         "(clip_x0 <= 0 would map every sample to -1)")  # fmt: skip
    return float(clip_x0)


def build_sampler(
    config: ml_collections.ConfigDict,
    model,
    schedule: Schedule,
    data_shape: tuple[int, ...],
    classifier: tuple[Any, Any] | None = None,
) -> SampleBatchFn:
    """``sample_fn(params, key, n) -> (n, *data_shape)`` samples of the model (not jitted; jit it).

    One key for the whole batch (`per_example_sampler` gives each sample its own key instead).
    sampling.method 'ddpm' (ancestral; respaced to sampling.num_steps with sampling.spacing if given,
    Nichol & Dhariwal 2021 sec. 4) or 'ddim' (eta = sampling.eta, Song et al. 2021); clip_x0 as in
    `diffusion.p_mean_variance`. A class-conditional model (model.num_classes = K) samples the labels
    i mod K, with classifier-free guidance if sampling.guidance_w != 0 (`diffax.guidance.classifier_free`,
    null class K; the model must have been trained with label dropout, diffusion.p_uncond > 0).
    ``classifier = (module, params)`` of a noise-aware classifier (K classes) with
    sampling.classifier_scale != 0: classifier guidance toward the labels i mod K, applied to the eps
    implied by the model's output whatever diffusion.mean_type is (`diffax.guidance.classifier`;
    Dhariwal & Nichol 2021, Algorithms 1-2).
    'annealed_langevin' (training.objective 'ncsn'): Song & Ermon 2019, Algorithm 1 over `build_sigmas`,
    from x ~ N(0, sigma_1^2 I) (the sigma_1-perturbed data is close to it when sigma_1 is large).
    """
    sample_labeled, num_labels = _labeled_sampler(config, model, schedule, data_shape, classifier)

    def sample_fn(params, key: jax.Array, n: int) -> jax.Array:
        y = None if num_labels is None else jnp.arange(n, dtype=jnp.int32) % num_labels
        return sample_labeled(params, key, n, y)

    return sample_fn


def per_example_sampler(sample_labeled: Callable, num_labels: int | None) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """``sample_fn(params, key, indices) -> (len(indices), *data_shape)``: sample i drawn from its own key
    ``fold_in(key, i)`` for the label ``i mod num_labels``, so it depends on (key, i) only, not on which
    batch, device or process draws it (the batch is a `jax.vmap` over single-sample runs).
    ``sample_labeled(params, key, n, y)`` is `Experiment.sampler`'s function."""

    def sample_fn(params, key: jax.Array, indices: jax.Array) -> jax.Array:
        def one(i):
            y = None if num_labels is None else (i % num_labels).astype(jnp.int32)[None]
            return sample_labeled(params, jax.random.fold_in(key, i), 1, y)[0]

        return jax.vmap(one)(jnp.asarray(indices))

    return sample_fn


def _labeled_sampler(config, model, schedule, data_shape, classifier):
    """(sample_labeled(params, key, n, y) -> x, K): the config's sampler for given labels y (n,) or None,
    and the number of labels K the samples are drawn for (None: unlabeled)."""
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

        def langevin_fn(params, key: jax.Array, n: int, y) -> jax.Array:
            k_init, k_run = jax.random.split(key)
            x_init = sigmas[0] * jax.random.normal(k_init, (n,) + data_shape)
            score_fn = step.ncsn_score_fn(model.apply, {"params": params}, y=y)
            return samplers.annealed_langevin(score_fn, sigmas, k_run, x_init, eps=s.langevin_eps,
                                              steps_per_level=steps_per_level, denoise=s.denoise)  # fmt: skip

        return langevin_fn, num_classes
    T = schedule.num_timesteps
    num_steps = T if s.num_steps is None else _positive_int("sampling.num_steps", s.num_steps)
    if num_steps > T:
        raise ValueError(f"sampling.num_steps must be <= diffusion.num_timesteps={T}, got {num_steps}")
    spacing = _choice("sampling.spacing", s.spacing, SPACINGS)
    timesteps = None if num_steps == T else schedules.space_timesteps(T, num_steps, spacing)
    mean_type, var_type = config.diffusion.mean_type, config.diffusion.var_type
    clip_x0 = _check_clip(s.clip_x0)
    w, scale = float(s.guidance_w), float(s.classifier_scale)
    if not (math.isfinite(w) and math.isfinite(scale)):
        raise ValueError(f"sampling.guidance_w and sampling.classifier_scale must be finite, got {w}, {scale}")
    if w != 0 and num_classes is None:
        raise ValueError(f"sampling.guidance_w={w} needs a class-conditional model (model.num_classes), got None")
    if w != 0 and not config.diffusion.p_uncond > 0:
        raise ValueError(f"sampling.guidance_w={w} needs a model trained with label dropout (diffusion.p_uncond > 0, "
                         f"e.g. 0.1): with p_uncond={config.diffusion.p_uncond} its null label was never trained")
    if scale != 0 and classifier is None:
        raise ValueError(f"sampling.classifier_scale={scale} needs a classifier (sampling.classifier_workdir)")
    num_labels = num_classes
    if scale != 0:
        clf_module, clf_params = classifier
        num_labels = clf_module.num_classes

    def sample_labeled(params, key: jax.Array, n: int, y) -> jax.Array:
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

            model_fn = guidance.classifier(model_fn, log_prob_fn, schedule, y, scale=scale, mean_type=mean_type)

        shape = (n,) + data_shape
        if method == "ddpm":
            return samplers.ddpm(model_fn, schedule, key, shape, mean_type=mean_type, var_type=var_type,
                                 clip_x0=clip_x0, timesteps=timesteps)  # fmt: skip
        return samplers.ddim(model_fn, schedule, key, shape, num_steps=num_steps, spacing=spacing, eta=s.eta,
                             mean_type=mean_type, var_type=var_type, clip_x0=clip_x0)  # fmt: skip

    return sample_labeled, num_labels


# --------------------------------------------------------------------------- the whole experiment


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """training.* as plain values (validated)."""

    num_steps: int
    batch_size: int
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int
    sample_every: int
    ema_decay: float
    ema_warmup: bool


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """sampling.* that the run layer needs beyond the sampler itself."""

    num_samples: int
    batch_size: int  # chunk size; num_samples when the config says 0
    guidance_w: float
    classifier_workdir: str | None
    classifier_scale: float


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """eval.* as plain values."""

    num_reference: int
    bpd_num_examples: int
    bpd_batch_size: int
    classifier_path: str | None
    fid_num_reference: int
    inception_weights: str | None = None
    num_samples: int = 50_000
    fid_reference: str | None = None
    fid_batch_size: int = 200


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """data.* plus what follows from it: one example's shape, toy or image, labelled or not."""

    name: str
    path: str | None
    data_dir: str | None
    num_train: int | None
    random_flip: bool
    shape: tuple[int, ...]
    is_toy: bool


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run needs, built once from a config by `build` (no config object below this).

    ``config`` is the config as a plain dict: the run's record, saved with each checkpoint and
    compared on resume / sample / eval; nothing reads settings from it.
    ``sampler(classifier=None)`` returns ``(sample_labeled(params, key, n, y), K)``; ``make_batches(split)``
    the per-process `diffax.data.Batches`; ``initial_extra`` the TrainState.extra of step 0.
    """

    config: dict
    seed: int
    objective: str
    data: DataSettings
    model: Any
    schedule: Schedule
    mean_type: str
    var_type: str
    num_classes: int | None
    p_uncond: float
    loss_fn: step.LossFn
    optimizer: optax.GradientTransformation
    lr_schedule: optax.Schedule
    importance_sampling: bool
    initial_extra: Callable[[], dict]
    train: TrainSettings
    sampling: SampleSettings
    eval: EvalSettings
    sampler: Callable[..., tuple[Callable, int | None]]
    make_batches: Callable[[str], Any]
    init_from: str | None = None  # model.init_from: a diffusers directory, the weights of step 0


def as_experiment(exp_or_config: "Experiment | ml_collections.ConfigDict") -> "Experiment":
    """``exp_or_config`` itself if it is an `Experiment`, else ``build(exp_or_config)`` (the run layer's entry
    points take either)."""
    return build(exp_or_config) if isinstance(exp_or_config, ml_collections.ConfigDict) else exp_or_config


def _interval(name: str, value: Any, allow_zero: bool = False) -> int:
    return _positive_int(name, value, minimum=0 if allow_zero else 1)


def build(config: ml_collections.ConfigDict) -> Experiment:
    """The `Experiment` of ``config``: data shape, model, schedule, loss, optimizer, samplers, settings.

    Raises ValueError naming the first bad value. Cheap: builds functions, computes nothing heavy
    (no parameters, no data loading; `Experiment.make_batches` loads data when called).
    """
    from diffax import data as data_lib

    d = config.data
    if d.name not in data_lib.ALL_DATASETS:
        raise ValueError(f"data.name must be one of {list(data_lib.ALL_DATASETS)}, got {d.name!r}")
    shape = tuple(int(v) for v in data_lib.data_shape(d.name, path=d.path))
    obj = objective(config)
    model = build_model(config, shape)
    schedule = build_schedule(config)
    t, s, e = config.training, config.sampling, config.eval
    num_samples = _positive_int("sampling.num_samples", s.num_samples)
    chunk = _interval("sampling.batch_size", s.batch_size, allow_zero=True) or num_samples
    lr = config.optim.lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"optim.lr must be a finite number > 0, got {lr!r}")
    _choice("diffusion.mean_type", config.diffusion.mean_type, diffusion.MEAN_TYPES)
    imp = importance_sampling(config)

    def sampler(classifier=None):
        return _labeled_sampler(config, model, schedule, shape, classifier)

    return Experiment(
        config=config.to_dict(),
        seed=_interval("seed", config.seed, allow_zero=True),
        objective=obj,
        data=DataSettings(d.name, d.path, d.data_dir, d.num_train, bool(d.random_flip), shape,
                          d.name in data_lib.TOY_DATASETS),  # fmt: skip
        model=model,
        schedule=schedule,
        mean_type=config.diffusion.mean_type,
        var_type=config.diffusion.var_type,
        num_classes=config.model.num_classes,
        p_uncond=float(config.diffusion.p_uncond),
        loss_fn=build_loss_fn(config, model, schedule),
        optimizer=build_optimizer(config),
        lr_schedule=build_lr_schedule(config),
        importance_sampling=imp,
        initial_extra=lambda: initial_extra(config),
        train=TrainSettings(
            num_steps=_interval("training.num_steps", t.num_steps),
            batch_size=_interval("training.batch_size", t.batch_size),
            checkpoint_every=_interval("training.checkpoint_every", t.checkpoint_every),
            keep_checkpoints=_interval("training.keep_checkpoints", t.keep_checkpoints),
            log_every=_interval("training.log_every", t.log_every),
            sample_every=_interval("training.sample_every", t.sample_every, allow_zero=True),
            ema_decay=float(t.ema_decay),
            ema_warmup=bool(t.ema_warmup),
        ),
        sampling=SampleSettings(num_samples, chunk, float(s.guidance_w), s.classifier_workdir, float(s.classifier_scale)),
        eval=EvalSettings(
            num_reference=_interval("eval.num_reference", e.num_reference, allow_zero=True),
            bpd_num_examples=_interval("eval.bpd_num_examples", e.bpd_num_examples, allow_zero=True),
            bpd_batch_size=_interval("eval.bpd_batch_size", e.bpd_batch_size),
            classifier_path=e.classifier_path,
            fid_num_reference=_interval("eval.fid_num_reference", e.fid_num_reference, allow_zero=True),
            inception_weights=e.inception_weights,
            num_samples=_interval("eval.num_samples", e.num_samples),
            fid_reference=e.fid_reference,
            fid_batch_size=_interval("eval.fid_batch_size", e.fid_batch_size),
        ),
        sampler=sampler,
        make_batches=lambda split="train": build_data(config, split=split),
        init_from=init_from(config),
    )
