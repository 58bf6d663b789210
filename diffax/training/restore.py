"""A run's state on disk: the streams of randomness, the step-0 state, and restoring a saved run.

    run = restore_ema("runs/mnist")              # the run's own config, its EMA parameters, the step
    x = run.experiment.model.apply({"params": run.params}, x_t, t, train=False)

Streams: every key derives from the config's seed as ``fold_in(PRNGKey(seed), stream)``, one stream
per purpose (`STREAMS`), so no key is used for two things.

Configs: besides `diffax.training.builders` and its per-part builders, this is the one module that reads
a config: it upgrades an older saved config to today's keys (`upgrade_config`) and compares a run's
saved config with the current one (`check_compatible`); everything else goes through `builders.build`.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from diffax import device_mesh
from diffax.checkpoint import Checkpointer
from diffax.training import builders, optim, presets
from diffax.training.model_builders import init_params
from diffax.training.state import TrainState, create_train_state

__all__ = ["CHECKPOINT_DIR", "STREAMS", "stream_key", "abstract_state", "initial_state", "Run", "restore_ema",
           "restore_params", "checked_latest_step", "imported_params", "load_run", "read_run_config", "saved_config", "check_compatible", "latest_step"]  # fmt: skip

CHECKPOINT_DIR = "checkpoints"
# Streams of randomness derived from the seed (never the same key for two purposes).
STREAMS = {"init": 0, "state": 1, "sample": 2, "train_sample": 3, "eval": 4}


def stream_key(seed: int, stream: str) -> jax.Array:
    """``fold_in(PRNGKey(seed), STREAMS[stream])``: the key of one purpose ('init' parameters, 'state' (the
    TrainState's rng, folded with the step), 'sample', 'train_sample' (pictures during training), 'eval')."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}; allowed: {sorted(STREAMS)}")
    return jax.random.fold_in(jax.random.PRNGKey(seed), STREAMS[stream])


def _init_fn(exp: builders.Experiment):
    def init() -> TrainState:
        params = init_params(exp.model, stream_key(exp.seed, "init"), exp.data.shape)
        return create_train_state(params=params, tx=exp.optimizer, rng=stream_key(exp.seed, "state"),
                                  extra=exp.initial_extra())  # fmt: skip

    return init


def abstract_state(exp: builders.Experiment, mesh) -> TrainState:
    """The TrainState's shapes/dtypes (no computation), replicated over `mesh`: a restore target."""
    rep = device_mesh.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), jax.eval_shape(_init_fn(exp)))


def initial_state(exp: builders.Experiment, mesh) -> TrainState:
    """The step-0 TrainState, built in ONE compiled program and placed replicated over `mesh`; with
    model.init_from its params and EMA are the imported weights (`imported_params`)."""
    if exp.init_from:
        def init(params) -> TrainState:
            return create_train_state(params=params, tx=exp.optimizer, rng=stream_key(exp.seed, "state"),
                                      extra=exp.initial_extra())  # fmt: skip

        return jax.jit(init, out_shardings=device_mesh.replicated(mesh))(imported_params(exp))
    return jax.jit(_init_fn(exp), out_shardings=device_mesh.replicated(mesh))()


def initial_params(exp: builders.Experiment) -> Any:
    """The step-0 parameters (as `initial_state` makes them)."""
    if exp.init_from:
        return jax.tree.map(jnp.asarray, imported_params(exp))
    return jax.jit(lambda: init_params(exp.model, stream_key(exp.seed, "init"), exp.data.shape))()


def imported_params(exp: builders.Experiment) -> Any:
    """The weights of model.init_from (a diffusers UNet2DModel directory) as ``exp.model``'s parameter tree
    (NumPy float32), every tensor checked by name, shape and value (`diffax.interop.convert_state_dict`)."""
    from diffax.interop import diffusers_weights as hf

    return hf.convert_state_dict(hf.read_state_dict(exp.init_from), exp.model, exp.data.shape,
                                 source=hf.weights_file(exp.init_from))  # fmt: skip


