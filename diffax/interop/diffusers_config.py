"""diffusers' config files in diffax's terms: UNet2DModel config.json -> `UNet`, scheduler -> `DiffusersSchedule`.

A diffusers UNet directory holds ``config.json`` (the UNet2DModel's architecture) and, beside it, a DDPM
scheduler config (``scheduler/scheduler_config.json`` or ``scheduler_config.json``). `read_unet_config`
fills in diffusers' defaults and validates the fields against the family diffax's `UNet` represents
exactly (DDPM's graph); `unet_fields` / `unet_from_config` give the equivalent `UNet`;
`read_scheduler_config` gives the forward process and sampling settings (`DiffusersSchedule`);
`config_overrides` the diffax config keys a directory decides. A field outside the supported family
raises ``ValueError`` naming it and what is allowed. The weights: `diffax.interop.diffusers_weights`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from diffax import schedules
from diffax.models.unet import UNet

__all__ = ["DiffusersSchedule", "read_unet_config", "validate_unet_config", "unet_fields", "unet_from_config",
           "image_shape", "read_scheduler_config", "config_overrides"]  # fmt: skip

CONFIG_NAME = "config.json"
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

_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine"}
_PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
                   "fixed_large_log": "fixed_large", "learned": "learned",
                   "learned_range": "learned_range"}  # fmt: skip


# --------------------------------------------------------------------------- config.json


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
    validate_unet_config(cfg, file)
    return cfg


def _field_error(file: str, field: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{file}: unsupported {field}={value!r}; allowed: {allowed}")


def validate_unet_config(cfg: dict, file: str) -> None:
    """Raises ValueError (naming ``file``, the field and what is allowed) unless the full UNet2DModel config
    ``cfg`` (every field of `UNET_DEFAULTS`) is one diffax's `UNet` represents exactly."""
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
    """The `UNet` fields equivalent to a validated UNet2DModel config (`read_unet_config`).

    skip_rescale is False: UNet2DModel builds DownBlock2D / AttnDownBlock2D / UpBlock2D / AttnUpBlock2D with
    resnet ``output_scale_factor`` 1 and rescales only the mid block (``mid_block_scale_factor``, required 1).
    """
    chans, down = list(cfg["block_out_channels"]), list(cfg["down_block_types"])
    size = _sample_size(cfg)
    attn = tuple(sorted({size // 2**i for i, b in enumerate(down) if _DOWN_TYPES[b]}, reverse=True))
    head_dim = cfg["attention_head_dim"]
    return dict(ch=chans[0], ch_mult=tuple(c // chans[0] for c in chans), num_res_blocks=cfg["layers_per_block"],
                attn_resolutions=attn, out_ch=cfg["out_channels"], num_heads=1,
                num_head_channels=-1 if head_dim is None else head_dim, num_groups=cfg["norm_num_groups"],
                norm_eps=float(cfg["norm_eps"]), flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]),
                freq_shift=float(cfg["freq_shift"]), resamp_with_conv=True, resblock_updown=False,
                use_scale_shift_norm=False, learn_sigma=False, num_classes=None,
                skip_rescale=False)  # fmt: skip


def unet_from_config(cfg: dict, *, dropout: float | None = None, dtype=jnp.float32) -> UNet:
    """The diffax `UNet` of a UNet2DModel config (``dropout``: None = the config's, used only when training)."""
    return UNet(**unet_fields(cfg), dropout=float(cfg["dropout"] if dropout is None else dropout), dtype=dtype)


def image_shape(cfg: dict) -> tuple[int, int, int]:
    """(H, W, C) of the images the UNet was trained on (sample_size, in_channels)."""
    s = _sample_size(cfg)
    return (s, s, int(cfg["in_channels"]))


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



def config_overrides(path: str | os.PathLike) -> dict[str, Any]:
    """The diffax config keys (flat 'section.key' names) that the diffusers directory in ``path`` decides.

    model.*: the architecture (name, ch, ch_mult, num_res_blocks, attn_resolutions, heads, groups, no
    class labels); diffusion.*: the schedule (schedule, num_timesteps, beta_start, beta_end) and mean_type,
    when a scheduler config sits beside the UNet. A config with ``model.init_from=path`` must agree on all
    of them (`diffax.training.model_builders.build_model` refuses a contradiction). Options the config schema
    lacks (norm_eps, flip_sin_to_cos, freq_shift) are read from config.json itself.
    """
    f = unet_fields(read_unet_config(path))
    out: dict[str, Any] = {"model.name": "unet"}
    for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_heads", "num_head_channels", "num_groups",
              "resblock_updown", "use_scale_shift_norm", "num_classes", "skip_rescale"):  # fmt: skip
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
