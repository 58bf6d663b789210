"""Import diffusers' ``UNet2DModel`` checkpoints (the published DDPM family) into diffax's `UNet`.

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

import json
import math
import os
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffax import schedules
from diffax.models.unet import UNet

__all__ = ["DiffusersSchedule", "load_diffusers_unet", "read_unet_config", "unet_from_config", "read_state_dict",
           "convert_state_dict", "read_scheduler_config", "config_overrides", "LoadedUNet"]  # fmt: skip

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"
SCHEDULER_NAME = "scheduler_config.json"

# UNet2DModel's defaults (diffusers 0.42, `UNet2DModel.__init__`): a field missing from config.json
# takes this value, exactly as diffusers' from_config does.
UNET_DEFAULTS: dict[str, Any] = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D", up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1, downsample_padding=1,
    downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu", attention_head_dim=8,
    norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift="default",
    add_attention=True, class_embed_type=None, num_class_embeds=None, num_train_timesteps=None,
)  # fmt: skip
# Fields whose value must be exactly this for the DDPM graph diffax implements.
_REQUIRED_VALUES: dict[str, tuple] = dict(
    center_input_sample=(False,), time_embedding_type=("positional",), mid_block_type=("UNetMidBlock2D",),
    mid_block_scale_factor=(1, 1.0), downsample_padding=(0,), downsample_type=("conv",), upsample_type=("conv",),
    act_fn=("silu", "swish"), resnet_time_scale_shift=("default",), add_attention=(True,), class_embed_type=(None,),
    num_class_embeds=(None,),
)  # fmt: skip
_DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}

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

_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine"}
_PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
                   "fixed_large_log": "fixed_large", "learned": "learned",
                   "learned_range": "learned_range"}  # fmt: skip


# --------------------------------------------------------------------------- files


def model_dir(path: str | os.PathLike) -> str:
    """The directory holding the UNet's config.json: ``path`` itself, or ``path/unet`` of a pipeline directory."""
    path = os.fspath(path)
    for d in (path, os.path.join(path, "unet")):
        if os.path.isfile(os.path.join(d, CONFIG_NAME)):
            return d
    raise FileNotFoundError(f"no diffusers UNet in {path!r}: neither {CONFIG_NAME} nor unet/{CONFIG_NAME} exists "
                            "(download e.g. google/ddpm-cifar10-32 into it)")  # fmt: skip


def _read_json(file: str) -> dict:
    try:
        with open(file) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(value).__name__}")
    return value


def read_unet_config(path: str | os.PathLike) -> dict:
    """config.json of the UNet in ``path``, with diffusers' defaults for missing fields, validated.

    Raises ValueError naming the first field outside the supported family (DDPM's UNet2DModel: ResNet
    down/up blocks with optional attention, 'positional' time embedding, SiLU, no class embedding,
    downsample_padding 0) or a value the diffax UNet cannot represent exactly.
    """
    file = os.path.join(model_dir(path), CONFIG_NAME)
    raw = _read_json(file)
    cls = raw.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"{file}: _class_name must be 'UNet2DModel', got {cls!r}")
    unknown = sorted(k for k in raw if not k.startswith("_") and k not in UNET_DEFAULTS)
    if unknown:
        raise ValueError(f"{file}: unsupported config field(s) {unknown} (supported: {sorted(UNET_DEFAULTS)})")
    cfg = {**UNET_DEFAULTS, **{k: v for k, v in raw.items() if not k.startswith("_")}}
    _validate_unet_config(cfg, file)
    return cfg


