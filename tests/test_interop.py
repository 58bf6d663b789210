"""`diffax.interop`: diffusers UNet2DModel checkpoints loaded into diffax, checked against diffusers' own outputs
stored in tests/fixtures/diffusers/ (made by experiments/make_diffusers_fixtures.py; no torch needed here).

Fixtures: tiny random UNet2DModels of the two published DDPM families (ddpm-cifar10-32's blocks; the 256
family's 6 levels with attention at 1/16 of the size) and one with diffusers' own defaults for the
options (flip_sin_to_cos, freq_shift 0, norm_eps 1e-5, 2-4 attention heads). Every bias and norm
parameter is random, so a swapped or dropped tensor changes the output.

Tolerances: float32 on both sides, different conv/matmul kernels: measured max relative errors are
~1e-6 for the network and <= 6e-5 for the samplers; the bars are the issue's (1e-4 network, 1e-3 samplers).
Negative controls (a wrong option, timestep, spacing or variance) must exceed them by far.
The full-size comparisons (35.7M-parameter CIFAR-10 model) are tests/test_interop_torch.py (torch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import samplers, schedules
from diffax.interop import config_overrides, load_diffusers_unet, read_scheduler_config
from diffax.interop.diffusers_config import UNET_DEFAULTS, unet_from_config, validate_unet_config
from diffax.interop.diffusers_weights import BIN_NAME, SAFETENSORS_NAME, abstract_params, torch_name, weights_file
from diffax.models.unet import ddpm_cifar10

safetensors_numpy = pytest.importorskip("safetensors.numpy")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "diffusers")
NAMES = ("ddpm_cifar10_tiny", "ddpm_256_family_tiny", "options_tiny")


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (per call; b the diffusers reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def loaded():
    """name -> (module, params, schedule settings, golden arrays, jitted apply(x, t)), loaded once."""
    out = {}
    for name in NAMES:
        module, params, sched = load_diffusers_unet(os.path.join(FIXTURES, name))
        apply = jax.jit(lambda x, t, module=module, params=params: module.apply({"params": params}, x, t))
        out[name] = (module, params, sched, dict(np.load(os.path.join(FIXTURES, f"{name}.npz"))), apply)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_outputs_equal_diffusers_at_each_t(loaded, name):
    """unet(x, t) at t = 0, 1, 500, 999 (one batch, one t per row) within 1e-4 of diffusers; the parameter
    count equals the file's (one to one). Negative control: t + 1 misses by > 1e-4 at t = 500 and 999."""
    module, params, _, g, apply = loaded[name]
    x, t = jnp.asarray(g["x"]), jnp.asarray(g["t"])
    out = np.asarray(apply(x, t))
    errs = [rel_err(out[i], g["eps"][i]) for i in range(len(g["t"]))]
    assert max(errs) <= 1e-4, dict(zip(g["t"].tolist(), errs))
    off_by_one = np.asarray(apply(x, t + 1))
    assert min(rel_err(off_by_one[i], g["eps"][i]) for i in (2, 3)) > 1e-4
    n_file = sum(a.size for a in safetensors_numpy.load_file(weights_file(os.path.join(FIXTURES, name))).values())
    assert sum(a.size for a in jax.tree.leaves(params)) == n_file


def test_options_are_read_from_config_json(loaded):
    """options_tiny sets diffusers' defaults, not DDPM's: they reach the UNet (a wrong one would show in the
    output test above)."""
    module = loaded["options_tiny"][0]
    options = (module.flip_sin_to_cos, module.freq_shift, module.norm_eps, module.num_head_channels)
    assert options == (True, 0.0, 1e-5, 4)
    assert (module.ch, module.ch_mult, module.num_res_blocks, module.attn_resolutions) == (8, (1, 2), 1, (16,))
    cifar = loaded["ddpm_cifar10_tiny"][0]
    assert (cifar.flip_sin_to_cos, cifar.freq_shift, cifar.norm_eps, cifar.num_head_channels) == (False, 1.0, 1e-6, -1)
    assert (cifar.ch_mult, cifar.attn_resolutions, cifar.num_groups) == ((1, 2, 2, 2), (16,), 2)


