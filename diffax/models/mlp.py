"""A residual MLP ε / score network for low-dimensional data (toy 1-D / 2-D experiments).

Same conditioning scheme as the DDPM U-Net (Ho et al. 2020): a sinusoidal embedding of t, passed
through Dense -> SiLU -> Dense, projected into every residual block. ``t=None`` gives a plain,
unconditional network s(x), as used by exact (Hyvärinen 2005) and sliced (Song et al. 2019) score
matching.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.models.layers import timestep_embedding

Array = jax.Array

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": nn.silu,
    "relu": nn.relu,
    "gelu": nn.gelu,
    "softplus": nn.softplus,
    "elu": nn.elu,
    "tanh": jnp.tanh,
}


class MLP(nn.Module):
    """Residual MLP: ``apply(params, x, t=None, y=None, train=False)`` -> (B, out).

    h = Dense(hidden)(x);  num_layers times: h = h + Dense(Dropout(act(Dense(act(h)) + Dense(act(c)))))
    with c = Dense(act(Dense(sinusoid(t)))) [+ Embed(y)] the conditioning vector (omitted when t and
    y are None); out = Dense(act(h)), out = out_dim or D, doubled with ``learn_sigma``.
    x: (B, D); t: (B,) int or float (a scalar is broadcast) or None; y: (B,) int in [0, num_classes]
    (num_classes = the null label for classifier-free guidance) or None (-> null label).
    Continuous times t in [0, 1] should be scaled (e.g. by 1000) by the caller, since the sinusoid's
    lowest frequency has period 2 pi and its highest 2 pi * 10000.
    ``dtype``: the activations' dtype ('bfloat16' for mixed precision); parameters, the time/class
    embedding and the output stay float32. None (the default): Flax's promotion of inputs and params.
    """

    hidden: int = 128
    num_layers: int = 3
    out_dim: int | None = None
    learn_sigma: bool = False
    num_classes: int | None = None
    time_embed_dim: int = 64
    activation: str = "silu"
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, t: Array | None = None, y: Array | None = None, train: bool = False) -> Array:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if x.ndim != 2:
            raise ValueError(f"MLP expects x of shape (B, D), got shape {x.shape}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        act = ACTIVATIONS[self.activation]
        b = x.shape[0]
        cond = None
        if t is not None:
            t = jnp.broadcast_to(jnp.asarray(t), (b,))
            cond = nn.Dense(self.hidden, name="temb_dense0")(timestep_embedding(t, self.time_embed_dim))
            cond = nn.Dense(self.hidden, name="temb_dense1")(act(cond))  # float32 under any dtype
        if self.num_classes is not None:
            if y is None:
                y = jnp.full((b,), self.num_classes, dtype=jnp.int32)
            yemb = nn.Embed(self.num_classes + 1, self.hidden, name="label_emb")(jnp.broadcast_to(y, (b,)))
            cond = yemb if cond is None else cond + yemb
        elif y is not None:
            raise ValueError("y was given but the MLP has num_classes=None (unconditional)")

        dt = self.dtype
        h = nn.Dense(self.hidden, dtype=dt, name="dense_in")(x)
        for i in range(self.num_layers):
            r = nn.Dense(self.hidden, dtype=dt, name=f"block_{i}_dense1")(act(h))
            if cond is not None:
                r = r + nn.Dense(self.hidden, dtype=dt, name=f"block_{i}_cond")(act(cond))
            r = nn.Dropout(rate=self.dropout, deterministic=not train)(act(r))
            h = h + nn.Dense(self.hidden, dtype=dt, name=f"block_{i}_dense2")(r)
        out = x.shape[-1] if self.out_dim is None else self.out_dim
        if self.learn_sigma:
            out *= 2
        y_out = nn.Dense(out, dtype=dt, name="dense_out")(act(h))
        return y_out if dt is None else y_out.astype(jnp.promote_types(dt, jnp.float32))
