"""Moved to `diffax.evaluation.metrics`; this name stays importable (the same module object)."""

import sys

from diffax.evaluation import metrics as _module

sys.modules[__name__] = _module
