"""Flax (linen) networks. Models know nothing of diffusion: ``model.apply(params, x, t, ...)``.

`UNet` (Ho et al. 2020, with improved/guided-diffusion options), `MLP` (toy ε / score nets),
`Classifier` (optionally noise-aware), `InceptionV3` (the FID feature network), the shared
`timestep_embedding`, and `Preconditioned`: any of these networks as an EDM denoiser D(x; sigma) =
c_skip x + c_out F(c_in x, c_noise) (its coefficients from the pure `diffax.edm.precondition`).
"""

from diffax.models.classifier import Classifier
from diffax.models.inception import InceptionV3, load_fid_weights
from diffax.models.layers import AttnBlock, ResBlock, timestep_embedding
from diffax.models.mlp import MLP
from diffax.models.preconditioned import Preconditioned
from diffax.models.unet import UNet, ddpm_256, ddpm_cifar10, improved_ddpm_cifar10

__all__ = [
    "UNet",
    "MLP",
    "Preconditioned",
    "Classifier",
    "InceptionV3",
    "load_fid_weights",
    "ResBlock",
    "AttnBlock",
    "timestep_embedding",
    "ddpm_cifar10",
    "ddpm_256",
    "improved_ddpm_cifar10",
]
