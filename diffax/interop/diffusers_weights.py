"""Load diffusers' ``UNet2DModel`` checkpoints into diffax's `UNet`: the weights, renamed and in Flax layout.

The DDPM checkpoints of Ho et al. 2020 (google/ddpm-cifar10-32, ddpm-celebahq-256, ddpm-church-256,
ddpm-bedroom-256, ddpm-cat-256 and their EMA variants) are published in diffusers' layout: a directory
with ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or ``.bin``), and a DDPM scheduler
config beside it (``scheduler/scheduler_config.json`` or ``scheduler_config.json``).

The two networks are the same graph (DDPM's ``diffusion_tf/models/unet.py``), so the mapping is one
to one: diffusers' ddpm-cifar10-32 UNet2DModel and `diffax.models.unet.ddpm_cifar10` both have
35,746,307 parameters. Name and layout conversions:

    conv_in / conv_out / conv_norm_out          -> conv_in / conv_out / norm_out
    time_embedding.linear_1 / linear_2          -> temb_dense0 / temb_dense1
    down_blocks.i.resnets.j                     -> down_{i}_block_{j}
    down_blocks.i.attentions.j                  -> down_{i}_attn_{j}
    down_blocks.i.downsamplers.0.conv           -> down_{i}_downsample/conv
    mid_block.resnets.0 / attentions.0 / resnets.1  -> mid_block_1 / mid_attn_1 / mid_block_2
    up_blocks.k.{resnets,attentions}.j          -> up_{L}_{block,attn}_{j},  L = n_levels - 1 - k
    up_blocks.k.upsamplers.0.conv               -> up_{L}_upsample/conv
    resnet: norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut -> norm1, conv1, temb_proj, norm2,
            conv2, nin_shortcut;  attention: group_norm, to_q, to_k, to_v, to_out.0 -> norm, q, k, v, proj_out
            (older checkpoints' query / key / value / proj_attn are read as to_q / to_k / to_v / to_out.0)
    conv weight (O, I, kh, kw) -> kernel (kh, kw, I, O);  linear weight (O, I) -> kernel (I, O);
    GroupNorm weight -> scale.

Both concatenate the skip AFTER the upsampled features (``cat([h, skip])``); diffusers'
``downsample_padding=0`` pads (0, 1) before its stride-2 conv, which is TF's (and Flax's) 'SAME'.

Loading needs no torch: safetensors files are read with ``safetensors.numpy`` (``.bin`` files need
torch). Every tensor is checked: a missing, unexpected, misshapen or non-finite tensor, an unreadable
(truncated, corrupted) file or a config field outside the supported family raises ``ValueError`` naming
it. (A safetensors file has no checksum: flipped bits inside the data that leave finite values cannot
be detected by any reader.)
"""

from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffax.interop.diffusers_config import (DiffusersSchedule, image_shape, model_dir, read_scheduler_config,
                                             read_unet_config, unet_from_config)
from diffax.models.unet import UNet

__all__ = ["load_diffusers_unet", "read_state_dict", "convert_state_dict", "LoadedUNet"]

SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"

# diffax submodule / leaf names -> diffusers names.
_SUBMODULES = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
               "nin_shortcut": "conv_shortcut", "norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
               "proj_out": "to_out.0", "conv": "conv"}  # fmt: skip
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out",
        "temb_dense0": "time_embedding.linear_1", "temb_dense1": "time_embedding.linear_2",
        "mid_block_1": "mid_block.resnets.0", "mid_attn_1": "mid_block.attentions.0",
        "mid_block_2": "mid_block.resnets.1"}  # fmt: skip
_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


# --------------------------------------------------------------------------- files