def test_ddpm_cifar10_config_maps_to_diffax_ddpm_cifar10():
    """The published ddpm-cifar10-32 config.json gives exactly `ddpm_cifar10`'s architecture: 35,746,307
    parameters, every one with a distinct diffusers name (the mapping is one to one)."""
    cfg = {**UNET_DEFAULTS, **json.load(open(os.path.join(FIXTURES, "ddpm_cifar10_tiny", "config.json"))),
           "block_out_channels": [128, 256, 256, 256], "norm_num_groups": 32, "layers_per_block": 2}  # fmt: skip
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    validate_unet_config(cfg, "config.json")
    module = unet_from_config(cfg, dropout=0.1)
    ref = ddpm_cifar10()
    for f in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_heads", "num_head_channels", "num_groups",
              "norm_eps", "flip_sin_to_cos", "freq_shift", "resamp_with_conv", "resblock_updown",
              "use_scale_shift_norm"):
        assert getattr(module, f) == getattr(ref, f), f
    shapes = abstract_params(module, (32, 32, 3))
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    assert sum(int(np.prod(leaf.shape)) for _, leaf in leaves) == 35_746_307
    names = {torch_name(tuple(p.key for p in path), 4) for path, _ in leaves}
    assert len(names) == len(leaves)


@pytest.fixture(scope="module")
def ddim_cifar(loaded):
    """``run(x_T, clip) -> x_0``: diffax's 10-step DDIM (eta = 0, 'leading') on ddpm_cifar10_tiny, compiled
    once for every x_T and both clip settings (the clipping is switched by a traced flag)."""
    module, params, sched, _, _ = loaded["ddpm_cifar10_tiny"]
    return ddim_10_program(module, params, sched)


def ddim_10_program(module, params, sched):
    """``run(x_T, clip) -> x_0``: 10-step DDIM (eta = 0, 'leading', DDIM's Table 1 setting) of the loaded
    model, one compiled program for both clip settings (the clipping is switched by a traced flag)."""
    s = sched.schedule()
    model_fn = lambda x, t: module.apply({"params": params}, x, t)  # noqa: E731

    @jax.jit
    def run(x_T, flag):
        clip = lambda x0: jnp.where(flag, jnp.clip(x0, -1.0, 1.0), x0)  # noqa: E731
        return samplers.ddim(model_fn, s, jax.random.PRNGKey(0), x_T.shape, num_steps=10, spacing="leading",
                             eta=0.0, x_init=x_T, clip_x0=clip)  # fmt: skip

    return run


def test_ddim_10_steps_equal_diffusers(loaded, ddim_cifar):
    """10-step DDIM (eta = 0, 'leading': t = 900, ..., 0) from the stored x_T within 1e-3 of DDIMScheduler:
    without clipping, and with clip_x0 = 1 (diffusers' use_clipped_model_output=True: the eps implied by
    the clipped x0, as diffax's DDIM). Negative control: the unclipped sample misses the clipped reference
    by > 1e-2. (The 256 family's samplers: tests/test_interop_torch.py; one fixture keeps CI cheap.)"""
    g = loaded["ddpm_cifar10_tiny"][3]
    np.testing.assert_array_equal(schedules.space_timesteps(1000, 10, "leading")[::-1], g["ddim_noclip_timesteps"])
    x_T = jnp.asarray(g["ddim_x_T"])
    noclip, clip = ddim_cifar(x_T, False), ddim_cifar(x_T, True)
    assert rel_err(noclip, g["ddim_noclip"]) <= 1e-3
    assert rel_err(clip, g["ddim_clip"]) <= 1e-3
    assert rel_err(noclip, g["ddim_clip"]) > 1e-2


