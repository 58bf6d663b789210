"""Tests for configs/*.py and the config builders (`diffax.training.builders` and its parts): the key contract, locking, CLI overrides,
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
from diffax.training import builders, model_builders, presets, sampler_builders, train_builders

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
    keys = set(presets.base_config().keys())
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
    model = model_builders.build_model(config, shape)
    s = model_builders.build_schedule(config)
    assert s.num_timesteps == config.diffusion.num_timesteps
    # Shapes only (jax.eval_shape: no FLOPs): the output has the data's shape (x2 with learned variances).
    params = jax.eval_shape(lambda: model_builders.init_params(model, jax.random.PRNGKey(0), shape))
    tx = train_builders.build_optimizer(config)
    jax.eval_shape(tx.init, params)
    out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((2, *shape)), jnp.zeros((2,), jnp.int32)), params)
    if config.training.objective == "noisy_classifier":
        assert out.shape == (2, config.model.num_classes)  # logits
        with pytest.raises(ValueError, match="no sampler"):
            sampler_builders.build_sampler(config, model, s, shape)
        return
    assert out.shape == (2, *shape)
    sample_fn = sampler_builders.build_sampler(config, model, s, shape)
    assert jax.eval_shape(lambda p: sample_fn(p, jax.random.PRNGKey(0), 2), params).shape == (2, *shape)
    assert config.training.batch_size % jax.device_count() == 0


def test_cifar10_config_is_the_ddpm_papers():
    """Ho et al. 2020, appendix B: 35.7M parameters, lr 2e-4, warm-up 5000, batch 128, 800k steps,
    EMA 0.9999, T = 1000 linear betas 1e-4..0.02, dropout 0.1, random flips."""
    config = _parse(os.path.join(REPO, "configs", "cifar10.py"))
    model = model_builders.build_model(config, (32, 32, 3))
    params = jax.eval_shape(lambda: model_builders.init_params(model, jax.random.PRNGKey(0), (32, 32, 3)))
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert n == pytest.approx(35.7e6, rel=0.005), n
    assert (config.optim.lr, config.optim.warmup_steps, config.training.batch_size) == (2e-4, 5000, 128)
    assert (config.training.num_steps, config.training.ema_decay, config.model.dropout) == (800_000, 0.9999, 0.1)
    assert config.data.random_flip and tuple(config.model.ch_mult) == (1, 2, 2, 2)
    np.testing.assert_allclose(model_builders.build_schedule(config).betas, schedules.linear(1000).betas)


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
    for variant, process, method in (("vp_sde", "vp", "ode"), ("two_moons,ve_sde", "ve", "pc")):
        config = _parse(f"{path}:{variant}")
        assert (config.training.objective, config.sde.process, config.sampling.method) == ("score_sde", process, method)
    with pytest.raises(Exception, match="unknown data set"):
        _parse(path + ":edm,ve_sde")  # one objective variant at most


def test_objective_model_and_sampler_must_fit():
    """A classifier trains only with 'noisy_classifier' and vice versa; 'ncsn' samples only with
    'annealed_langevin'; guidance needs its ingredients. Each mismatch names the values."""
    config = presets.base_config()
    config.training.objective = "noisy_classifier"
    with pytest.raises(ValueError, match="training.objective='noisy_classifier' does not fit model.name='mlp'"):
        train_builders.objective(config)
    config.training.objective = "score"
    with pytest.raises(ValueError, match=r"unknown training.objective 'score'; allowed: \['diffusion', 'ncsn', 'noisy_classifier', 'edm', 'flow_matching', 'score_sde'\]"):
        train_builders.objective(config)
    config = presets.base_config()
    model, s = model_builders.build_model(config, (2,)), model_builders.build_schedule(config)
    config.sampling.method = "annealed_langevin"
    with pytest.raises(ValueError, match="'ncsn' samples with 'annealed_langevin'"):
        sampler_builders.build_sampler(config, model, s, (2,))
    config.sampling.method, config.training.objective = "ddpm", "ncsn"
    with pytest.raises(ValueError, match="sampling.method='ddpm' does not fit training.objective='ncsn'"):
        sampler_builders.build_sampler(config, model, s, (2,))
    config.training.objective, config.sampling.guidance_w = "diffusion", 1.0
    with pytest.raises(ValueError, match="guidance_w=1.0 needs a class-conditional model"):
        sampler_builders.build_sampler(config, model, s, (2,))
    config.sampling.guidance_w, config.sampling.classifier_scale = 0.0, 2.0
    with pytest.raises(ValueError, match="classifier_scale=2.0 needs a classifier"):
        sampler_builders.build_sampler(config, model, s, (2,))


@pytest.mark.parametrize(
    "key, value, match",
    [("model.name", "transformer", "model.name"), ("sampling.method", "euler", "sampling.method"),
     ("diffusion.var_type", "big", "var_type"), ("sampling.num_steps", 5000, "sampling.num_steps"),
     ("training.batch_size", 0, "batch_size")],
)  # fmt: skip
def test_builders_reject_bad_values(key, value, match):
    config = presets.base_config()
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ValueError, match=match):
        model = model_builders.build_model(config, (2,))
        train_builders.per_process_batch_size(config)
        sampler_builders.build_sampler(config, model, model_builders.build_schedule(config), (2,))


def test_cifar10_docstring_states_its_sampling_variance():
    """configs/cifar10.py samples with sigma_t^2 = beta_t ('fixed_large', the DDPM code's CIFAR-10 choice), and
    its docstring says so (it used to claim beta-tilde)."""
    import importlib.util

    path = os.path.join(REPO, "configs", "cifar10.py")
    spec = importlib.util.spec_from_file_location("cifar10_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert _parse(path).diffusion.var_type == "fixed_large"
    doc = " ".join(module.__doc__.split())
    assert "sigma_t^2 = beta_t (diffusion.var_type 'fixed_large'" in doc
    assert "fixed variance beta-tilde for sampling" not in doc


# ------------------------------------------------------------------------ importance sampling needs an L_t
def _per_example_vb(loss_type: str, var_type: str) -> np.ndarray:
    """losses.hybrid's per-example L_t (the values importance sampling learns p_t from) for a fixed model
    output at 64 random t: the mean is 0.1 x_t, a learned variance interpolation tanh(x_t)."""
    from diffax import losses

    s = schedules.linear(100)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    learned = var_type in ("learned", "learned_range")

    def model_fn(x, t):
        return jnp.concatenate([0.1 * x, jnp.tanh(x)], -1) if learned else 0.1 * x

    _, terms = losses.hybrid(model_fn, s, jax.random.PRNGKey(1), x0, loss_type=loss_type, var_type=var_type,
                             return_terms=True)  # fmt: skip
    return np.asarray(terms["vb"])


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned", "learned_range"])
@pytest.mark.parametrize("loss_type", ["simple", "vlb", "rescaled_vlb", "hybrid", "rescaled_mse"])
def test_importance_sampling_is_accepted_exactly_where_the_loss_has_an_L_t(loss_type, var_type):
    """diffusion.timestep_sampling='importance' builds exactly for the (loss_type, var_type) whose per-example L_t
    (`losses.hybrid`'s vb term) is not identically 0; elsewhere t would stay uniform forever (p_t ∝
    sqrt(E[L_t^2]) = 0 for every t), and it is refused naming the loss and what would work."""
    config = presets.base_config()
    config.diffusion.num_timesteps = 100
    config.diffusion.loss_type, config.diffusion.var_type = loss_type, var_type
    config.diffusion.timestep_sampling = "importance"
    has_lt = bool(np.any(_per_example_vb(loss_type, var_type) != 0))
    if has_lt:
        assert builders.build(config).importance_sampling
    else:
        with pytest.raises(ValueError, match=rf"needs a loss with a per-timestep L_t.*got loss_type={loss_type!r}.*"
                                             "t would stay uniform"):  # fmt: skip
            builders.build(config)
    learned = var_type in ("learned", "learned_range")
    assert has_lt == (loss_type in ("vlb", "rescaled_vlb") or (loss_type != "simple" and learned))  # the table


def test_importance_sampling_applies_to_the_diffusion_objective_only():
    config = presets.base_config()
    config.training.objective, config.diffusion.loss_type = "ncsn", "vlb"
    config.diffusion.timestep_sampling, config.sampling.method = "importance", "annealed_langevin"
    with pytest.raises(ValueError, match="applies to training.objective='diffusion', got 'ncsn'"):
        builders.build(config)


# ------------------------------------------------------------------------ 'leading' that does not start at T - 1
@pytest.mark.parametrize("num_steps, first", [(300, 897), (400, 798), (250, None), (10, None), (1000, None)])
def test_leading_warns_naming_the_first_step_when_n_does_not_divide_t(num_steps, first, caplog):
    """sampling.spacing='leading' (diffusers' rule, stride T // N) with N not dividing T starts below T - T/N:
    N = 300 / 400 of T = 1000 start at 897 / 798 (alpha-bar 2.9e-4 / 1.6e-3 against 4.0e-5 at 999). Kept (it is
    diffusers' 'leading'), with a warning naming the first step; N = 250 and 10 (divisors) and N = T do not
    warn, nor does 'trailing' at 300."""
    config = presets.base_config()
    config.sampling.num_steps = num_steps
    with caplog.at_level("WARNING", logger="diffax.training.sampler_builders"):
        builders.build(config).sampler()
    warnings = [r.getMessage() for r in caplog.records if "sampling.spacing='leading'" in r.getMessage()]
    if first is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"starts at step {first} (alpha-bar" in warnings[0], warnings
        assert "not at T - 1 = 999 (alpha-bar 4e-05)" in warnings[0]
        assert schedules.space_timesteps(1000, num_steps, "leading")[-1] == first
        caplog.clear()
        config.sampling.spacing = "trailing"
        with caplog.at_level("WARNING", logger="diffax.training.sampler_builders"):
            builders.build(config).sampler()
        assert "sampling.spacing" not in caplog.text


# ------------------------------------------------------------------------ eval settings checked before any work
def test_eval_num_samples_is_refused_before_any_sample_is_drawn(tmp_path):
    """python -m diffax.main --mode=eval with eval.inception_weights set, eval.num_samples = 50,000 (default) and
    sampling.num_samples = 4, on diffusers weights (model.init_from, no checkpoint needed): one error line naming
    both settings, and nothing written (no samples/ part, no samples.npz, no eval.json). Before, the 4
    samples were drawn and their parts written, and only then was the count refused."""
    import subprocess
    import sys

    from _processes import cpu_env

    from diffax.interop import config_overrides

    d = os.path.join(REPO, "tests", "fixtures", "diffusers", "ddpm_cifar10_tiny")
    overrides = {**config_overrides(d), "sampling.num_samples": 4, "sampling.method": "ddim", "sampling.num_steps": 2}
    flags_ = [f"--config.{k}={model_builders.flag_value(v)}" for k, v in overrides.items() if v is not None]
    wd = tmp_path / "wd"
    cmd = [sys.executable, "-m", "diffax.main", "--config=configs/cifar10.py", f"--workdir={wd}", "--mode=eval",
           f"--config.model.init_from={d}", f"--config.eval.inception_weights={tmp_path / 'inception.npz'}", *flags_]
    proc = subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("diffax: error: ValueError: eval.num_samples=50000"), proc.stderr
    assert "sampling.num_samples=4" in last
    written = [str(p.relative_to(wd)) for p in wd.rglob("*")] if wd.exists() else []
    assert written == [], written


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_lock_stale_after_s_is_checked_by_build(bad):
    """training.lock_stale_after_s is a setting of the Experiment (train.py reads `exp.train`, not the config):
    600 s by default, and a value that is not a finite number of seconds > 0 is refused by `builders.build`,
    before any mode runs (it used to be checked only when training started)."""
    config = presets.base_config()
    assert builders.build(config).train.lock_stale_after_s == 600.0
    config.training.lock_stale_after_s = bad
    with pytest.raises(ValueError, match=rf"training.lock_stale_after_s must be a finite number of seconds > 0, "
                                         rf"got {bad!r}"):  # fmt: skip
        builders.build(config)


def test_sample_fingerprint_parts_are_what_sample_i_depends_on():
    """`SampleSettings.fingerprint_parts` (the finished sample parts' key, so evaluate reads no config): equal for
    two sampling.batch_size values (the chunk size does not change sample i), different for another
    sampling.eta or seed, and the very parts the fingerprint was made of before it moved into the Experiment
    (seed, model.*, diffusion.*, ncsn.*, sampling.* without batch_size and without the keys added for the
    continuous-time samplers and for the solver methods, data.name), so parts saved before are reused."""
    from diffax.training import solver_builders

    config = presets.load_config(os.path.join(REPO, "configs", "gmm1d.py"))
    parts = builders.build(config).sampling.fingerprint_parts
    c = config.to_dict()
    assert parts == (c["seed"], c["model"], c["diffusion"], c["ncsn"],
                     {k: v for k, v in c["sampling"].items()
                      if k != "batch_size" and k not in sampler_builders.CONTINUOUS_SAMPLING_KEYS
                      and k not in solver_builders.SOLVER_SAMPLING_KEYS},
                     c["data"]["name"])  # fmt: skip
    config.sampling.batch_size = 7
    assert builders.build(config).sampling.fingerprint_parts == parts
    config.sampling.eta = 0.5
    assert builders.build(config).sampling.fingerprint_parts != parts
    config.sampling.eta, config.seed = c["sampling"]["eta"], c["seed"] + 1
    assert builders.build(config).sampling.fingerprint_parts != parts


# ------------------------------------------------------------------------ the solver methods' keys
@pytest.mark.parametrize(
    "method, key, value, match",
    [("dpm_solver_pp", "order", 4, r"sampling.order must be 1, 2 or 3 \(None: 2\) for sampling.method='dpm_solver_pp', got 4"),
     ("unipc", "order", 0, r"sampling.order must be 1, 2 or 3 \(None: 2\) for sampling.method='unipc', got 0"),
     ("ddim", "order", 2, r"sampling.order=2 applies to sampling.method 'dpm_solver_pp' / 'unipc' only; 'ddim' has no order"),
     ("ode", "order", 3, r"sampling.order=3 applies to .* only; 'ode' has no order"),
     ("pc", "order", 1, r"sampling.order=1 applies to .* only; 'pc' has no order"),
     ("dpm_solver_pp", "timestep_grid", "log_snr",
      r"unknown sampling.timestep_grid 'log_snr'; allowed: \['time_uniform', 'logSNR', 'edm', 'leading', 'linspace', 'trailing'\]"),
     ("unipc", "unipc_variant", "bh3", r"unknown sampling.unipc_variant 'bh3'; allowed: \['bh1', 'bh2'\]"),
     ("unipc", "num_steps", 1001, r"sampling.num_steps must be an int in \[1, 1000\], got 1001"),
     ("ode", "num_steps", 10, r"sampling.num_steps=10 does not apply to sampling.method='ode' \(it takes adaptive steps"),
     ("pc", "clip_x0", 1.0, r"sampling.clip_x0=1.0 does not apply to sampling.method='pc'"),
     ("ode", "ode_rtol", 0.0, r"sampling.ode_rtol must be a finite number > 0, got 0.0"),
     ("pc", "pc_snr", -0.1, r"sampling.pc_snr must be a finite number > 0, got -0.1"),
     ("pc", "pc_n_corrector", -1, r"sampling.pc_n_corrector must be an int >= 0, got -1")],
)  # fmt: skip
def test_solver_method_keys_are_checked_by_build(method, key, value, match):
    """sampling.order / timestep_grid / unipc_variant / num_steps / ode_* / pc_* of the solver methods: one error
    naming the bad value and what is allowed, from `builders.build` (before any training)."""
    config = presets.base_config()
    config.sampling.method = method
    config.sampling[key] = value
    with pytest.raises(ValueError, match=match):
        builders.build(config)


def test_solver_method_defaults_build():
    """With every solver key at its default each of 'dpm_solver_pp', 'unipc', 'ode', 'pc' builds, and the
    defaults are the documented ones (order 2 and 20 steps on 'time_uniform'; UniPC 'bh2'; the ODE's
    tolerances 1e-5; pc's snr 0.16 with one corrector step)."""
    from diffax.training import solver_builders

    want = {"dpm_solver_pp": dict(order=2, num_steps=20, spacing="time_uniform"),
            "unipc": dict(order=2, num_steps=20, spacing="time_uniform", variant="bh2"),
            "ode": dict(rtol=1e-5, atol=1e-5), "pc": dict(snr=0.16, n_corrector=1)}  # fmt: skip
    for method, kw in want.items():
        config = presets.base_config()
        config.sampling.method = method
        builders.build(config)
        assert solver_builders.check_keys(config, method) == kw, method


# ------------------------------------------------------------------------ the two FID reference counts
def test_fid_reference_counts_are_two_keys_each_counting_its_images(monkeypatch, tmp_path):
    """eval.classifier_fid_num_test counts the TEST images the classifier FID compares with, eval.fid_num_train
    the TRAINING images of the Inception reference (one key, fid_num_reference, used to count both)."""
    from diffax.training import evaluate_images

    config = _parse(os.path.join(REPO, "configs", "cifar10.py"), "--config.eval.classifier_fid_num_test=3",
                    "--config.eval.fid_num_train=5", "--config.eval.classifier_path=clf.msgpack")  # fmt: skip
    exp = builders.build(config)
    test_images, train_images = np.zeros((10, 32, 32, 3), np.uint8), np.ones((12, 32, 32, 3), np.uint8)
    monkeypatch.setattr(evaluate_images, "test_split", lambda exp: (test_images, None))
    monkeypatch.setattr(evaluate_images, "train_split", lambda exp: train_images)
    seen = {}

    def classifier_metrics(samples, path, reference, sample_labels=None):
        seen["classifier"] = reference
        return {}

    def reference_stats(images, *args, **kwargs):
        seen["inception"] = images
        return images

    monkeypatch.setattr(evaluate_images.image_eval, "classifier_metrics", classifier_metrics)
    monkeypatch.setattr(evaluate_images.inception_metrics, "reference_stats", reference_stats)
    monkeypatch.setattr(evaluate_images.inception_metrics, "save_reference", lambda *a, **k: None)
    evaluate_images.image_eval_metrics(exp, str(tmp_path), np.zeros((4, 32, 32, 3)))
    evaluate_images.fid_reference(exp, str(tmp_path), None, None, "0" * 64, None)
    assert seen["classifier"].shape[0] == 3 and np.all(seen["classifier"] == 0)  # test images
    assert seen["inception"].shape[0] == 5 and np.all(seen["inception"] == 1)  # training images


# ------------------------------------------------------------------------ configs saved by older versions
def _saved(**diffusion) -> dict:
    from diffax.training import presets

    config = presets.load_config(os.path.join(REPO, "configs", "gmm1d.py")).to_dict()
    config["diffusion"].update(diffusion)
    return config


def test_upgrade_of_a_config_saved_before_the_beta_keys_keeps_its_unscaled_betas():
    """A run saved before diffusion.beta_start / beta_end / max_terminal_alpha_bar existed (commit 9cf5ade) was
    trained with DDPM's unscaled linear(T, 1e-4, 0.02) at every T: at T = 100 the upgraded config builds
    exactly those betas (not today's None = 1000/T-scaled, 10x larger), and its schedule is not refused
    (that code had no terminal alpha-bar check: 0.36 here). The same keys present are kept as saved."""
    from diffax.training import restore

    old = _saved(num_timesteps=100)
    for k in ("beta_start", "beta_end", "max_terminal_alpha_bar"):
        del old["diffusion"][k]
    upgraded = restore.upgrade_config(old)
    betas = np.asarray(model_builders.build_schedule(upgraded).betas)
    np.testing.assert_array_equal(betas, np.asarray(schedules.linear(100, 1e-4, 0.02).betas))
    assert not np.allclose(betas, np.asarray(schedules.linear(100).betas))  # the scaled default differs
    new = restore.upgrade_config(_saved(num_timesteps=100))
    assert new.diffusion.beta_start is None and new.diffusion.max_terminal_alpha_bar == 1e-3


def test_config_check_compares_the_betas_a_run_was_trained_with():
    """Resuming / sampling an old T = 100 run (no beta keys: unscaled betas) with today's config (None: the scaled
    ones) is refused naming the betas; at T = 1000 both mean 1e-4 .. 0.02 and pass; a new run's None equals
    its spelled-out value 1000/T * (1e-4, 0.02)."""
    from diffax.training import restore

    for T, refused in ((100, True), (1000, False)):
        old = _saved(num_timesteps=T)
        del old["diffusion"]["beta_start"], old["diffusion"]["beta_end"]
        if refused:
            with pytest.raises(ValueError, match=r"diffusion.beta_end: run 0.02 vs now 0.2; diffusion.beta_start: "
                                                 r"run 0.0001 vs now 0.001"):  # fmt: skip
                restore.check_compatible(old, _saved(num_timesteps=T), purpose="sample")
        else:
            restore.check_compatible(old, _saved(num_timesteps=T), purpose="resume")
    restore.check_compatible(_saved(num_timesteps=200), _saved(num_timesteps=200, beta_start=5e-4, beta_end=0.1),
                             purpose="resume")  # fmt: skip


def test_upgrade_maps_the_old_fid_num_reference_to_both_counts():
    from diffax.training import restore

    old = _saved()
    del old["eval"]["classifier_fid_num_test"], old["eval"]["fid_num_train"]
    old["eval"]["fid_num_reference"] = 7
    upgraded = restore.upgrade_config(old)
    assert (upgraded.eval.classifier_fid_num_test, upgraded.eval.fid_num_train) == (7, 7)
    assert "fid_num_reference" not in upgraded.eval
    assert builders.build(upgraded).eval.fid_num_train == 7


@pytest.mark.parametrize("purpose", ["resume", "sample", "eval"])
def test_seed_and_batch_size_must_match_on_resume_only(purpose):
    """A resume must keep the seed (toy training data is drawn from it) and training.batch_size (the saved data
    position counts its batches); sample / eval may change both (another seed: other samples)."""
    from diffax.training import restore

    saved, now = _saved(), _saved()
    now["seed"], now["training"]["batch_size"] = 1, 100
    if purpose == "resume":
        with pytest.raises(ValueError, match=r"\(seed: run 0 vs now 1; training.batch_size: run 200 vs now 100\)"):
            restore.check_compatible(saved, now, purpose=purpose)
    else:
        restore.check_compatible(saved, now, purpose=purpose)