def weights_file(path: str | os.PathLike) -> str:
    """The weights file of the UNet in ``path``: the safetensors file, else the torch ``.bin``."""
    d = model_dir(path)
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    if any(n.endswith(".index.json") for n in os.listdir(d)):
        raise ValueError(f"{d}: sharded checkpoints (*.index.json) are not supported; save the UNet as one "
                         f"{SAFETENSORS_NAME}")  # fmt: skip
    raise FileNotFoundError(f"no weights in {d}: expected {SAFETENSORS_NAME} (or {BIN_NAME} with torch installed)")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The UNet's tensors by diffusers name, as float32 NumPy arrays (no torch for safetensors files).

    Raises ValueError for an unreadable (truncated, corrupted) file or a non-floating tensor; ImportError
    with the remedy when the safetensors package, or torch for a ``.bin`` file, is missing.
    """
    file = weights_file(path)
    if file.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ImportError(f"reading {file} needs the 'safetensors' package: pip install safetensors") from None
        try:
            raw = load_file(file)
        except Exception as e:  # noqa: BLE001  (SafetensorError, OSError, ...: a damaged file)
            raise ValueError(f"cannot read {file}: {type(e).__name__}: {e} (truncated or corrupted file?)") from None
    else:
        raw = _read_torch_bin(file)
    out = {}
    for name, value in raw.items():
        a = np.asarray(value)
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{file}: tensor {name!r} has dtype {a.dtype}, expected a floating type")
        out[name] = a.astype(np.float32)
    return out


def _read_torch_bin(file: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{file} is a torch pickle: reading it needs torch (pip install torch), or convert it to "
                          f"{SAFETENSORS_NAME} where torch is installed") from None  # fmt: skip
    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read {file}: {type(e).__name__}: {e} (truncated or corrupted file?)") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{file} holds a {type(sd).__name__}, expected a state dict")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


# --------------------------------------------------------------------------- tensors


def _rename_deprecated(sd: dict[str, np.ndarray], file: str) -> dict[str, np.ndarray]:
    """Older checkpoints' attention names (query, key, value, proj_attn) -> to_q, to_k, to_v, to_out.0."""
    out = {}
    for name, a in sd.items():
        m = re.fullmatch(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)", name)
        new = f"{m.group(1)}.{_DEPRECATED_ATTN[m.group(2)]}.{m.group(3)}" if m else name
        if new in out:
            raise ValueError(f"{file}: tensor {new!r} appears twice (under its old and its new name)")
        out[new] = a
    return out


def torch_name(flax_path: tuple[str, ...], num_levels: int) -> str:
    """The diffusers tensor name of a diffax UNet parameter, e.g. ('up_3_block_0', 'conv1', 'kernel') ->
    'up_blocks.0.resnets.0.conv1.weight' (up levels count from the bottom in diffusers)."""
    top, *mid, leaf = flax_path
    if top in _TOP:
        head = _TOP[top]
    elif m := re.fullmatch(r"(down|up)_(\d+)_(block|attn)_(\d+)", top):
        level = int(m.group(2)) if m.group(1) == "down" else num_levels - 1 - int(m.group(2))
        head = f"{m.group(1)}_blocks.{level}.{'resnets' if m.group(3) == 'block' else 'attentions'}.{m.group(4)}"
    elif m := re.fullmatch(r"down_(\d+)_downsample", top):
        head = f"down_blocks.{m.group(1)}.downsamplers.0"
    elif m := re.fullmatch(r"up_(\d+)_upsample", top):
        head = f"up_blocks.{num_levels - 1 - int(m.group(1))}.upsamplers.0"
    else:
        raise ValueError(f"no diffusers name for the diffax UNet parameter {'/'.join(flax_path)}")
    if any(s not in _SUBMODULES for s in mid) or leaf not in _LEAVES:
        raise ValueError(f"no diffusers name for the diffax UNet parameter {'/'.join(flax_path)}")
    return ".".join([head, *(_SUBMODULES[s] for s in mid), _LEAVES[leaf]])


def _to_flax(a: np.ndarray, leaf: str) -> np.ndarray:
    """torch layout -> Flax: conv OIHW -> HWIO, linear (out, in) -> (in, out); norms and biases as they are."""
    if leaf == "kernel" and a.ndim == 4:
        return np.transpose(a, (2, 3, 1, 0))
    if leaf == "kernel" and a.ndim == 2:
        return a.T
    return a


