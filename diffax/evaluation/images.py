"""Evaluation of an image diffusion model: the 8-bit <-> [-1, 1] mappings and classifier FID.

- **8-bit images**: `to_model_range` (uint8 -> the model's [-1, 1]) and its inverse on the grid, `to_uint8`
  (samples -> uint8, as a saved PNG holds them; what samples.npz of an image run and the Inception
  metrics take).

- **classifier FID**: the Fréchet distance (Heusel et al. 2017, eq. 6) between the penultimate
  features of a classifier (`diffax.evaluation.classifier_features`, e.g. the MNIST classifier of
  experiments/train_classifier.py) on the samples and on the test split; for class-conditional
  samples also the classifier's accuracy on them.
- **bits/dim** of the variational bound on held-out data has one implementation,
  `diffax.evaluation.bits_per_dim.sharded_bits_per_dim` (image i's noise from fold_in(key, i), so a number
  does not depend on the batch size or the device count); its inputs are `to_model_range` of the images.

The functions take plain arguments (model apply function, arrays); `diffax.training.evaluate`
calls them with the run's settings (eval.*).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from diffax.evaluation import classifier_features

__all__ = ["to_model_range", "to_uint8", "ClassifierReference", "classifier_reference", "reference_metrics",
           "classifier_metrics"]  # fmt: skip


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 images in {0..255} -> float32 in [-1, 1] on the 8-bit grid: x = 2 u / 255 - 1."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in {{0..255}}, got dtype {images.dtype}")
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] -> uint8 in {0..255}: floor((x + 1) * 127.5 + 0.5), clipped (as torchvision's
    save_image, which pytorch-fid's PNGs go through); the inverse of `to_model_range` on the 8-bit grid."""
    return np.clip(np.floor((np.asarray(x, np.float64) + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)


class ClassifierReference(NamedTuple):
    """A loaded feature classifier and the feature statistics of the reference images."""

    model: Any
    params: Any
    stats: tuple[np.ndarray, np.ndarray]  # (mu (F,), sigma (F, F)), float64
    num_reference: int


def classifier_reference(classifier_path: str, reference_images: np.ndarray, *,
                         batch_size: int = 500) -> ClassifierReference:  # fmt: skip
    """Loads the classifier saved at ``classifier_path`` (`classifier_features.save_classifier`) and fits the
    Gaussian of its penultimate features on ``reference_images`` (uint8, e.g. the test split), once,
    for any number of `reference_metrics` calls."""
    model, params = classifier_features.load_classifier(classifier_path)
    stats = classifier_features.feature_stats(to_model_range(reference_images), model=model, params=params,
                                              batch_size=batch_size)  # fmt: skip
    return ClassifierReference(model, params, stats, int(len(reference_images)))


def reference_metrics(
    samples: np.ndarray,
    reference: ClassifierReference,
    *,
    sample_labels: np.ndarray | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Classifier FID of ``samples`` (N, H, W, C) in [-1, 1] against ``reference``:

    FID = ||mu_s - mu_r||^2 + tr(S_s + S_r - 2 (S_s S_r)^{1/2}) of the penultimate features
    (Heusel et al. 2017, eq. 6). It is biased upwards at small N: compare values at equal N only.
    Samples are clipped to [-1, 1] first (the data range; papers quantize samples to uint8 before FID).
    With ``sample_labels`` (the classes the samples were drawn for) also the classifier's accuracy
    on the samples. Returns dict(classifier_fid, num_fid_samples, num_reference[, sample_accuracy]).
    """
    model, params = reference.model, reference.params
    samples = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    out: dict[str, Any] = {
        "classifier_fid": classifier_features.feature_fid(samples, reference.stats, model=model, params=params,
                                                          batch_size=batch_size),  # fmt: skip
        "num_fid_samples": int(len(samples)),
        "num_reference": reference.num_reference,
    }
    if sample_labels is not None:
        out["sample_accuracy"] = classifier_features.classifier_accuracy(
            samples, np.asarray(sample_labels), model=model, params=params, batch_size=batch_size
        )
    return out


def classifier_metrics(
    samples: np.ndarray,
    classifier_path: str,
    reference_images: np.ndarray,
    *,
    sample_labels: np.ndarray | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """One-shot `classifier_reference` + `reference_metrics` (for one set of samples; to score many,
    build the reference once)."""
    reference = classifier_reference(classifier_path, reference_images, batch_size=batch_size)
    return reference_metrics(samples, reference, sample_labels=sample_labels, batch_size=batch_size)