@pytest.mark.slow
def test_ddpm_10_steps_equal_diffusers(loaded):
    """10-step ancestral DDPM (respaced to t = 900, ..., 0; sigma^2 = the respaced beta, 'fixed_large';
    x0 clipped to [-1, 1]: the scheduler config's settings) with the per-step noise diffusers used (diffax's
    own: the fixture drew it from PRNGKey(ddpm_seed) as `samplers.ddpm` does) within 1e-3 of DDPMScheduler.
    Negative control: another key's noise misses by > 1e-2 (the noise really is shared)."""
    module, params, sched, g, _ = loaded["ddpm_cifar10_tiny"]
    assert (sched.var_type, sched.clip_x0, sched.mean_type) == ("fixed_large", 1.0, "eps")
    s, x_T = sched.schedule(), jnp.asarray(g["ddpm_x_T"])
    key = jax.random.PRNGKey(int(g["ddpm_seed"]))
    step_keys = jax.random.split(jax.random.split(key)[1], 10)  # samplers.ddpm's step keys
    np.testing.assert_array_equal(np.stack([jax.random.normal(k, x_T.shape) for k in step_keys]), g["ddpm_noise"])
    ts = schedules.space_timesteps(1000, 10, "leading")
    np.testing.assert_array_equal(ts[::-1], g["ddpm_timesteps"])
    model_fn = lambda x, t: module.apply({"params": params}, x, t)  # noqa: E731
    run = jax.jit(lambda k: samplers.ddpm(model_fn, s, k, x_T.shape, x_init=x_T, var_type=sched.var_type,
                                          clip_x0=sched.clip_x0, timesteps=ts))  # fmt: skip
    assert rel_err(run(key), g["ddpm"]) <= 1e-3
    assert rel_err(run(jax.random.PRNGKey(int(g["ddpm_seed"]) + 1)), g["ddpm"]) > 1e-2


def test_scheduler_config_gives_ddpm_linear_schedule():
    """scheduler/scheduler_config.json (linear 1e-4..0.02, T = 1000) -> diffax's linear(1000) betas exactly."""
    sched = read_scheduler_config(os.path.join(FIXTURES, "ddpm_cifar10_tiny"))
    np.testing.assert_array_equal(sched.betas, np.linspace(1e-4, 0.02, 1000))
    assert (sched.num_timesteps, sched.schedule_name, sched.spacing) == (1000, "linear", "leading")


# --------------------------------------------------------------------------- damaged / mismatched checkpoints


def _copy(tmp_path, name="ddpm_cifar10_tiny") -> str:
    d = str(tmp_path / name)
    shutil.copytree(os.path.join(FIXTURES, name), d)
    return d


def _rewrite(d: str, edit) -> None:
    file = os.path.join(d, SAFETENSORS_NAME)
    sd = safetensors_numpy.load_file(file)
    edit(sd)
    safetensors_numpy.save_file(sd, file)


def _edit_config(d: str, **fields) -> None:
    file = os.path.join(d, "config.json")
    cfg = json.load(open(file))
    cfg.update(fields)
    json.dump(cfg, open(file, "w"))


