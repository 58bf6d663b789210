"""Compatibility re-exports: the run layer now lives in `diffax.training.train` (the training loop),
`diffax.training.evaluate` (sample, evaluate, classifier_eval) and `diffax.training.restore` (streams,
restoring a run). Import from those modules in new code."""

from diffax.evaluation.toys import assign_components, toy_metrics  # noqa: F401
from diffax.training.evaluate import classifier_eval, evaluate, image_metrics, sample  # noqa: F401
from diffax.training.restore import CHECKPOINT_DIR, load_run, read_run_config, restore_ema  # noqa: F401
from diffax.training.train import train_and_evaluate  # noqa: F401

__all__ = ["train_and_evaluate", "sample", "evaluate", "classifier_eval", "load_run", "restore_ema",
           "read_run_config", "toy_metrics", "assign_components", "image_metrics", "CHECKPOINT_DIR"]  # fmt: skip