def _field_error(file: str, field: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{file}: unsupported {field}={value!r}; allowed: {allowed}")


def _validate_unet_config(cfg: dict, file: str) -> None:
    for field, allowed in _REQUIRED_VALUES.items():
        if cfg[field] not in allowed or isinstance(cfg[field], bool) != isinstance(allowed[0], bool):
            raise _field_error(file, field, cfg[field], " or ".join(repr(a) for a in allowed))
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    for field, types, table in (("down_block_types", down, _DOWN_TYPES), ("up_block_types", up, _UP_TYPES)):
        bad = [b for b in types if b not in table]
        if bad or not types:
            raise _field_error(file, field, types, f"a non-empty list of {sorted(table)}")
    chans = cfg["block_out_channels"]
    if not (isinstance(chans, (list, tuple)) and len(chans) == len(down) and all(_is_int(c, 1) for c in chans)):
        raise _field_error(file, "block_out_channels", chans, f"{len(down)} positive ints (one per down block)")
    if len(up) != len(down) or [_UP_TYPES[b] for b in up] != [_DOWN_TYPES[b] for b in reversed(down)]:
        raise _field_error(file, "up_block_types", up, f"the mirror of down_block_types {down} (attention at the "
                                                       "same resolutions on the way up)")  # fmt: skip
    if any(c % chans[0] for c in chans):
        raise _field_error(file, "block_out_channels", chans, f"multiples of the first width {chans[0]}")
    groups = cfg["norm_num_groups"]
    if not _is_int(groups, 1) or any(c % groups or c < 2 * groups for c in chans):
        raise _field_error(file, "norm_num_groups", groups, f"a divisor g of every width in {list(chans)} with "
                                                            "width >= 2 g (diffax's GroupNorm group rule)")  # fmt: skip
    if cfg["attn_norm_num_groups"] not in (None, groups):
        raise _field_error(file, "attn_norm_num_groups", cfg["attn_norm_num_groups"], f"None or {groups}")
    head_dim = cfg["attention_head_dim"]
    attn_chans = [c for c, b in zip(chans, down) if _DOWN_TYPES[b]] + [chans[-1]]
    if head_dim is not None and (not _is_int(head_dim, 1) or any(c % head_dim for c in attn_chans)):
        raise _field_error(file, "attention_head_dim", head_dim, f"None or a divisor of {attn_chans}")
    if cfg["time_embedding_dim"] not in (None, 4 * chans[0]):
        raise _field_error(file, "time_embedding_dim", cfg["time_embedding_dim"], f"None or {4 * chans[0]}")
    if not _is_int(cfg["layers_per_block"], 1):
        raise _field_error(file, "layers_per_block", cfg["layers_per_block"], "an int >= 1")
    for field in ("in_channels", "out_channels"):
        if not _is_int(cfg[field], 1):
            raise _field_error(file, field, cfg[field], "an int >= 1")
    size = _sample_size(cfg, file)
    if size % 2 ** (len(down) - 1):
        raise _field_error(file, "sample_size", cfg["sample_size"], f"a multiple of 2**{len(down) - 1}")
    for field in ("norm_eps", "freq_shift", "dropout"):
        if isinstance(cfg[field], bool) or not isinstance(cfg[field], (int, float)) or not math.isfinite(cfg[field]):
            raise _field_error(file, field, cfg[field], "a finite number")
    if not isinstance(cfg["flip_sin_to_cos"], bool):
        raise _field_error(file, "flip_sin_to_cos", cfg["flip_sin_to_cos"], "true or false")


def _is_int(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _sample_size(cfg: dict, file: str = CONFIG_NAME) -> int:
    s = cfg["sample_size"]
    if isinstance(s, (list, tuple)) and len(s) == 2 and s[0] == s[1]:
        s = s[0]
    if not _is_int(s, 1):
        raise _field_error(file, "sample_size", cfg["sample_size"], "an int (square images; attention placement "
                                                                    "follows from it)")  # fmt: skip
    return s


def unet_fields(cfg: dict) -> dict[str, Any]:
    """The `UNet` fields equivalent to a validated UNet2DModel config (`read_unet_config`)."""
    chans, down = list(cfg["block_out_channels"]), list(cfg["down_block_types"])
    size = _sample_size(cfg)
    attn = tuple(sorted({size // 2**i for i, b in enumerate(down) if _DOWN_TYPES[b]}, reverse=True))
    head_dim = cfg["attention_head_dim"]
    return dict(ch=chans[0], ch_mult=tuple(c // chans[0] for c in chans), num_res_blocks=cfg["layers_per_block"],
                attn_resolutions=attn, out_ch=cfg["out_channels"], num_heads=1,
                num_head_channels=-1 if head_dim is None else head_dim, num_groups=cfg["norm_num_groups"],
                norm_eps=float(cfg["norm_eps"]), flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]),
                freq_shift=float(cfg["freq_shift"]), resamp_with_conv=True, resblock_updown=False,
                use_scale_shift_norm=False, learn_sigma=False, num_classes=None)  # fmt: skip


def unet_from_config(cfg: dict, *, dropout: float | None = None, dtype=jnp.float32) -> UNet:
    """The diffax `UNet` of a UNet2DModel config (``dropout``: None = the config's, used only when training)."""
    return UNet(**unet_fields(cfg), dropout=float(cfg["dropout"] if dropout is None else dropout), dtype=dtype)


def image_shape(cfg: dict) -> tuple[int, int, int]:
    """(H, W, C) of the images the UNet was trained on (sample_size, in_channels)."""
    s = _sample_size(cfg)
    return (s, s, int(cfg["in_channels"]))


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


# --------------------------------------------------------------------------- scheduler


class DiffusersSchedule(NamedTuple):
    """A diffusers DDPM/DDIM scheduler config in diffax's terms.

    betas (float64, shape (T,)) are those of the forward process; ``schedule_name`` the diffax
    schedule that gives them (None for explicit ``trained_betas``); ``mean_type`` / ``var_type`` /
    ``clip_x0`` / ``spacing`` the sampling settings diffusers' DDPMScheduler uses with them.
    """

    num_timesteps: int
    schedule_name: str | None
    beta_start: float
    beta_end: float
    betas: np.ndarray
    mean_type: str
    var_type: str
    clip_x0: float | None
    spacing: str
    path: str

    def schedule(self) -> schedules.Schedule:
        """`schedules.from_betas(betas)`, diffax's `Schedule` of the checkpoint's forward process."""
        return schedules.from_betas(self.betas)


def scheduler_file(path: str | os.PathLike) -> str | None:
    """scheduler_config.json beside the UNet (pipeline 'scheduler/' folder or flat layout), or None."""
    d = model_dir(path)
    parent = os.path.dirname(os.path.abspath(d))
    for f in (os.path.join(d, "scheduler", SCHEDULER_NAME), os.path.join(d, SCHEDULER_NAME),
              os.path.join(parent, "scheduler", SCHEDULER_NAME)):  # fmt: skip
        if os.path.isfile(f):
            return f
    return None


def _betas(name: str, T: int, start: float, end: float) -> np.ndarray:
    """diffusers' beta schedules, computed as diffax's `schedules` compute them (float64)."""
    if name == "linear":
        return np.linspace(start, end, T, dtype=np.float64)
    if name == "quadratic":  # diffusers 'scaled_linear'
        return np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2
    return np.asarray(schedules.cosine(T).betas, np.float64)  # 'squaredcos_cap_v2' (Nichol & Dhariwal 2021)


def read_scheduler_config(path: str | os.PathLike) -> DiffusersSchedule | None:
    """The scheduler config beside the UNet in ``path`` (None if there is none).

    Supported: beta_schedule 'linear', 'scaled_linear' (diffax 'quadratic'), 'squaredcos_cap_v2' ('cosine')
    or explicit trained_betas; prediction_type epsilon / sample / v_prediction; no thresholding and no
    rescale_betas_zero_snr (ValueError naming the field otherwise).
    """
    file = scheduler_file(path)
    if file is None:
        return None
    c = _read_json(file)
    T = c.get("num_train_timesteps", 1000)
    if not _is_int(T, 1):
        raise _field_error(file, "num_train_timesteps", T, "an int >= 1")
    start, end = c.get("beta_start", 0.0001), c.get("beta_end", 0.02)
    trained = c.get("trained_betas")
    name = c.get("beta_schedule", "linear")
    if trained is not None:
        betas, schedule_name = np.asarray(trained, np.float64), None
        if betas.shape != (T,):
            raise _field_error(file, "trained_betas", f"<{betas.shape[0] if betas.ndim == 1 else betas.shape} values>",
                               f"{T} values (num_train_timesteps)")  # fmt: skip
    elif name in _BETA_SCHEDULES:
        schedule_name = _BETA_SCHEDULES[name]
        betas = _betas(schedule_name, T, float(start), float(end))
    else:
        raise _field_error(file, "beta_schedule", name, f"{sorted(_BETA_SCHEDULES)} or trained_betas")
    for field in ("thresholding", "rescale_betas_zero_snr"):
        if c.get(field, False):
            raise _field_error(file, field, c[field], "false (diffax has no such sampler option)")
    pred = c.get("prediction_type", "epsilon")
    if pred not in _PREDICTION_TYPES:
        raise _field_error(file, "prediction_type", pred, str(sorted(_PREDICTION_TYPES)))
    var = c.get("variance_type", "fixed_small")
    if var not in _VARIANCE_TYPES:
        raise _field_error(file, "variance_type", var, str(sorted(_VARIANCE_TYPES)))
    clip = float(c.get("clip_sample_range", 1.0)) if c.get("clip_sample", True) else None
    return DiffusersSchedule(num_timesteps=T, schedule_name=schedule_name, beta_start=float(start),
                             beta_end=float(end), betas=betas, mean_type=_PREDICTION_TYPES[pred],
                             var_type=_VARIANCE_TYPES[var], clip_x0=clip, spacing=c.get("timestep_spacing", "leading"),
                             path=file)  # fmt: skip


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


def config_overrides(path: str | os.PathLike) -> dict[str, Any]:
    """The diffax config keys (flat 'section.key' names) that the diffusers directory in ``path`` decides.

    model.*: the architecture (name, ch, ch_mult, num_res_blocks, attn_resolutions, heads, groups, no
    class labels); diffusion.*: the schedule (schedule, num_timesteps, beta_start, beta_end) and mean_type,
    when a scheduler config sits beside the UNet. A config with ``model.init_from=path`` must agree on all
    of them (`diffax.training.builders.build_model` refuses a contradiction). Options the config schema
    lacks (norm_eps, flip_sin_to_cos, freq_shift) are read from config.json itself.
    """
    f = unet_fields(read_unet_config(path))
    out: dict[str, Any] = {"model.name": "unet"}
    for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_heads", "num_head_channels", "num_groups",
              "resblock_updown", "use_scale_shift_norm", "num_classes"):  # fmt: skip
        out[f"model.{k}"] = f[k]
    s = read_scheduler_config(path)
    if s is not None:
        if s.schedule_name is None:
            raise ValueError(f"{s.path}: trained_betas cannot be expressed by diffusion.schedule; use "
                             "diffax.interop.load_diffusers_unet directly")  # fmt: skip
        out.update({"diffusion.schedule": s.schedule_name, "diffusion.num_timesteps": s.num_timesteps,
                    "diffusion.mean_type": s.mean_type})  # fmt: skip
        if s.schedule_name != "cosine":
            out.update({"diffusion.beta_start": s.beta_start, "diffusion.beta_end": s.beta_end})
    return out