CONV1 = "down_blocks.1.resnets.0.conv1.weight"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: _rewrite(d, lambda sd: sd.pop(CONV1)), f"lacks 1 tensor(s) the UNet of config.json needs: {CONV1}"),
        (lambda d: _rewrite(d, lambda sd: sd.update({CONV1: sd[CONV1][:, :, :2]})),
         f"tensor '{CONV1}' has shape (8, 4, 2, 3), config.json's UNet needs (8, 4, 3, 3)"),
        (lambda d: _rewrite(d, lambda sd: sd.update({"class_embedding.weight": np.zeros((10, 16), np.float32)})),
         "does not have: class_embedding.weight"),
        (lambda d: _rewrite(d, lambda sd: sd[CONV1].__setitem__((0, 0, 0, 0), np.nan)),
         f"tensor '{CONV1}' has 1 non-finite value(s)"),
        (lambda d: open(os.path.join(d, SAFETENSORS_NAME), "r+b").truncate(50_000), "truncated or corrupted"),
        (lambda d: open(os.path.join(d, SAFETENSORS_NAME), "r+b").write(b"\xff" * 16), "truncated or corrupted"),
        (lambda d: _edit_config(d, resnet_time_scale_shift="scale_shift"),
         "unsupported resnet_time_scale_shift='scale_shift'"),
        (lambda d: _edit_config(d, downsample_padding=1), "unsupported downsample_padding=1"),
        (lambda d: _edit_config(d, new_field=3), "unsupported config field(s) ['new_field']"),
        (lambda d: _edit_config(d, block_out_channels=[4, 8, 8, 16]), "lacks 2 tensor(s)"),
        (lambda d: _edit_config(d, up_block_types=["UpBlock2D"] * 4), "unsupported up_block_types"),
        (lambda d: _edit_config(d, norm_num_groups=8), "unsupported norm_num_groups=8"),
        (lambda d: os.remove(os.path.join(d, SAFETENSORS_NAME)), "no weights in"),
    ],
    ids=["missing", "shape", "unexpected", "nan", "truncated", "corrupt_header", "scale_shift", "padding",
         "unknown_field", "widths", "up_types", "groups", "no_weights"],
)  # fmt: skip
def test_damaged_or_mismatched_checkpoint_is_refused(tmp_path, damage, message):
    d = _copy(tmp_path)
    damage(d)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        load_diffusers_unet(d)
    assert message in str(e.value), str(e.value)


def test_old_attention_names_and_pipeline_layout(tmp_path, loaded):
    """Older checkpoints' attention names (query/key/value/proj_attn) load to the same params; a pipeline
    directory (model_index.json, unet/, scheduler/) is found from its root."""
    root = tmp_path / "pipe"
    d = str(root / "unet")
    shutil.copytree(os.path.join(FIXTURES, "ddpm_cifar10_tiny"), d)
    shutil.move(os.path.join(d, "scheduler"), str(root / "scheduler"))
    index = {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}
    (root / "model_index.json").write_text(json.dumps(index))
    new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

    def rename(sd):
        for k in [k for k in sd if ".attentions." in k]:
            for new, old in new_to_old.items():
                if f".{new}." in k:
                    sd[k.replace(f".{new}.", f".{old}.")] = sd.pop(k)

    _rewrite(d, rename)
    _, params, sched = load_diffusers_unet(str(root))
    ref = loaded["ddpm_cifar10_tiny"][1]
    assert jax.tree.all(jax.tree.map(np.array_equal, params, ref))
    assert sched is not None and sched.num_timesteps == 1000


def test_bin_needs_torch(tmp_path, monkeypatch):
    """A .bin checkpoint without torch installed: ImportError naming torch and the safetensors alternative."""
    d = _copy(tmp_path)
    os.remove(os.path.join(d, SAFETENSORS_NAME))
    open(os.path.join(d, BIN_NAME), "wb").write(b"not a pickle")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs torch"):
        load_diffusers_unet(d)


# --------------------------------------------------------------------------- the run layer


def _fixture_config(name="ddpm_cifar10_tiny"):
    from diffax.training import presets

    config = presets.load_config(os.path.join(REPO, "configs", "cifar10.py"))
    config.model.init_from = os.path.join(FIXTURES, name)
    return config


def test_config_contradicting_the_checkpoint_is_refused():
    """configs/cifar10.py (ch 128, 32 groups) with the tiny fixture: one line naming every contradiction and
    the flags that fix it; a learned variance and a different schedule are refused too."""
    from diffax.training import builders

    config = _fixture_config()
    with pytest.raises(ValueError) as e:
        builders.build(config)
    msg = str(e.value)
    assert "\n" not in msg and "model.ch=128 (checkpoint: 4)" in msg and "--config.model.ch=4" in msg
    assert "--config.model.num_groups=2" in msg
    for k, v in config_overrides(config.model.init_from).items():
        section, key = k.split(".")
        config[section][key] = v
    builders.build(config)  # agrees now
    config.diffusion.num_timesteps = 2000
    config.diffusion.var_type = "learned_range"
    with pytest.raises(ValueError, match=r"diffusion.num_timesteps=2000 \(checkpoint: 1000\).*learned_range"):
        builders.build(config)