def _flax_shape_in_torch(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


_ABSTRACT_CACHE: dict[tuple[str, tuple[int, ...]], Any] = {}


def abstract_params(module: UNet, image_hwc: tuple[int, int, int]) -> Any:
    """The shapes of ``module``'s parameters for images of shape ``image_hwc`` (no computation; traced once
    per architecture and cached, since tracing the UNet's init takes seconds)."""
    key = (repr(module), tuple(int(v) for v in image_hwc))
    if key not in _ABSTRACT_CACHE:
        x, t = jnp.zeros((1, *key[1]), jnp.float32), jnp.zeros((1,), jnp.int32)
        _ABSTRACT_CACHE[key] = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, t))["params"]
    return _ABSTRACT_CACHE[key]


def convert_state_dict(sd: dict[str, np.ndarray], module: UNet, image_hwc: tuple[int, int, int], *,
                       source: str = "the state dict") -> dict:  # fmt: skip
    """diffusers tensors -> ``module``'s parameter tree (NumPy float32), checking names, shapes and values.

    Raises ValueError naming every missing tensor, every tensor the UNet does not use, the first tensor
    whose shape differs from the expected (both shapes given), or a tensor with NaN / Inf entries.
    """
    sd = _rename_deprecated(sd, source)
    shapes = abstract_params(module, image_hwc)
    num_levels = len(module.ch_mult)
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    wanted = {}
    for path, leaf in flat:
        names = tuple(p.key for p in path)
        wanted[torch_name(names, num_levels)] = (names, tuple(leaf.shape))
    missing = sorted(set(wanted) - set(sd))
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} tensor(s) the UNet of config.json needs: "
                         f"{_some(missing)}")  # fmt: skip
    extra = sorted(set(sd) - set(wanted))
    if extra:
        raise ValueError(f"{source} has {len(extra)} tensor(s) the UNet of config.json does not have: {_some(extra)}")
    params: dict = {}
    for name, (names, shape) in wanted.items():
        a = sd[name]
        expected = _flax_shape_in_torch(shape, names[-1])
        if tuple(a.shape) != expected:
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(a.shape)}, config.json's UNet needs "
                             f"{expected}")  # fmt: skip
        bad = int(np.sum(~np.isfinite(a)))
        if bad:
            raise ValueError(f"{source}: tensor {name!r} has {bad} non-finite value(s) (corrupted weights?)")
        node = params
        for k in names[:-1]:
            node = node.setdefault(k, {})
        node[names[-1]] = np.ascontiguousarray(_to_flax(a, names[-1]), dtype=np.float32)
    return params


def _some(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


# --------------------------------------------------------------------------- entry points


class LoadedUNet(NamedTuple):
    """`load_diffusers_unet`'s result: unpack as ``module, params, schedule = load_diffusers_unet(path)``."""

    module: UNet
    params: dict
    schedule: DiffusersSchedule | None


def load_diffusers_unet(path: str | os.PathLike, *, dropout: float | None = None) -> LoadedUNet:
    """(UNet module, params, schedule settings) of a local diffusers UNet2DModel directory. No torch needed.

    ``path``: a directory with config.json and diffusion_pytorch_model.safetensors (or .bin, read only
    when torch is installed), or a pipeline directory with them in ``unet/``. The schedule settings
    (`DiffusersSchedule`) come from the scheduler config beside it (None when there is none).
    ``module.apply({'params': params}, x, t)`` takes NHWC images in [-1, 1] and integer t in [0, T-1]
    and returns diffusers' ``unet(x, t).sample`` in NHWC. Raises ValueError naming the unsupported
    config field, or the missing / unexpected / misshapen / non-finite tensor, or the unreadable file.
    """
    cfg = read_unet_config(path)
    module = unet_from_config(cfg, dropout=dropout)
    file = weights_file(path)
    params = convert_state_dict(read_state_dict(path), module, image_shape(cfg), source=file)
    return LoadedUNet(module, params, read_scheduler_config(path))
