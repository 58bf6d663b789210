"""A small (optionally noise-aware) classifier for images or vectors.

Images (B, H, W, C): conv_in, then per level ``num_res_blocks`` DDPM residual blocks and a stride-2
downsample except at the last level, GroupNorm + SiLU, global average pooling -> features ->
Dense(num_classes). Vectors (B, D): a residual MLP with the same conditioning -> features -> Dense.

With ``time_conditional=True`` the sinusoidal embedding of t is added inside every residual block,
as in the noisy classifiers p(y | x_t, t) of classifier guidance (Dhariwal & Nichol 2021, sec. 4;
their ``EncoderUNetModel``, here with mean pooling instead of attention pooling). The penultimate
features (``return_features=True``) serve as the embedding of a "classifier FID" on MNIST-like data.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.models.layers import Downsample, ResBlock, conv, dense, group_norm, timestep_embedding

Array = jax.Array

__all__ = ["Classifier"]


class Classifier(nn.Module):
    """``apply(params, x, t=None, train=False, return_features=False)`` -> logits (B, num_classes).

    With ``return_features`` returns ``(logits, features)``, features (B, ch * ch_mult[-1]) for
    images or (B, hidden) for vectors. ``t`` (B,) int or float is required when
    ``time_conditional`` and ignored otherwise (a clean-data classifier may be evaluated anywhere).
    """

    num_classes: int
    ch: int = 32
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    hidden: int = 256
    num_layers: int = 2
    time_conditional: bool = False
    time_embed_dim: int | None = None
    dropout: float = 0.0
    num_groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, t: Array | None = None, train: bool = False,
                 return_features: bool = False) -> Array | tuple[Array, Array]:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if x.ndim not in (2, 4):
            raise ValueError(f"Classifier expects (B, D) or (B, H, W, C) input, got shape {x.shape}")
        b = x.shape[0]
        width = self.ch * 4 if x.ndim == 4 else self.hidden
        temb = None
        if self.time_conditional:
            if t is None:
                raise ValueError("time_conditional=True needs t, got None")
            t = jnp.broadcast_to(jnp.asarray(t), (b,))
            emb_dim = self.time_embed_dim or (self.ch if x.ndim == 4 else 64)
            temb = dense(width, dtype=self.dtype, name="temb_dense0")(
                timestep_embedding(t, emb_dim).astype(self.dtype))
            temb = dense(width, dtype=self.dtype, name="temb_dense1")(nn.silu(temb))

        if x.ndim == 4:
            feats = self._image_features(x, temb, train)
        else:
            feats = self._vector_features(x, temb, train)
        logits = dense(self.num_classes, dtype=self.dtype, name="logits")(feats)
        return (logits, feats) if return_features else logits

    def _image_features(self, x: Array, temb: Array | None, train: bool) -> Array:
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"H, W = {x.shape[1:3]} must be divisible by 2**(len(ch_mult)-1) = {factor}")
        h = conv(self.ch, dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
        for i_level, mult in enumerate(self.ch_mult):
            for i_block in range(self.num_res_blocks):
                h = ResBlock(out_ch=self.ch * mult, dropout=self.dropout, num_groups=self.num_groups,
                             dtype=self.dtype, name=f"down_{i_level}_block_{i_block}")(h, temb, train)
            if i_level != len(self.ch_mult) - 1:
                h = Downsample(True, dtype=self.dtype, name=f"down_{i_level}_downsample")(h)
        h = nn.silu(group_norm(h, max_groups=self.num_groups, dtype=self.dtype, name="norm_out"))
        return jnp.mean(h, axis=(1, 2))

    def _vector_features(self, x: Array, temb: Array | None, train: bool) -> Array:
        h = dense(self.hidden, dtype=self.dtype, name="dense_in")(x.astype(self.dtype))
        for i in range(self.num_layers):
            r = dense(self.hidden, dtype=self.dtype, name=f"block_{i}_dense1")(nn.silu(h))
            if temb is not None:
                r = r + dense(self.hidden, dtype=self.dtype, name=f"block_{i}_temb")(nn.silu(temb))
            r = nn.Dropout(rate=self.dropout, deterministic=not train)(nn.silu(r))
            h = h + dense(self.hidden, dtype=self.dtype, name=f"block_{i}_dense2")(r)
        return nn.silu(h)
