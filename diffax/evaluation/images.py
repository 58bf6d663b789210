"""Evaluation of an image diffusion model: test-split bits/dim and classifier FID.

Two numbers papers report, computed the way they compute them:

- **bits/dim** of the variational bound on held-out data, `diffax.likelihood.vlb_bpd`: every term
  L_0 … L_{T-1} plus the prior L_T evaluated once per image (improved-diffusion's ``calc_bpd_loop``;
  Ho et al. 2020, eq. 5 and sec. 4.2; Nichol & Dhariwal 2021, sec. 3), on the 8-bit grid with the
  discretized Gaussian decoder. Reported as the mean over `num_examples` test images and its
  standard error (the per-image totals are i.i.d.).
- **classifier FID**: the Fréchet distance (Heusel et al. 2017, eq. 6) between the penultimate
  features of a classifier (`diffax.feature_fid`, e.g. the MNIST classifier of
  experiments/train_classifier.py) on the samples and on the test split; for class-conditional
  samples also the classifier's accuracy on them.

The functions take plain arguments (model apply function, schedule, arrays); `diffax.training.evaluate`
calls them with the run's settings (eval.*).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from diffax import likelihood
from diffax.evaluation import classifier_features as feature_fid
from diffax.evaluation.batching import padded_batches
from diffax.schedules import Schedule

__all__ = ["to_model_range", "test_bits_per_dim", "ClassifierReference", "classifier_reference", "reference_metrics",
           "classifier_metrics"]


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 images in {0..255} -> float32 in [-1, 1] on the 8-bit grid: x = 2 u / 255 - 1."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 in {{0..255}}, got dtype {images.dtype}")
    return images.astype(np.float32) / 127.5 - 1.0


def test_bits_per_dim(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    schedule: Schedule,
    images: np.ndarray,
    key: jax.Array,
    *,
    labels: np.ndarray | None = None,
    batch_size: int = 64,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    progress: bool = True,
) -> dict[str, Any]:
    """Bits/dim of the full VLB on ``images`` (N, H, W, C) uint8, batch by batch.

    Each batch: ``likelihood.vlb_bpd(model_fn, schedule, key_b, x0)`` with
    ``model_fn(x_t, t) = apply_fn({'params': params}, x_t, t, y=labels_b, train=False)``
    (one compiled scan over all T; the last batch is padded to `batch_size` and trimmed so one
    compilation serves any N). ``labels``: None (unconditional), or per-image labels (for a
    class-conditional model; pass the null class for its unconditional likelihood).

    Returns dict(bpd (mean total), bpd_stderr (sd / sqrt(N)), prior_bpd, decoder_bpd (L_0),
    num_examples, per_example (list of N totals)).
    """
    x_all = to_model_range(images)
    n = len(x_all)
    if n < 1:
        raise ValueError("test_bits_per_dim needs at least one image, got 0")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} images")
    batch_size = min(batch_size, n)

    @jax.jit
    def run(k, x0, y):
        def model_fn(x_t, t):
            return apply_fn({"params": params}, x_t, t, y=y, train=False)

        out = likelihood.vlb_bpd(model_fn, schedule, k, x0, mean_type=mean_type, var_type=var_type)
        return out["total"], out["prior"], out["terms"][:, 0]

    totals, priors, decoders = [], [], []
    labels = None if labels is None else np.asarray(labels, np.int32)
    batches = padded_batches(batch_size, x_all, labels)
    for j, m, (x0, y) in tqdm(batches, total=math.ceil(n / batch_size), desc="bits/dim", unit="batch",
                              disable=not progress, mininterval=5.0):  # fmt: skip
        tot, pri, dec = jax.device_get(run(jax.random.fold_in(key, j), x0, y))
        totals.append(tot[:m])
        priors.append(pri[:m])
        decoders.append(dec[:m])
    totals = np.concatenate(totals).astype(np.float64)
    return {
        "bpd": float(np.mean(totals)),
        "bpd_stderr": float(np.std(totals, ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "prior_bpd": float(np.mean(np.concatenate(priors))),
        "decoder_bpd": float(np.mean(np.concatenate(decoders))),
        "num_examples": int(n),
        "per_example": totals.tolist(),
    }


class ClassifierReference(NamedTuple):
    """A loaded feature classifier and the feature statistics of the reference images."""

    model: Any
    params: Any
    stats: tuple[np.ndarray, np.ndarray]  # (mu (F,), sigma (F, F)), float64
    num_reference: int


def classifier_reference(classifier_path: str, reference_images: np.ndarray, *,
                         batch_size: int = 500) -> ClassifierReference:  # fmt: skip
    """Loads the classifier saved at ``classifier_path`` (`feature_fid.save_classifier`) and fits the
    Gaussian of its penultimate features on ``reference_images`` (uint8, e.g. the test split), once,
    for any number of `reference_metrics` calls."""
    model, params = feature_fid.load_classifier(classifier_path)
    stats = feature_fid.feature_stats(to_model_range(reference_images), model=model, params=params,
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
        "classifier_fid": feature_fid.feature_fid(samples, reference.stats, model=model, params=params,
                                                  batch_size=batch_size),  # fmt: skip
        "num_fid_samples": int(len(samples)),
        "num_reference": reference.num_reference,
    }
    if sample_labels is not None:
        out["sample_accuracy"] = feature_fid.classifier_accuracy(
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
