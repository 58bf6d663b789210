r"""Golden fixtures for `diffax.interop` (tests/test_interop.py): tiny random diffusers UNet2DModels and
what diffusers computes with them, so that CI checks the import without torch.

    python experiments/make_diffusers_fixtures.py            # writes tests/fixtures/diffusers/ (needs torch,
                                                             # diffusers, safetensors, jax)

For each fixture NAME (a tiny model of a published family, random weights, every bias and norm
parameter perturbed so that a swapped or dropped tensor changes the output):

    NAME/config.json, NAME/diffusion_pytorch_model.safetensors     UNet2DModel.save_pretrained
    NAME/scheduler/scheduler_config.json                            DDPMScheduler.save_pretrained
    NAME.npz   x (4, H, W, C), t = (0, 1, 500, 999), eps = unet(x, t).sample          (NHWC)
               ddim_x_T (2, H, W, C); ddim_noclip: 10 DDIMScheduler(eta=0) steps, clip_sample off;
               ddim_clip: clip_sample on with use_clipped_model_output=True (diffax's DDIM eps is
               the one implied by the clipped x0)
               ddpm_x_T (1, H, W, C), ddpm_seed, ddpm_noise (10, 1, H, W, C), ddpm: 10 DDPMScheduler steps whose
               noise is diffax's (`samplers.ddpm` with key PRNGKey(ddpm_seed): step k draws
               normal(split(split(key)[1], 10)[k])); the noise of the t = 0 step is unused.

The same functions (`build_model`, `reference_outputs`) serve tests/test_interop_torch.py for the
full-size configurations. Sizes: about 0.2 MB per fixture.
"""

from __future__ import annotations

import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_DIR = os.path.join(REPO, "tests", "fixtures", "diffusers")
TIMESTEPS = (0, 1, 500, 999)
NUM_STEPS = 10
DDPM_SEED = 7

# diffusers' DDPM scheduler config of the published checkpoints (google/ddpm-cifar10-32 and the 256 family).
DDPM_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                      variance_type="fixed_large", clip_sample=True)  # fmt: skip
_DDPM_COMMON = dict(layers_per_block=2, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None,
                    downsample_padding=0, act_fn="silu", center_input_sample=False, time_embedding_type="positional",
                    mid_block_scale_factor=1)  # fmt: skip
CIFAR_BLOCKS = dict(down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))  # fmt: skip
FAMILY_256_BLOCKS = dict(
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
)

# Full size: google/ddpm-cifar10-32 (35,746,307 parameters) and a 64x64 model of the 256 family's blocks.
FULL_CONFIGS = {
    "ddpm_cifar10_32": dict(sample_size=32, block_out_channels=(128, 256, 256, 256), norm_num_groups=32,
                            **CIFAR_BLOCKS, **_DDPM_COMMON),
    "ddpm_256_family_64": dict(sample_size=64, block_out_channels=(32, 32, 64, 64, 128, 128), norm_num_groups=16,
                               **FAMILY_256_BLOCKS, **_DDPM_COMMON),
}  # fmt: skip
# Tiny fixtures (CI): the same block types with a few channels and one res block per level (two skips per
# level on the way up; the compile time of the CI tests grows with the depth); 'options' sets diffusers' own
# defaults (flip_sin_to_cos, freq_shift 0, norm_eps 1e-5, 2-4 attention heads) to test the options.
TINY_CONFIGS = {
    "ddpm_cifar10_tiny": dict(sample_size=32, block_out_channels=(4, 8, 8, 8), norm_num_groups=2, **CIFAR_BLOCKS,
                              **{**_DDPM_COMMON, "layers_per_block": 1}),
    "ddpm_256_family_tiny": dict(sample_size=32, block_out_channels=(4, 4, 8, 8, 8, 8), norm_num_groups=2,
                                 **FAMILY_256_BLOCKS, **{**_DDPM_COMMON, "layers_per_block": 1}),
    "options_tiny": dict(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1,
                         down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "AttnUpBlock2D"), flip_sin_to_cos=True, freq_shift=0,
                         norm_eps=1e-5, attention_head_dim=4, downsample_padding=0),
}  # fmt: skip