def test_init_from_starts_training_from_imported_weights(loaded):
    """--mode=train's step-0 state: params and EMA equal the imported weights (no random init)."""
    from diffax.device_mesh import make_mesh
    from diffax.training import builders, restore

    config = _fixture_config()
    for k, v in config_overrides(config.model.init_from).items():
        section, key = k.split(".")
        config[section][key] = v
    exp = builders.build(config)
    state = restore.initial_state(exp, make_mesh())
    ref = loaded["ddpm_cifar10_tiny"][1]
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), state.params, ref))
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), state.ema_params, ref))


@pytest.mark.slow
def test_cli_samples_with_init_from_and_no_checkpoint(tmp_path, ddim_cifar):
    """python -m diffax.main --config=configs/cifar10.py --config.model.init_from=<fixture> --mode=sample in an
    empty workdir (10-step DDIM, clip_x0 = 1, 2 samples): samples.npy equals diffax's DDIM on the loaded
    parameters from the same x_T (sample i's x_T: normal(split(fold_in(stream_key(seed, 'sample'), i))[0]),
    `sampler_builders.per_example_sampler` and `samplers.ddim`), to float32 rounding: 1e-4 (two differently compiled
    programs, batch 1 vs 2; measured 1.4e-5 after 10 steps; a wrong x_T or weight would be off by O(1))."""
    from diffax.training import model_builders, restore

    d = os.path.join(FIXTURES, "ddpm_cifar10_tiny")
    overrides = {**config_overrides(d), "sampling.num_samples": 2, "sampling.method": "ddim", "sampling.num_steps": 10}
    flags = [f"--config.{k}={model_builders.flag_value(v)}" for k, v in overrides.items() if v is not None]
    workdir = tmp_path / "wd"
    cmd = [sys.executable, "-m", "diffax.main", "--config=configs/cifar10.py", f"--workdir={workdir}",
           "--mode=sample", f"--config.model.init_from={d}", *flags]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    x = np.load(workdir / "samples.npy")
    assert x.shape == (2, 32, 32, 3) and not os.path.exists(workdir / "checkpoints" / "1")
    key = restore.stream_key(0, "sample")
    x_T = jnp.concatenate([jax.random.normal(jax.random.split(jax.random.fold_in(key, i))[0], (1, 32, 32, 3))
                           for i in range(2)])  # fmt: skip
    np.testing.assert_allclose(x, np.asarray(ddim_cifar(x_T, True)), rtol=0, atol=1e-4)
    assert float(np.std(x)) > 0.1  # not a constant picture


def test_pretrained_variant_agrees_with_ddpm_cifar10_32(tmp_path):
    """configs/cifar10.py:pretrained against google/ddpm-cifar10-32's config.json and scheduler config (as
    published; no weights needed for the check): no contradiction, and the model built is `ddpm_cifar10`'s."""
    from diffax.training import model_builders, presets

    unet = {"_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
            "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3,
            "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
            "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
            "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}  # fmt: skip
    sched = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
             "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_large"}
    (tmp_path / "config.json").write_text(json.dumps(unet))
    (tmp_path / "scheduler_config.json").write_text(json.dumps(sched))
    config = presets.load_config(os.path.join(REPO, "configs", "cifar10.py:pretrained"))
    assert config.model.init_from == "weights/ddpm-cifar10-32"
    config.model.init_from = str(tmp_path)
    model = model_builders.build_model(config, (32, 32, 3))
    ref = ddpm_cifar10()
    assert all(getattr(model, f) == getattr(ref, f) for f in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                                                                "dropout", "num_groups", "norm_eps", "freq_shift"))
