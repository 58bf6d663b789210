"""The DDPM U-Net (Ho et al. 2020) with the options of improved/guided diffusion.

Architecture of `diffusion_tf/models/unet.py` (Ho et al. 2020, appendix B): a PixelCNN++-like
U-Net of wide ResNet blocks with GroupNorm, self-attention at the 16x16 resolution, and a
sinusoidal timestep embedding added in every residual block. Options from Nichol & Dhariwal 2021
(``learn_sigma``: twice the output channels, mean and variance interpolation) and Dhariwal &
Nichol 2021 (``use_scale_shift_norm`` = AdaGN, ``resblock_updown``, ``num_heads`` /
``num_head_channels``, class embedding). The class embedding has ``num_classes + 1`` rows; row
``num_classes`` is the null label of classifier-free guidance (Ho & Salimans 2022), used when
``y is None``.

Note: ``attn_resolutions`` lists spatial sizes (DDPM's convention: (16,) = attention at 16x16),
not guided diffusion's downsampling rates.

With the CIFAR-10 configuration (`ddpm_cifar10()`), the model has 35,746,307 parameters,
the "35.7 million" of Ho et al. 2020, sec. 4.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.models.layers import (AttnBlock, Downsample, ResBlock, Upsample, conv, dense, group_norm,
                                  timestep_embedding)

Array = jax.Array

__all__ = ["UNet", "ddpm_cifar10", "ddpm_256", "improved_ddpm_cifar10"]


class UNet(nn.Module):
    """ε-prediction (or x0 / v / score) U-Net: ``apply(params, x, t, y=None, train=False)``.

    x: (B, H, W, C) NHWC; t: (B,) int or float (a scalar is broadcast); y: (B,) int class labels in
    [0, num_classes] (num_classes = null) or None. Returns (B, H, W, out), out = out_ch or C, doubled
    with ``learn_sigma`` (first half the mean output, second half the variance output).
    Dropout needs ``rngs={'dropout': key}`` when ``train=True`` and ``dropout > 0``.
    ``dtype``: the activations' dtype ('bfloat16' for mixed precision). Parameters stay float32; the
    timestep/class embedding, GroupNorm statistics, the attention softmax, the input convolution (on the
    float32 x) and the output head (norm, SiLU, conv) are float32, so is the output.
    ``norm_eps`` (every GroupNorm's epsilon), ``flip_sin_to_cos`` and ``freq_shift`` (the timestep
    embedding, `layers.timestep_embedding`) default to DDPM's values; diffusers' UNet2DModel configs set
    them (`diffax.interop.load_diffusers_unet`).
    ``skip_rescale`` (off by default; DDPM has none): every residual sum divided by sqrt(2), as score_sde's
    NCSN++/DDPM++ ``skip_rescale`` (Song et al. 2021, `models/layerspp.py`, `models/ncsnpp.py`) and EDM's
    ``skip_scale`` = sqrt(0.5) (Karras et al. 2022, `training/networks.py`). Where the reference rescales,
    this U-Net does too: each ResBlock, (skip(x) + h) / sqrt(2) (also the up/down ResBlocks of
    ``resblock_updown``, as ResnetBlockBigGANpp), and each AttnBlock, (x + h) / sqrt(2) (AttnBlockpp). The
    skip *concatenation* of the up path is not scaled (NCSN++ concatenates ``torch.cat([h, hs.pop()])``
    unscaled); NCSN++'s other rescaled sums, the ``progressive='residual'`` / ``progressive_input='residual'``
    image pyramids, do not exist here. No parameters are added: the parameter tree is the same either way.
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    out_ch: int | None = None
    learn_sigma: bool = False
    resamp_with_conv: bool = True
    resblock_updown: bool = False
    use_scale_shift_norm: bool = False
    num_heads: int = 1
    num_head_channels: int = -1
    num_classes: int | None = None
    num_groups: int = 32
    norm_eps: float = 1e-6
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    skip_rescale: bool = False
    dtype: jnp.dtype = jnp.float32

    def _check(self, x: Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"UNet expects NHWC input of rank 4, got shape {x.shape}")
        if self.ch < 1 or self.num_res_blocks < 1 or not self.ch_mult:
            raise ValueError(f"need ch >= 1, num_res_blocks >= 1, non-empty ch_mult; got ch={self.ch}, "
                             f"num_res_blocks={self.num_res_blocks}, ch_mult={self.ch_mult}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"H, W = {x.shape[1:3]} must be divisible by 2**(len(ch_mult)-1) = {factor}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def _res(self, out_ch: int | None, name: str, **kw) -> ResBlock:
        return ResBlock(out_ch=out_ch, dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                        num_groups=self.num_groups, norm_eps=self.norm_eps, skip_rescale=self.skip_rescale,
                        dtype=self.dtype, name=name, **kw)

    def _attn(self, name: str) -> AttnBlock:
        return AttnBlock(num_heads=self.num_heads, num_head_channels=self.num_head_channels,
                         num_groups=self.num_groups, norm_eps=self.norm_eps, skip_rescale=self.skip_rescale,
                         dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, train: bool = False) -> Array:
        self._check(x)
        b = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t), (b,))
        temb_ch = 4 * self.ch
        # Timestep embedding: sinusoid -> Dense(4ch) -> SiLU -> Dense(4ch) (DDPM `temb`).
        temb = timestep_embedding(t, self.ch, flip_sin_to_cos=self.flip_sin_to_cos,
                                  freq_shift=self.freq_shift)
        # Kept in float32 under a low-precision dtype (mixed precision): (B, 4ch), negligible cost.
        temb = dense(temb_ch, dtype=jnp.float32, name="temb_dense0")(temb)
        temb = dense(temb_ch, dtype=jnp.float32, name="temb_dense1")(nn.silu(temb))
        if self.num_classes is not None:
            if y is None:
                y = jnp.full((b,), self.num_classes, dtype=jnp.int32)
            y = jnp.broadcast_to(jnp.asarray(y), (b,))
            temb = temb + nn.Embed(self.num_classes + 1, temb_ch, dtype=jnp.float32, name="label_emb")(y)
        elif y is not None:
            raise ValueError("y was given but the UNet has num_classes=None (unconditional)")

        # Downsampling. The input convolution runs in float32 on the float32 x_t: at small t the noise is a
        # small part of x_t (b_0 = 0.01 under DDPM's schedule) and rounding x_t to bf16 would destroy ~9% of
        # it before any layer could separate it from the image (experiments/bf16_error.py).
        h = conv(self.ch, dtype=jnp.promote_types(self.dtype, jnp.float32), name="conv_in")(x)
        hs = [h.astype(self.dtype)]
        n_levels = len(self.ch_mult)
        for i_level, mult in enumerate(self.ch_mult):
            for i_block in range(self.num_res_blocks):
                h = self._res(self.ch * mult, f"down_{i_level}_block_{i_block}")(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = self._attn(f"down_{i_level}_attn_{i_block}")(h)
                hs.append(h)
            if i_level != n_levels - 1:
                name = f"down_{i_level}_downsample"
                if self.resblock_updown:
                    hs.append(self._res(None, name, down=True)(hs[-1], temb, train))
                else:
                    hs.append(Downsample(self.resamp_with_conv, dtype=self.dtype, name=name)(hs[-1]))

        # Middle.
        h = self._res(None, "mid_block_1")(hs[-1], temb, train)
        h = self._attn("mid_attn_1")(h)
        h = self._res(None, "mid_block_2")(h, temb, train)

        # Upsampling, with skip concatenation.
        for i_level in reversed(range(n_levels)):
            for i_block in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = self._res(self.ch * self.ch_mult[i_level], f"up_{i_level}_block_{i_block}")(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = self._attn(f"up_{i_level}_attn_{i_block}")(h)
            if i_level != 0:
                name = f"up_{i_level}_upsample"
                if self.resblock_updown:
                    h = self._res(None, name, up=True)(h, temb, train)
                else:
                    h = Upsample(self.resamp_with_conv, dtype=self.dtype, name=name)(h)
        assert not hs

        # End.
        out_ch = x.shape[-1] if self.out_ch is None else self.out_ch
        if self.learn_sigma:
            out_ch *= 2
        # The output head (norm, SiLU, conv) in float32 under bf16: the prediction is not rounded to 8 bits,
        # and the loss is formed in float32.
        f32 = jnp.promote_types(self.dtype, jnp.float32)
        h = group_norm(h.astype(f32), max_groups=self.num_groups, eps=self.norm_eps, dtype=f32, name="norm_out")
        h = nn.silu(h)
        return conv(out_ch, init_scale=0.0, dtype=f32, name="conv_out")(h)


def ddpm_cifar10(**overrides) -> UNet:
    """DDPM's CIFAR-10 model (Ho et al. 2020, appendix B): 35.7M parameters on 32x32x3."""
    kw = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
    return UNet(**{**kw, **overrides})


def ddpm_256(**overrides) -> UNet:
    """DDPM's LSUN / CelebA-HQ 256x256 model (Ho et al. 2020, appendix B): ~114M parameters."""
    kw = dict(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0)
    return UNet(**{**kw, **overrides})


def improved_ddpm_cifar10(**overrides) -> UNet:
    """Improved DDPM's CIFAR-10 L_hybrid model (Nichol & Dhariwal 2021, sec. 2.4 / appendix A):

    3 res blocks per level, attention at 16x16 and 8x8 with 4 heads, learned variances, scale-shift
    norm, dropout 0.3.
    """
    kw = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=3, attn_resolutions=(16, 8), dropout=0.3,
              num_heads=4, learn_sigma=True, use_scale_shift_norm=True)
    return UNet(**{**kw, **overrides})
