"""diffax: diffusion models as small pure JAX functions.

Modules (each one concept): `schedules`, `diffusion`, `samplers`, `losses`, `oracles`;
training and models live in `diffax.training` and `diffax.models`.
"""

from diffax import diffusion, oracles, schedules  # noqa: F401

__version__ = "0.1.0"
