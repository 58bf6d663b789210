"""Shared Flax (linen) building blocks of the denoising networks.

Faithful to the DDPM reference code (Ho et al. 2020, `diffusion_tf/models/unet.py` and
`diffusion_tf/nn.py`), with the options of improved/guided diffusion (Nichol & Dhariwal 2021;
Dhariwal & Nichol 2021, `guided_diffusion/unet.py`): scale-shift norm (AdaGN), BigGAN-style
up/down residual blocks and multi-head attention.

Initialization follows DDPM: ``variance_scaling(scale, 'fan_avg', 'uniform')`` with scale 1, and the
layers DDPM initialized with ``init_scale=0.`` (the last conv of each residual block, the attention
output projection, the output conv) are zero-initialized exactly (DDPM's code substitutes 1e-10 for
0 because TF's variance-scaling initializer rejects a zero scale).

Models know nothing of diffusion: ``t`` is only a number to embed.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "default_init",
    "timestep_embedding",
    "num_groups_for",
    "group_norm",
    "Downsample",
    "Upsample",
    "ResBlock",
    "AttnBlock",
    "Conv1x1",
    "conv",
    "dense",
]


def default_init(scale: float = 1.0) -> Callable:
    """DDPM's initializer: ``variance_scaling(scale, 'fan_avg', 'uniform')``; zeros when scale == 0.

    Ho et al. 2020, `diffusion_tf/nn.py: default_init` (there 0 is replaced by 1e-10).
    """
    if scale < 0:
        raise ValueError(f"init scale must be >= 0, got {scale}")
    if scale == 0:
        return nn.initializers.zeros
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def timestep_embedding(t: Array, dim: int, *, max_period: float = 10000.0, flip_sin_to_cos: bool = False,
                       freq_shift: float = 1.0) -> Array:
    """Sinusoidal embedding of (integer or real) times, DDPM's ``get_timestep_embedding``.

    With half = dim // 2 and freq_i = exp(-log(max_period) * i / (half - freq_shift)), i = 0..half-1:
        emb(t) = [sin(t * freq_0..half-1), cos(t * freq_0..half-1)]   (zero-padded when dim is odd),
    the halves swapped to [cos, sin] with ``flip_sin_to_cos``. (Ho et al. 2020, `diffusion_tf/nn.py`:
    freq_shift = 1, no flip; Vaswani et al. 2017, sec. 3.5; diffusers' ``get_timestep_embedding`` calls
    freq_shift ``downscale_freq_shift``.) ``t`` has shape (B,) and may be a float (e.g. a scaled noise
    level sigma or a continuous time), returns shape (B, dim).
    """
    if dim < 4:
        raise ValueError(f"timestep embedding dim must be >= 4 (half - 1 > 0), got {dim}")
    t = jnp.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got shape {t.shape}")
    ftype = jnp.result_type(float)
    half = dim // 2
    if not half - freq_shift > 0:
        raise ValueError(f"timestep embedding needs dim // 2 - freq_shift > 0, got dim={dim}, freq_shift={freq_shift}")
    freqs = jnp.exp(-math.log(max_period) / (half - freq_shift) * jnp.arange(half, dtype=ftype))
    args = t.astype(ftype)[:, None] * freqs[None, :]
    pair = (jnp.cos(args), jnp.sin(args)) if flip_sin_to_cos else (jnp.sin(args), jnp.cos(args))
    emb = jnp.concatenate(pair, axis=-1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def num_groups_for(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups for ``channels``: the largest divisor g of C with g <= max_groups and g <= C // 2.

    32 for DDPM's widths (C % 32 == 0, C >= 64). Groups keep >= 2 channels (for C >= 2): with one
    channel per group the normalization subtracts each channel's spatial mean, which exactly
    cancels the per-channel time/class embedding that DDPM's ResBlock adds before ``norm2``.
    """
    if channels < 1 or max_groups < 1:
        raise ValueError(f"channels and max_groups must be >= 1, got {channels}, {max_groups}")
    cap = min(max_groups, max(channels // 2, 1))
    return max(g for g in range(1, cap + 1) if channels % g == 0)


def group_norm(x: Array, *, max_groups: int = 32, eps: float = 1e-6, dtype=jnp.float32,
               name: str | None = None) -> Array:
    """GroupNorm (Wu & He 2018) over the last axis with ``num_groups_for(C, max_groups)`` groups.

    Call inside a ``@nn.compact`` method (the norm becomes a submodule of the caller). DDPM uses
    32 groups and TF's eps 1e-6 (the default; diffusers' ``norm_eps`` sets it); small widths fall
    back to fewer groups.
    """
    groups = num_groups_for(x.shape[-1], max_groups)
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, name=name)(x)


class Conv1x1(nn.Module):
    """A 1x1 convolution (DDPM's ``nin``) computed as a matmul over the channel axis:

        y[..., o] = sum_c x[..., c] kernel[0, 0, c, o] + bias[o].

    The parameters are those of ``nn.Conv(features, (1, 1))`` (kernel (1, 1, C_in, C_out), bias; same
    names, shapes, initializers and hence the same initial values), so checkpoints and weight loaders
    see no difference, and the forward is bitwise the convolution's on XLA CPU. Why: XLA's CPU backend
    lowers the *kernel gradient* of a 1x1 convolution to a convolution with an H x W window, slower than
    the equivalent matmul (whole CIFAR-10 train step at batch 8: 2754 vs 2956 ms median, see
    docs/performance.md).
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum("...c,co->...o", x, kernel[0, 0]) + bias


def conv(features: int, kernel: int = 3, *, stride: int = 1, init_scale: float = 1.0, dtype=jnp.float32,
         name: str | None = None) -> nn.Module:
    """A 'SAME'-padded square convolution with DDPM's init (`default_init(init_scale)`); a 1x1, stride-1
    kernel is the channel matmul `Conv1x1` (same parameters as ``nn.Conv``)."""
    if kernel == 1 and stride == 1:
        return Conv1x1(features, kernel_init=default_init(init_scale), dtype=dtype, name=name)
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                   kernel_init=default_init(init_scale), dtype=dtype, name=name)


def dense(features: int, *, init_scale: float = 1.0, dtype=jnp.float32, name: str | None = None) -> nn.Dense:
    """``nn.Dense`` with DDPM's init (`default_init(init_scale)`)."""
    return nn.Dense(features, kernel_init=default_init(init_scale), dtype=dtype, name=name)


def _nearest_up2(x: Array) -> Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avg_down2(x: Array) -> Array:
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Downsample(nn.Module):
    """Halve H and W: a 3x3 conv with stride 2 ('SAME' padding, as TF), or 2x2 average pooling."""

    with_conv: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"Downsample needs even H and W, got {x.shape[1:3]}")
        if self.with_conv:
            return conv(x.shape[-1], stride=2, dtype=self.dtype, name="conv")(x)
        return _avg_down2(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then (optionally) a 3x3 conv."""

    with_conv: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = _nearest_up2(x)
        if self.with_conv:
            x = conv(x.shape[-1], dtype=self.dtype, name="conv")(x)
        return x


def _residual(x: Array, h: Array, skip_rescale: bool) -> Array:
    """x + h, or (x + h) / sqrt(2) with ``skip_rescale`` (score_sde: ``(x + h) / np.sqrt(2.)``, a division,
    not a multiplication by 1/sqrt(2): the same rounding as the reference)."""
    out = x + h
    return out / math.sqrt(2.0) if skip_rescale else out


class ResBlock(nn.Module):
    """Residual block with time conditioning (DDPM ``resnet_block``; guided diffusion ``ResBlock``).

    h = Conv3x3(SiLU(GN(x)));  h = h + Dense(SiLU(temb))                 (DDPM)
      or with use_scale_shift_norm (AdaGN):  GN(h) * (1 + scale) + shift,  [scale, shift] = Dense(SiLU(temb))
    h = Conv3x3_zero(Dropout(SiLU(GN(h))));  out = skip(x) + h, skip = 1x1 conv ("nin") when channels change
    (a 3x3 conv with conv_shortcut). With up/down (BigGAN-style, guided diffusion ``resblock_updown``)
    both h (after the first GN+SiLU) and x are resampled without a conv. ``temb=None`` drops the
    conditioning (an unconditional block). ``norm_eps``: the GroupNorms' epsilon.
    ``skip_rescale``: out = (skip(x) + h) / sqrt(2) (score_sde's ``skip_rescale``, `models/layerspp.py`
    ResnetBlockDDPMpp / ResnetBlockBigGANpp: ``(x + h) / np.sqrt(2.)``; EDM's ``skip_scale`` = sqrt(0.5)):
    the sum of two roughly independent unit-variance terms keeps unit variance. Adds no parameters.
    """

    out_ch: int | None = None
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    conv_shortcut: bool = False
    up: bool = False
    down: bool = False
    num_groups: int = 32
    norm_eps: float = 1e-6
    skip_rescale: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
        if self.up and self.down:
            raise ValueError("ResBlock: up and down cannot both be True")
        in_ch = x.shape[-1]
        out_ch = in_ch if self.out_ch is None else self.out_ch
        h = nn.silu(group_norm(x, max_groups=self.num_groups, eps=self.norm_eps, dtype=self.dtype, name="norm1"))
        if self.up:
            h, x = _nearest_up2(h), _nearest_up2(x)
        elif self.down:
            h, x = _avg_down2(h), _avg_down2(x)
        h = conv(out_ch, dtype=self.dtype, name="conv1")(h)
        if temb is not None:
            n = 2 * out_ch if self.use_scale_shift_norm else out_ch
            emb = dense(n, dtype=self.dtype, name="temb_proj")(nn.silu(temb))[:, None, None, :]
        if temb is not None and self.use_scale_shift_norm:
            scale, shift = jnp.split(emb, 2, axis=-1)
            h = group_norm(h, max_groups=self.num_groups, eps=self.norm_eps, dtype=self.dtype, name="norm2")
            h = h * (1 + scale) + shift
        else:
            if temb is not None:
                h = h + emb
            h = group_norm(h, max_groups=self.num_groups, eps=self.norm_eps, dtype=self.dtype, name="norm2")
        h = nn.silu(h)
        h = nn.Dropout(rate=self.dropout, deterministic=not train)(h)
        h = conv(out_ch, init_scale=0.0, dtype=self.dtype, name="conv2")(h)
        if in_ch != out_ch:
            k = 3 if self.conv_shortcut else 1
            x = conv(out_ch, k, dtype=self.dtype, name="conv_shortcut" if self.conv_shortcut else "nin_shortcut")(x)
        return _residual(x, h, self.skip_rescale)


class AttnBlock(nn.Module):
    """Spatial self-attention with a residual (DDPM ``attn_block``; multi-head as guided diffusion).

    q, k, v = 1x1 projections of GN(x);  per head, w = softmax(q k^T / sqrt(d_head)) over the H*W keys;
    out = x + proj_out(w v), proj_out zero-initialized. num_heads = C // num_head_channels when
    num_head_channels != -1. The softmax is computed in float32. ``norm_eps``: the GroupNorm's epsilon.
    ``skip_rescale``: out = (x + proj_out(w v)) / sqrt(2) (score_sde's AttnBlockpp with ``skip_rescale``).
    """

    num_heads: int = 1
    num_head_channels: int = -1
    num_groups: int = 32
    norm_eps: float = 1e-6
    skip_rescale: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hh, ww, c = x.shape
        if self.num_head_channels != -1:
            if self.num_head_channels < 1 or c % self.num_head_channels:
                raise ValueError(f"num_head_channels={self.num_head_channels} must divide channels {c}")
            heads = c // self.num_head_channels
        else:
            heads = self.num_heads
        if heads < 1 or c % heads:
            raise ValueError(f"num_heads={heads} must be >= 1 and divide channels {c}")
        h = group_norm(x, max_groups=self.num_groups, eps=self.norm_eps, dtype=self.dtype, name="norm")
        q, k, v = (dense(c, dtype=self.dtype, name=n)(h).reshape(b, hh * ww, heads, c // heads)
                   for n in ("q", "k", "v"))
        f32 = jnp.promote_types(q.dtype, jnp.float32)  # logits accumulated and softmaxed in >= float32
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=f32) / math.sqrt(c // heads)
        w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        h = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, hh, ww, c)
        h = dense(c, init_scale=0.0, dtype=self.dtype, name="proj_out")(h)
        return _residual(x, h, self.skip_rescale)
