"""Config -> Experiment: ``build(config)`` checks a whole config and assembles its parts, once.

Who reads a config (an ``ml_collections.ConfigDict``): this module and its per-part builders,
`diffax.training.model_builders` (model.*, the diffusion schedule), `diffax.training.train_builders`
(objective, loss, timestep sampling, optim.*, data.*), `diffax.training.sampler_builders`
(sampling.*) and `diffax.training.score_sde_builders` (sde.* and the 'score_sde' samplers); besides them only `diffax.training.restore`, which upgrades an older saved config to
today's keys (`restore.upgrade_config`) and compares a run's saved config with the current one
(`restore.check_compatible`). The train loop, sampling and evaluation (`diffax.training.train`,
`diffax.training.evaluate`) take the `Experiment` and never read a config: its ``config`` dict is only
the run's record. Each part raises ``ValueError`` naming the bad value and what is allowed; the key
schema, `base_config`, lives in `diffax.training.presets`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import ml_collections
import optax

from diffax import diffusion
from diffax._util import check_choice, check_int
from diffax.schedules import Schedule
from diffax.training import step
from diffax.training.model_builders import build_model, build_schedule, init_from
from diffax.training.sampler_builders import CONTINUOUS_METHODS, CONTINUOUS_SAMPLING_KEYS, check_method, labeled_sampler
from diffax.training.solver_builders import unread_sampling_keys
from diffax.training.train_builders import (
    CONTINUOUS_OBJECTIVES,
    build_data,
    build_loss_fn,
    build_lr_schedule,
    build_optimizer,
    importance_sampling,
    initial_extra,
    objective,
)

__all__ = ["Experiment", "TrainSettings", "SampleSettings", "EvalSettings", "DataSettings", "build",
           "as_experiment"]  # fmt: skip


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
    lock_stale_after_s: float  # seconds without a heartbeat after which another host's workdir lock is stale


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """sampling.* that the run layer needs beyond the sampler itself."""

    num_samples: int
    batch_size: int  # chunk size; num_samples when the config says 0
    guidance_w: float
    classifier_workdir: str | None
    classifier_scale: float
    # What sample i depends on besides the checkpoint step and N, as JSON-able values: (seed, model.*,
    # diffusion.*, ncsn.*, sampling.* but batch_size, data.name; for 'edm' / 'flow_matching' runs or the
    # 'edm' / 'euler' / 'heun' samplers also the objective, edm.*, flow.*; for 'score_sde' runs sde.* too); not
    # the chunk size, device or process
    # count, so a resumed run on another topology reuses the finished parts (`evaluate.generate`).
    fingerprint_parts: tuple


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """eval.* as plain values."""

    num_reference: int
    bpd_num_examples: int
    bpd_batch_size: int
    classifier_path: str | None
    classifier_fid_num_test: int  # test images the classifier FID compares with (0 = all)
    fid_num_train: int  # training images of the Inception FID reference (0 = all)
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


def _seconds(name: str, value: Any) -> float:
    """``value`` as float seconds; ValueError unless it is a finite number > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def build(config: ml_collections.ConfigDict) -> Experiment:
    """The `Experiment` of ``config``: data shape, model, schedule, loss, optimizer, samplers, settings.

    Raises ValueError naming the first bad value. Cheap: builds functions, computes nothing heavy
    (no parameters, no data loading; `Experiment.make_batches` loads data when called).
    """
    from diffax import data as data_lib

    d = config.data
    check_choice("data.name", d.name, data_lib.ALL_DATASETS)
    shape = tuple(int(v) for v in data_lib.data_shape(d.name, path=d.path))
    obj = objective(config)
    check_method(config)
    model = build_model(config, shape)
    schedule = build_schedule(config)
    t, s, e = config.training, config.sampling, config.eval
    num_samples = check_int("sampling.num_samples", s.num_samples, 1)
    chunk = check_int("sampling.batch_size", s.batch_size, 0) or num_samples
    lr = config.optim.lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"optim.lr must be a finite number > 0, got {lr!r}")
    check_choice("diffusion.mean_type", config.diffusion.mean_type, diffusion.MEAN_TYPES)
    imp = importance_sampling(config)
    is_toy = d.name in data_lib.TOY_DATASETS
    if not is_toy and e.inception_weights and check_int("eval.num_samples", e.num_samples, 1) > num_samples:
        # Checked here, before any mode runs: --mode=eval would otherwise draw the samples first.
        raise ValueError(f"eval.num_samples={e.num_samples} samples are needed for FID / IS / KID "
                         f"(eval.inception_weights is set) but sampling.num_samples={num_samples} draws only "
                         f"{num_samples}: set --config.sampling.num_samples={e.num_samples}, or lower eval.num_samples "
                         "(the papers use 50,000; FID depends on N)")  # fmt: skip

    if obj in CONTINUOUS_OBJECTIVES and check_int("eval.bpd_num_examples", e.bpd_num_examples, 0) > 0:
        raise ValueError(f"eval.bpd_num_examples={e.bpd_num_examples}: bits/dim is the discrete-time VLB of a "
                         f"'diffusion' run; a training.objective={obj!r} run has none: set eval.bpd_num_examples=0")

    c = config.to_dict()  # a fresh copy: nothing below shares it with `Experiment.config`
    discrete = obj not in CONTINUOUS_OBJECTIVES and s.method not in CONTINUOUS_METHODS
    # A discrete run's fingerprint leaves out the continuous-time keys (its samples do not depend on them), and
    # every run the solver keys its method does not read (`solver_builders.unread_sampling_keys`; a 'score_sde'
    # run's 'ode' / 'pc' read other keys: it keeps them all, and sde.*).
    unread = () if obj == "score_sde" else unread_sampling_keys(s.method)
    fingerprint_parts = (c["seed"], c["model"], c["diffusion"], c["ncsn"],
                         {k: v for k, v in c["sampling"].items()
                          if k != "batch_size" and not (discrete and k in CONTINUOUS_SAMPLING_KEYS) and k not in unread},
                         c["data"]["name"]) + (() if discrete else (obj, c["edm"], c["flow"])) + (
                         (c["sde"],) if obj == "score_sde" else ())  # fmt: skip

    def sampler(classifier=None):
        return labeled_sampler(config, model, schedule, shape, classifier)

    return Experiment(
        config=config.to_dict(),
        seed=check_int("seed", config.seed, 0),
        objective=obj,
        data=DataSettings(d.name, d.path, d.data_dir, d.num_train, bool(d.random_flip), shape, is_toy),
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
            num_steps=check_int("training.num_steps", t.num_steps, 1),
            batch_size=check_int("training.batch_size", t.batch_size, 1),
            checkpoint_every=check_int("training.checkpoint_every", t.checkpoint_every, 1),
            keep_checkpoints=check_int("training.keep_checkpoints", t.keep_checkpoints, 1),
            log_every=check_int("training.log_every", t.log_every, 1),
            sample_every=check_int("training.sample_every", t.sample_every, 0),
            ema_decay=float(t.ema_decay),
            ema_warmup=bool(t.ema_warmup),
            lock_stale_after_s=_seconds("training.lock_stale_after_s", t.lock_stale_after_s),
        ),
        sampling=SampleSettings(num_samples, chunk, float(s.guidance_w), s.classifier_workdir,
                                float(s.classifier_scale), fingerprint_parts),
        eval=EvalSettings(
            num_reference=check_int("eval.num_reference", e.num_reference, 0),
            bpd_num_examples=check_int("eval.bpd_num_examples", e.bpd_num_examples, 0),
            bpd_batch_size=check_int("eval.bpd_batch_size", e.bpd_batch_size, 1),
            classifier_path=e.classifier_path,
            classifier_fid_num_test=check_int("eval.classifier_fid_num_test", e.classifier_fid_num_test, 0),
            fid_num_train=check_int("eval.fid_num_train", e.fid_num_train, 0),
            inception_weights=e.inception_weights,
            num_samples=check_int("eval.num_samples", e.num_samples, 1),
            fid_reference=e.fid_reference,
            fid_batch_size=check_int("eval.fid_batch_size", e.fid_batch_size, 1),
        ),
        sampler=sampler,
        make_batches=lambda split="train": build_data(config, split=split),
        init_from=init_from(config),
    )
