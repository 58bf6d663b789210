"""Renamed to `diffax.importance_sampling` (importance sampling of timesteps, Nichol & Dhariwal 2021,
sec. 3.3); this name stays importable and is the same module object."""

import sys

from diffax import importance_sampling as _module

sys.modules[__name__] = _module
