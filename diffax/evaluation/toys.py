"""Evaluation of samples of a toy distribution: distances to held-out data and mode weights.

The distances are `diffax.evaluation.metrics`'s (W1 for 1-D data, the sliced W1 for 2-D), computed
in float64 (`jax.enable_x64`) so that eval.json's numbers are exact functions of the
samples. Two kinds of mode weights, under distinct names:

- `density_mode_weights`: each point goes to argmax_k w_k N(x; mu_k, diag std_k^2) (`assign_components`),
  the component most likely to have produced it (what eval.json reports);
- `diffax.evaluation.metrics.mode_weights`: each point goes to the nearest mean (Euclidean).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from diffax.evaluation import metrics

__all__ = ["distance", "assign_components", "density_mode_weights", "toy_metrics"]

SLICED_PROJECTIONS = 256


def distance(a: np.ndarray, b: np.ndarray, *, key: jax.Array | None = None) -> float:
    """W1 (1-D data, exact) or sliced W1 over `SLICED_PROJECTIONS` directions drawn from ``key`` (default
    PRNGKey(0), so the same inputs give the same value), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected points (n, d) and (m, d), got shapes {a.shape} and {b.shape}")
    with jax.enable_x64(True):
        if a.shape[1] == 1:
            return float(metrics.wasserstein_1d(a[:, 0], b[:, 0]))
        key = jax.random.PRNGKey(0) if key is None else key
        return float(metrics.sliced_wasserstein(a, b, key=key, num_projections=SLICED_PROJECTIONS))


def assign_components(x: np.ndarray, mixture) -> np.ndarray:
    """The most likely component of each point: argmax_k w_k N(x; mu_k, diag(std_k^2)), shape (N,)."""
    w, mu, sd = (np.asarray(v, np.float64) for v in (mixture.weights, mixture.means, mixture.stds))
    x = np.asarray(x, np.float64)[:, None, :]
    logp = np.log(w) - np.sum(np.log(sd) + 0.5 * ((x - mu) / sd) ** 2, axis=-1)
    return np.argmax(logp, axis=1)


def density_mode_weights(x: np.ndarray, mixture) -> np.ndarray:
    """Fraction of the points assigned to each component k by `assign_components` (weighted density)."""
    return np.bincount(assign_components(x, mixture), minlength=len(mixture.weights)) / len(x)


def toy_metrics(samples: np.ndarray, heldout: np.ndarray, baseline: np.ndarray, *, mixture=None,
                labels: np.ndarray | None = None) -> dict[str, Any]:  # fmt: skip
    """Distances of samples to held-out data, beside the same distance for fresh data (the baseline).

    D = W1 for 1-D data, the sliced W1 for 2-D (`distance`). ``distance_ratio`` = D(samples, heldout) /
    D(baseline, heldout): about 1 for a perfect model with as many samples as baseline points. For a
    mixture, the `density_mode_weights` of samples and of the baseline beside the true weights; with
    ``labels`` (the component each sample was drawn for) ``label_accuracy``: how often it is the most
    likely component.
    """
    name = "w1" if samples.shape[1] == 1 else "sliced_w1"
    d_model, d_base = distance(samples, heldout), distance(baseline, heldout)
    out: dict[str, Any] = {
        "metric": name,
        f"{name}_samples_vs_heldout": d_model,
        f"{name}_data_vs_heldout": d_base,
        "distance_ratio": d_model / max(d_base, 1e-12),
        "num_samples": int(len(samples)),
        "num_heldout": int(len(heldout)),
    }
    if mixture is not None:
        mw, tw = density_mode_weights(samples, mixture), np.asarray(mixture.weights, np.float64)
        out["density_mode_weights"] = mw.tolist()
        out["true_mode_weights"] = tw.tolist()
        out["density_mode_weights_data"] = density_mode_weights(baseline, mixture).tolist()
        out["mode_weight_max_abs_error"] = float(np.max(np.abs(mw - tw)))
        if labels is not None:
            out["label_accuracy"] = float(np.mean(assign_components(samples, mixture) == np.asarray(labels)))
    return out