def _has_checkpoint(workdir: str) -> bool:
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        return False
    with Checkpointer(directory, read_only=True) as ckpt:
        return ckpt.latest_step() is not None


class Run(NamedTuple):
    """A restored run: its `Experiment` (from the given or the saved config), parameters and step."""

    experiment: builders.Experiment
    params: Any
    step: int


def _checkpoint_dir(workdir: str) -> str:
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {directory}; train first (--mode=train)")
    return directory


def latest_step(workdir: str) -> int | None:
    """The newest finalized checkpoint step in ``workdir`` (None if there is none)."""
    with Checkpointer(_checkpoint_dir(workdir), read_only=True) as ckpt:
        return ckpt.latest_step()


def _check_run(ckpt: Checkpointer, exp: builders.Experiment, purpose: str) -> None:
    """`check_compatible` of ``exp``'s config with the one saved with the run (nothing for older runs)."""
    saved = ckpt.read_config()
    if saved is not None:
        check_compatible(saved, exp.config, purpose=purpose)


def checked_latest_step(exp: builders.Experiment, workdir: str, *, purpose: str = "eval") -> int:
    """The latest checkpoint step of the run in ``workdir``, after `check_compatible` with ``exp``
    (0 for a workdir without checkpoints when model.init_from gives the weights)."""
    if exp.init_from and not _has_checkpoint(workdir):
        return 0
    with Checkpointer(_checkpoint_dir(workdir), read_only=True) as ckpt:
        _check_run(ckpt, exp, purpose)
        step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no finalized checkpoint in {ckpt.directory}; train first (--mode=train)")
    return step


def restore_params(exp: builders.Experiment, workdir: str, *, debias: bool = False, purpose: str = "sample",
                   check: bool = True) -> Run:  # fmt: skip
    """The EMA parameters of the newest intact checkpoint in ``workdir`` (a damaged newer one is reported and
    skipped, its files left as they are), restored for ``exp``, after `check_compatible` of ``exp``'s
    config with the run's saved one (``check=False`` skips it).

    ``debias``: for runs trained without the EMA warm-up (training.ema_warmup=False), remove the
    initialisation's share d^n theta_0 exactly (`diffax.training.optim.debias_ema`).
    With model.init_from and no checkpoint in ``workdir``: the imported weights, step 0 (`imported_params`).
    """
    if exp.init_from and not _has_checkpoint(workdir):
        return Run(exp, jax.tree.map(jnp.asarray, imported_params(exp)), 0)
    mesh = device_mesh.make_mesh()
    with Checkpointer(_checkpoint_dir(workdir), read_only=True) as ckpt:  # never touches a trainer's files
        if check:
            _check_run(ckpt, exp, purpose)
        restored = ckpt.restore_latest_intact(abstract_state(exp, mesh), quarantine=False)
        if restored is None:
            raise FileNotFoundError(f"no finalized checkpoint in {ckpt.directory}; train first (--mode=train)")
        state, _, step = restored
    params = state.ema_params
    if debias:
        params = optim.debias_ema(params, initial_params(exp), exp.train.ema_decay, step)
    return Run(exp, params, step)


# The config sections that define the trained network and its objective: they must match the run's.
_RUN_SECTIONS = ("model", "diffusion", "data", "ncsn", "edm", "flow", "sde")
_RUN_KEYS = ("training.objective",)
# Where the data lives, and the compute dtype (parameters stay float32 either way), may change between calls;
# how it was trained with may not (except when sampling).
_ALWAYS_FREE = ("data.path", "data.data_dir", "model.dtype")
_FREE_AFTER_TRAINING = ("data.num_train", "data.random_flip", "diffusion.loss_type", "diffusion.lambda_vlb",
                        "diffusion.timestep_sampling", "edm.p_mean", "edm.p_std", "edm.sigma_min", "edm.sigma_max",
                        "flow.t_sampling", "flow.logit_mean", "flow.logit_std", "sde.t_eps", "sde.likelihood_weighting",
                        "sde.sampling_eps")  # fmt: skip
