"""Moved to `diffax.evaluation.classifier_features`; this name stays importable (the same module object)."""

import sys

from diffax.evaluation import classifier_features as _module

sys.modules[__name__] = _module
