"""Moved to `diffax.evaluation.images`; this name stays importable (the same module object)."""

import sys

from diffax.evaluation import images as _module

sys.modules[__name__] = _module