_FIXED_VARIANCES = ("fixed_small", "fixed_large")
# A resume must also match these: the toy training set is drawn from the seed, and the saved data position
# counts batches of training.batch_size (at another seed or batch size the resumed steps see other data).
# Sampling and eval may change them (another seed: new samples; the batch size is not used).
_RESUME_KEYS = ("seed", "training.batch_size")
# Runs saved before diffusion.beta_start / beta_end existed (commit 9cf5ade) trained the linear, quadratic and
# sigmoid schedules with DDPM's unscaled 1e-4 .. 0.02 at every T; today None means those scaled by 1000 / T.
_BETA_SCHEDULES = ("linear", "quadratic", "sigmoid")
_UNSCALED_BETAS = {"beta_start": 1e-4, "beta_end": 0.02}
# Keys added since, with the value every run saved before them had (the network they build is that one).
_ADDED_KEYS_OLD_VALUES = {"model.skip_rescale": False}


def _with_trained_betas(saved: dict) -> dict:
    """``saved`` with a diffusion section that lacks beta_start / beta_end (a run older than the keys, of a
    linear / quadratic / sigmoid schedule) given the unscaled 1e-4 / 0.02 it was trained with."""
    d = saved.get("diffusion", {})
    if d.get("schedule") not in _BETA_SCHEDULES:
        return saved
    return {**saved, "diffusion": {**_UNSCALED_BETAS, **d}}


