"""Tests for configs/*.py and diffax.training.builders: the key contract, locking, CLI overrides,
and that every config builds (schedule, model shapes, optimizer, sampler) without training.
"""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from diffax import data, schedules
from diffax.training import builders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
NAMES = [os.path.basename(p)[:-3] for p in CONFIG_FILES]
CONTRACT_KEYS = [
    "seed", "data.name", "training.num_steps", "training.batch_size", "training.checkpoint_every",
    "training.log_every", "optim.lr", "model.name", "diffusion.schedule", "diffusion.num_timesteps",
    "sampling.method", "sampling.num_steps", "sampling.eta", "sampling.num_samples",
]  # fmt: skip


def _parse(path: str, *overrides: str) -> ml_collections.ConfigDict:
    """Loads a config through absl + config_flags exactly as `diffax.main` does (locked)."""
    argv = ["prog", f"--config={path}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


def _get(config, dotted):
    for k in dotted.split("."):
        config = config[k]
    return config


def test_all_expected_configs_exist():
    assert {"default", "gmm1d", "toy2d", "mnist", "cifar10"} <= set(NAMES)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=NAMES)
def test_config_keys_lock_and_build(path):
    config = _parse(path)
    keys = set(builders.base_config().keys())
    assert set(config.keys()) == keys
    for k in CONTRACT_KEYS:
        _get(config, k)  # present (KeyError otherwise)
    assert config.model.name in ("mlp", "unet", "classifier")
    # Locked: a new key is an error, in Python and on the command line.
    with pytest.raises(AttributeError):
        config.training.num_stepz = 3
    with pytest.raises((flags.Error, AttributeError), match="num_stepz"):
        _parse(path, "--config.training.num_stepz=3")
    # An override of an existing key works and keeps its type.
    assert _parse(path, "--config.training.num_steps=7").training.num_steps == 7

    shape = data.data_shape(config.data.name, path=config.data.path) if config.data.name != "npz" else (32, 32, 3)
    model = builders.build_model(config, shape)
    s = builders.build_schedule(config)
    assert s.num_timesteps == config.diffusion.num_timesteps
    # Shapes only (jax.eval_shape: no FLOPs): the output has the data's shape (x2 with learned variances).
    params = jax.eval_shape(lambda: builders.init_params(model, jax.random.PRNGKey(0), shape))
    tx = builders.build_optimizer(config)
    jax.eval_shape(tx.init, params)
    out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((2, *shape)), jnp.zeros((2,), jnp.int32)), params)
    if config.training.objective == "noisy_classifier":
        assert out.shape == (2, config.model.num_classes)  # logits
        with pytest.raises(ValueError, match="no sampler"):
            builders.build_sampler(config, model, s, shape)
        return
    assert out.shape == (2, *shape)
    sample_fn = builders.build_sampler(config, model, s, shape)
    assert jax.eval_shape(lambda p: sample_fn(p, jax.random.PRNGKey(0), 2), params).shape == (2, *shape)
    assert config.training.batch_size % jax.device_count() == 0


def test_cifar10_config_is_the_ddpm_papers():
    """Ho et al. 2020, appendix B: 35.7M parameters, lr 2e-4, warm-up 5000, batch 128, 800k steps,
    EMA 0.9999, T = 1000 linear betas 1e-4..0.02, dropout 0.1, random flips."""
    config = _parse(os.path.join(REPO, "configs", "cifar10.py"))
    model = builders.build_model(config, (32, 32, 3))
    params = jax.eval_shape(lambda: builders.init_params(model, jax.random.PRNGKey(0), (32, 32, 3)))
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert n == pytest.approx(35.7e6, rel=0.005), n
    assert (config.optim.lr, config.optim.warmup_steps, config.training.batch_size) == (2e-4, 5000, 128)
    assert (config.training.num_steps, config.training.ema_decay, config.model.dropout) == (800_000, 0.9999, 0.1)
    assert config.data.random_flip and tuple(config.model.ch_mult) == (1, 2, 2, 2)
    np.testing.assert_allclose(builders.build_schedule(config).betas, schedules.linear(1000).betas)


def test_gmm1d_config_is_the_seed_experiment():
    config = _parse(os.path.join(REPO, "configs", "gmm1d.py"))
    assert config.data.name == "gmm1d" and config.data.num_train == 800 and config.diffusion.num_timesteps == 1000
    mix = data.toy_mixture("gmm1d")
    np.testing.assert_allclose(np.asarray(mix.weights), [0.5, 0.5])
    np.testing.assert_allclose(np.asarray(mix.means)[:, 0], [-2.0, 2.0])
    np.testing.assert_allclose(np.asarray(mix.stds)[:, 0], [0.5, 0.5])


def test_toy2d_config_arg_picks_the_data_set():
    path = os.path.join(REPO, "configs", "toy2d.py")
    assert _parse(path + ":checkerboard").data.name == "checkerboard"
    with pytest.raises(Exception, match="unknown data set"):
        _parse(path + ":nope")


def test_objective_model_and_sampler_must_fit():
    """A classifier trains only with 'noisy_classifier' and vice versa; 'ncsn' samples only with
    'annealed_langevin'; guidance needs its ingredients. Each mismatch names the values."""
    config = builders.base_config()
    config.training.objective = "noisy_classifier"
    with pytest.raises(ValueError, match="training.objective='noisy_classifier' does not fit model.name='mlp'"):
        builders.objective(config)
    config.training.objective = "score"
    with pytest.raises(ValueError, match="training.objective must be one of"):
        builders.objective(config)
    config = builders.base_config()
    model, s = builders.build_model(config, (2,)), builders.build_schedule(config)
    config.sampling.method = "annealed_langevin"
    with pytest.raises(ValueError, match="'ncsn' samples with 'annealed_langevin'"):
        builders.build_sampler(config, model, s, (2,))
    config.sampling.method, config.training.objective = "ddpm", "ncsn"
    with pytest.raises(ValueError, match="sampling.method='ddpm' does not fit training.objective='ncsn'"):
        builders.build_sampler(config, model, s, (2,))
    config.training.objective, config.sampling.guidance_w = "diffusion", 1.0
    with pytest.raises(ValueError, match="guidance_w=1.0 needs a class-conditional model"):
        builders.build_sampler(config, model, s, (2,))
    config.sampling.guidance_w, config.sampling.classifier_scale = 0.0, 2.0
    with pytest.raises(ValueError, match="classifier_scale=2.0 needs a classifier"):
        builders.build_sampler(config, model, s, (2,))


@pytest.mark.parametrize(
    "key, value, match",
    [("model.name", "transformer", "model.name"), ("sampling.method", "euler", "sampling.method"),
     ("diffusion.var_type", "big", "var_type"), ("sampling.num_steps", 5000, "sampling.num_steps"),
     ("training.batch_size", 0, "batch_size")],
)  # fmt: skip
def test_builders_reject_bad_values(key, value, match):
    config = builders.base_config()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ValueError, match=match):
        model = builders.build_model(config, (2,))
        builders.per_process_batch_size(config)
        builders.build_sampler(config, model, builders.build_schedule(config), (2,))