def build_model(kwargs: dict, seed: int = 0):
    """A random UNet2DModel with every 1-D parameter (biases, norm scales) perturbed by N(0, 0.1^2)."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    model = UNet2DModel(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _nchw(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(x) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x.detach().numpy(), (0, 2, 3, 1)))


def diffax_ddpm_noise(seed: int, num_steps: int, shape: tuple[int, ...]) -> np.ndarray:
    """The per-step noise `diffax.samplers.ddpm` draws with key PRNGKey(seed): (num_steps, *shape), in the
    order the steps run (largest t first)."""
    import jax

    _, key_steps = jax.random.split(jax.random.PRNGKey(seed))
    keys = jax.random.split(key_steps, num_steps)
    return np.stack([np.asarray(jax.random.normal(k, shape, dtype=np.float32)) for k in keys])


def reference_outputs(model, scheduler_config: dict, seed: int = 1) -> dict[str, np.ndarray]:
    """diffusers' outputs on fixed inputs (NHWC NumPy): eps at TIMESTEPS, the 10-step DDIM (eta = 0) loops
    without and with clipping, and the 10-step DDPM loop with diffax's per-step noise."""
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.schedulers import scheduling_ddpm

    size, c = model.config.sample_size, model.config.in_channels
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    x = rng.standard_normal((len(TIMESTEPS), size, size, c)).astype(np.float32)
    with torch.no_grad():
        eps = model(_nchw(x), torch.tensor(TIMESTEPS, dtype=torch.long)).sample
    out.update(x=x, t=np.asarray(TIMESTEPS, np.int32), eps=_nhwc(eps))

    def unet(x_t, t):
        with torch.no_grad():
            return model(x_t, t).sample

    x_T = rng.standard_normal((2, size, size, c)).astype(np.float32)
    out["ddim_x_T"] = x_T
    for name, clip in (("ddim_noclip", False), ("ddim_clip", True)):
        sched = DDIMScheduler.from_config({**scheduler_config, "clip_sample": clip})
        sched.set_timesteps(NUM_STEPS)
        xt = _nchw(x_T)
        for t in sched.timesteps:
            xt = sched.step(unet(xt, t), t, xt, eta=0.0, use_clipped_model_output=clip).prev_sample
        out[name] = _nhwc(xt)
        out[name + "_timesteps"] = sched.timesteps.numpy().astype(np.int32)

    x_T = rng.standard_normal((1, size, size, c)).astype(np.float32)
    noise = diffax_ddpm_noise(DDPM_SEED, NUM_STEPS, x_T.shape)
    queue = [_nchw(z) for z in noise]
    used = []

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        z = queue[len(used)]
        assert tuple(shape) == tuple(z.shape), (shape, z.shape)
        used.append(z)
        return z.to(dtype)

    sched = DDPMScheduler.from_config(scheduler_config)
    sched.set_timesteps(NUM_STEPS)
    original = scheduling_ddpm.randn_tensor
    scheduling_ddpm.randn_tensor = fake_randn
    try:
        xt = _nchw(x_T)
        for t in sched.timesteps:
            xt = sched.step(unet(xt, t), t, xt).prev_sample
    finally:
        scheduling_ddpm.randn_tensor = original
    assert len(used) == NUM_STEPS - 1, f"DDPMScheduler drew noise {len(used)} times, expected {NUM_STEPS - 1}"
    out.update(ddpm_x_T=x_T, ddpm_seed=np.asarray(DDPM_SEED), ddpm_noise=noise, ddpm=_nhwc(xt),
               ddpm_timesteps=sched.timesteps.numpy().astype(np.int32))  # fmt: skip
    return out


def save_model(model, scheduler_config: dict, directory: str) -> None:
    """save_pretrained of the UNet (safetensors) and of its DDPMScheduler into directory/scheduler."""
    from diffusers import DDPMScheduler

    model.save_pretrained(directory, safe_serialization=True)
    DDPMScheduler(**scheduler_config).save_pretrained(os.path.join(directory, "scheduler"))


def main(out_dir: str = FIXTURE_DIR) -> None:
    os.makedirs(out_dir, exist_ok=True)
    total = 0
    for i, (name, kwargs) in enumerate(TINY_CONFIGS.items()):
        model = build_model(kwargs, seed=i)
        directory = os.path.join(out_dir, name)
        save_model(model, DDPM_SCHEDULER, directory)
        np.savez_compressed(os.path.join(out_dir, f"{name}.npz"), **reference_outputs(model, DDPM_SCHEDULER, seed=i))
        n = sum(p.numel() for p in model.parameters())
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(directory) for f in fs)
        size += os.path.getsize(os.path.join(out_dir, f"{name}.npz"))
        total += size
        print(f"{name}: {n} parameters, {size / 1e6:.3f} MB")
    print(f"total {total / 1e6:.3f} MB in {out_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:])
