"""Full-size `diffax.interop` checks against diffusers itself (run only where torch and diffusers import).

Random-initialised UNet2DModels (every bias / norm parameter perturbed, experiments/make_diffusers_fixtures.py)
in the google/ddpm-cifar10-32 configuration (35,746,307 parameters) and a 64x64 model of the 256 family's
blocks (ddpm-celebahq/church/bedroom/cat-256: 6 levels, attention at 1/16 of the size, fewer channels) are
``save_pretrained`` to a temporary directory and loaded by diffax (safetensors, no torch involved), then:

- unet(x, t) at t = 0, 1, 500, 999 agrees with diffusers to <= 1e-4 relative (max |a - b| / max |b|),
- 10-step DDIM (eta = 0), without and with clipping (use_clipped_model_output), agrees with a
  DDIMScheduler loop to <= 1e-3,
- 10-step DDPM ('fixed_large', clipped x0) with diffax's per-step noise given to DDPMScheduler agrees to
  <= 1e-3.
The measured errors are printed (``pytest -s``). Each model is compiled once per sampler (minutes on 2 CPU
cores): marked slow.

Install the optional extra first: ``pip install -e ".[torch]"`` (on x86-64, ``pip install torch==2.13.0``
before it takes a CPU wheel where one is on disk; PyPI's plain ``torch`` is the ~6 GB CUDA build).
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from diffax import samplers, schedules  # noqa: E402
from diffax.interop import load_diffusers_unet  # noqa: E402
from test_interop import ddim_10_program  # noqa: E402

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fixtures_module():
    spec = importlib.util.spec_from_file_location("make_diffusers_fixtures",
                                                  os.path.join(REPO, "experiments", "make_diffusers_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mk = _fixtures_module()


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", list(mk.FULL_CONFIGS))
def test_full_size_model_and_samplers_equal_diffusers(tmp_path, name):
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = mk.build_model(mk.FULL_CONFIGS[name], seed=0)
    n_torch = sum(p.numel() for p in model.parameters())
    if name == "ddpm_cifar10_32":
        assert n_torch == 35_746_307
    mk.save_model(model, mk.DDPM_SCHEDULER, str(tmp_path / name))
    g = mk.reference_outputs(model, dict(mk.DDPM_SCHEDULER), seed=0)
    del model

    module, params, sched = load_diffusers_unet(str(tmp_path / name))
    assert sum(a.size for a in jax.tree.leaves(params)) == n_torch
    apply = jax.jit(lambda p, x, t: module.apply({"params": p}, x, t))
    eps = np.asarray(apply(params, jnp.asarray(g["x"]), jnp.asarray(g["t"])))
    errs = {int(t): rel_err(eps[i], g["eps"][i]) for i, t in enumerate(g["t"])}

    ddim = ddim_10_program(module, params, sched)
    s = sched.schedule()
    model_fn = lambda x, t: module.apply({"params": params}, x, t)  # noqa: E731

    x_T = jnp.asarray(g["ddim_x_T"])
    err_ddim = rel_err(ddim(x_T, False), g["ddim_noclip"])
    err_ddim_clip = rel_err(ddim(x_T, True), g["ddim_clip"])

    ts = schedules.space_timesteps(1000, 10, "leading")
    key = jax.random.PRNGKey(int(g["ddpm_seed"]))
    x_T = jnp.asarray(g["ddpm_x_T"])
    ddpm = jax.jit(lambda: samplers.ddpm(model_fn, s, key, x_T.shape, x_init=x_T, var_type=sched.var_type,
                                         clip_x0=sched.clip_x0, timesteps=ts))()  # fmt: skip
    err_ddpm = rel_err(ddpm, g["ddpm"])
    print(f"\n{name}: {n_torch} parameters; unet max rel err by t {errs}; DDIM-10 {err_ddim:.3g} (no clip), "
          f"{err_ddim_clip:.3g} (clip); DDPM-10 {err_ddpm:.3g}")
    assert max(errs.values()) <= 1e-4, errs
    assert err_ddim <= 1e-3 and err_ddim_clip <= 1e-3, (err_ddim, err_ddim_clip)
    assert err_ddpm <= 1e-3, err_ddpm


def test_bin_checkpoint_loads_like_safetensors(tmp_path):
    """A torch ``.bin`` (save_pretrained(safe_serialization=False)) of a fixture loads, with torch installed, to
    exactly the parameters of its safetensors file."""
    from diffusers import UNet2DModel

    src = os.path.join(REPO, "tests", "fixtures", "diffusers", "ddpm_cifar10_tiny")
    UNet2DModel.from_pretrained(src).save_pretrained(str(tmp_path), safe_serialization=False)
    assert os.path.exists(tmp_path / "diffusion_pytorch_model.bin")
    _, from_bin, _ = load_diffusers_unet(str(tmp_path))
    _, from_st, _ = load_diffusers_unet(src)
    assert jax.tree.all(jax.tree.map(np.array_equal, from_bin, from_st))
