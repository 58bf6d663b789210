"""`Preconditioned`: any diffax network F as an EDM denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise).

Karras et al. 2022 ("EDM"), eq. 7 with the coefficients of Table 1 (`diffax.edm.precondition`),
as NVlabs/edm `training/networks.py` (`EDMPrecond`, `VPPrecond`, `VEPrecond`).

Layering: models know nothing of diffusion, but this wrapper *is* EDM's parameterisation of the
denoiser, so it takes the coefficients from the one definition of them, `diffax.edm.precondition`
(pure jnp arithmetic on sigma; `diffax.edm` imports no Flax and nothing from `diffax.models`, so there
is no cycle). A second copy of Table 1 here would be two definitions that can drift apart.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffax.edm import precondition

Array = jnp.ndarray

__all__ = ["Preconditioned"]


class Preconditioned(nn.Module):
    """``apply(params, x, sigma, y=None, train=False)`` -> D(x; sigma), float32 (or x's dtype if wider).

        (c_skip, c_out, c_in, c_noise) = precondition(kind, sigma, sigma_data=sigma_data)
        D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)

    ``net``: a diffax network called as ``net(c_in * x, c_noise, y=y, train=train)`` -- `UNet` and `MLP`
    take (x, t, y=None, train=False) with t a (B,) int OR float array fed to the sinusoidal
    `timestep_embedding` (c_noise is a float: log(sigma)/4 for 'edm', as NVlabs' EDMPrecond feeds its
    DhariwalUNet's sinusoidal embedding; (M - 1) t in [0, 999] for 'vp'; log(sigma/2) for 've').
    ``y`` (int class labels, None = the network's null label) and ``train`` (dropout) are passed
    through unchanged. The net's parameters live under ``params['net']``.
    x: (B, ...); sigma: (B,) or a scalar (broadcast). x is cast to float32 (as NVlabs does) and F's
    output is cast to float32 BEFORE the skip sum, so D is float32 even when the net computes in
    bfloat16 (its ``dtype``); under x64 with float64 inputs everything stays float64.
    """

    net: nn.Module
    kind: str = "edm"
    sigma_data: float = 0.5

    @nn.compact
    def __call__(self, x: Array, sigma: Array, y: Array | None = None, train: bool = False) -> Array:
        ft = jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)
        x = jnp.asarray(x, ft)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, ft), (x.shape[0],))
        c_skip, c_out, c_in, c_noise = precondition(self.kind, sigma, sigma_data=self.sigma_data)
        col = (x.shape[0],) + (1,) * (x.ndim - 1)
        f = self.net(c_in.reshape(col) * x, c_noise, y=y, train=train)
        if f.shape != x.shape:
            raise ValueError(
                f"Preconditioned: the network's output has shape {f.shape}, expected x's shape {x.shape} "
                "(a learned-variance network, learn_sigma=True, has no EDM denoiser form)"
            )
        return c_skip.reshape(col) * x + c_out.reshape(col) * f.astype(ft)