def _beta_values(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config with diffusion.beta_start / beta_end None replaced by the value it means, 1000 / T
    times 1e-4 / 0.02 (`schedules.linear`'s default), so that configs giving equal betas compare equal."""
    if flat.get("diffusion.schedule") not in _BETA_SCHEDULES:
        return flat
    scaled = {f"diffusion.{k}": 1000.0 / flat["diffusion.num_timesteps"] * v for k, v in _UNSCALED_BETAS.items()}
    return {**flat, **{k: v for k, v in scaled.items() if k in flat and flat[k] is None}}


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def check_compatible(saved: dict, current: dict, *, purpose: str) -> None:
    """Raises ValueError unless ``current`` describes the same network and objective as the run's ``saved``
    config: every key of model.*, diffusion.*, data.*, ncsn.*, edm.*, flow.*, sde.* and training.objective must be equal, except
    the data's location and model.dtype (activations only: parameters are float32 either way), and for ``purpose`` 'sample' / 'eval' the training-only keys (data.num_train,
    random_flip, diffusion.loss_type, lambda_vlb, timestep_sampling, edm.p_mean / p_std (the training sigma
    distribution), edm.sigma_min / sigma_max (the 'edm' sampler's range), flow.*, sde.t_eps /
    likelihood_weighting (training) / sampling_eps (sampling); sde.process and its parameters always count) and a fixed variance
    (diffusion.var_type fixed_small <-> fixed_large, a sampling choice; Ho et al. 2020 sec. 3.2). A resume
    must also keep the seed (the toy training set is drawn from it) and training.batch_size (the saved data
    position counts its batches); sample / eval may change them (another seed draws other samples).
    diffusion.beta_start / beta_end compare as the betas they give (None: 1000 / T times 1e-4 / 0.02; a run
    saved before the keys: the unscaled 1e-4 / 0.02 it was trained with); a saved UNet config without
    model.skip_rescale compares as False (the network it was trained as). Other keys the saved config lacks
    (runs older than the key) are not compared. One line lists every mismatch."""
    if purpose not in ("resume", "sample", "eval"):
        raise ValueError(f"purpose must be 'resume', 'sample' or 'eval', got {purpose!r}")
    a, b = _beta_values(_flatten(_with_trained_betas(saved))), _beta_values(_flatten(current))
    a = {**_ADDED_KEYS_OLD_VALUES, **a}  # a run saved before such a key was built with its old value
    free = set(_ALWAYS_FREE) | (set(_FREE_AFTER_TRAINING) if purpose != "resume" else set())
    keys = [k for k in b if k.split(".")[0] in _RUN_SECTIONS or k in _RUN_KEYS
            or (purpose == "resume" and k in _RESUME_KEYS)]  # fmt: skip
    bad = [k for k in sorted(keys) if k in a and k not in free and a[k] != b[k]]
    if purpose != "resume" and "diffusion.var_type" in bad and {a["diffusion.var_type"], b["diffusion.var_type"]} <= set(
            _FIXED_VARIANCES):  # fmt: skip
        bad.remove("diffusion.var_type")
    if bad:
        diffs = "; ".join(f"{k}: run {a[k]!r} vs now {b[k]!r}" for k in bad)
        raise ValueError(f"the config does not match the run it would {purpose} ({diffs}); use the run's values "
                         "(sampling.* and eval.* may differ) or another --workdir")  # fmt: skip


def saved_config(workdir: str) -> dict | None:
    """The config the run in ``workdir`` was saved with (with its latest checkpoint, or config.json for
    older runs), as a dict; None when there is no run there yet."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        return None
    with Checkpointer(directory, read_only=True) as ckpt:
        return ckpt.read_config()


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config the run in ``workdir`` was trained with (its ``checkpoints/config.json``)."""
    config = saved_config(workdir)
    if config is None:
        raise FileNotFoundError(f"no run config in {os.path.join(workdir, CHECKPOINT_DIR)}: train that run first "
                                "(python -m diffax.main ... --mode=train)")  # fmt: skip
    return upgrade_config(config)


def upgrade_config(saved: dict) -> ml_collections.ConfigDict:
    """A saved config as a ConfigDict with every key of today's `presets.base_config`: keys added since the
    run was saved take the value that reproduces the old behaviour, the rest their defaults:

      training.ema_warmup               False (runs saved without the key had no EMA warm-up);
      diffusion.beta_start / beta_end   1e-4 / 0.02 for linear / quadratic / sigmoid: the code before the keys
                                        used DDPM's unscaled betas at every T (today's None scales them by
                                        1000 / T, equal only at T = 1000);
      diffusion.max_terminal_alpha_bar  1.0 (that code refused no schedule: a T = 100 run ends at 0.36);
      eval.fid_num_reference            (one key for two counts) -> eval.classifier_fid_num_test and
                                        eval.fid_num_train, both its value.

    The model section is the saved one as it is."""
    config = presets.base_config()
    config.training.ema_warmup = False
    if "max_terminal_alpha_bar" not in saved.get("diffusion", {}):
        config.diffusion.max_terminal_alpha_bar = 1.0
    model = saved.get("model", {})
    saved = {k: v for k, v in _with_trained_betas(saved).items() if k != "model"}
    if "fid_num_reference" in saved.get("eval", {}):
        eval_ = dict(saved["eval"])
        n = eval_.pop("fid_num_reference")
        saved["eval"] = {**eval_, "classifier_fid_num_test": n, "fid_num_train": n}
    config.update(saved)
    config.model = ml_collections.ConfigDict(model)
    return config


def restore_ema(workdir: str, *, debias: bool | None = False, config: ml_collections.ConfigDict | None = None) -> Run:
    """`restore_params` of the run in ``workdir`` with its own saved config (or ``config`` if given).

    ``debias=None``: debias exactly when the run was trained without the EMA warm-up (its saved
    training.ema_warmup is False or missing), see `restore_params`.
    """
    exp = builders.build(config if config is not None else read_run_config(workdir))
    if debias is None:
        debias = not exp.train.ema_warmup
    return restore_params(exp, workdir, debias=debias)


def load_run(workdir: str):
    """(config, module, ema_params, step) of the run saved in `workdir` (its saved config and latest
    checkpoint), e.g. a noise-aware classifier for classifier guidance."""
    config = read_run_config(workdir)
    run = restore_ema(workdir, config=config)
    return config, run.experiment.model, run.params, run.step
