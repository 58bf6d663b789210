"""Classifier-feature metrics ("classifier FID"): a small MNIST-like `Classifier` as the feature network.

For 28x28 grey-scale data an ImageNet Inception network is a poor judge, so (as in many diffusion and
GAN papers on MNIST) the Fréchet distance is taken between Gaussians fitted to the *penultimate*
features of a classifier trained on the data set itself:

    FID_clf = ||mu_s - mu_r||^2 + tr(S_s + S_r - 2 (S_s S_r)^{1/2})     (Heusel et al. 2017, eq. 6)

where (mu, S) are the mean and covariance of ``Classifier(..., return_features=True)`` features of
the samples (s) and of the reference set (r). The same features give a KID (Binkowski et al. 2018)
and the classifier's logits the accuracy of class-conditional samples (how often the classifier
agrees with the label the sampler was asked for).

    model, params = load_classifier(f"{workdir}/classifier.msgpack")
    ref = load_feature_stats(f"{workdir}/test_feature_stats.npz")      # (mu, sigma)
    fid = feature_fid(samples, ref, model=model, params=params, batch_size=500)

Everything runs on the host in batches of a fixed size (the last batch is zero-padded, so one
compilation serves any number of samples) through one jitted entry point, `apply_features`; the
statistics are accumulated in float64 with `diffax.evaluation.metrics.stats_update` (Chan et al.'s pairwise
update), so they do not depend on the batch size beyond float32 rounding of the features.
Files: `save_classifier` writes ONE msgpack file holding the model's hyperparameters (JSON) and its
params (`flax.serialization`), which `load_classifier` reads back bitwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from diffax._util import check_int, npz_bytes, write_atomic
from diffax.evaluation import metrics
from diffax.evaluation.batching import padded_batches
from diffax.models import Classifier

__all__ = [
    "save_classifier",
    "load_classifier",
    "apply_features",
    "classifier_outputs",
    "feature_stats",
    "save_feature_stats",
    "load_feature_stats",
    "feature_fid",
    "feature_kid",
    "classifier_accuracy",
]

_FORMAT = "diffax.classifier/1"
_NOT_CONFIG = ("parent", "name")


# --------------------------------------------------------------------------- save / load


def _model_config(model: Classifier) -> dict[str, Any]:
    """The dataclass fields of ``model`` as JSON-able values (dtype by name, tuples as lists)."""
    cfg = {}
    for f in dataclasses.fields(model):
        if f.name in _NOT_CONFIG:
            continue
        v = getattr(model, f.name)
        if f.name == "dtype":
            v = np.dtype(v).name
        elif isinstance(v, tuple):
            v = list(v)
        cfg[f.name] = v
    return cfg


def _model_from_config(cfg: Mapping[str, Any]) -> Classifier:
    cfg = dict(cfg)
    if "dtype" in cfg:
        cfg["dtype"] = getattr(jnp, cfg["dtype"])
    if "ch_mult" in cfg:
        cfg["ch_mult"] = tuple(cfg["ch_mult"])
    return Classifier(**cfg)


def save_classifier(path: str | os.PathLike, model: Classifier, params: Any) -> None:
    """Writes ``model``'s hyperparameters and ``params`` to ONE msgpack file at ``path`` (atomically).

    Content: ``{'format': 'diffax.classifier/1', 'config': <JSON of the Classifier fields>,
    'params': <params as numpy arrays>}`` serialized by ``flax.serialization.msgpack_serialize``
    (raw array bytes, so `load_classifier` returns the params bitwise). Written atomically
    (`diffax._util.write_atomic`), so a crash never leaves a torn file.
    """
    if not isinstance(model, Classifier):
        raise ValueError(f"save_classifier expects a diffax.models.Classifier, got {type(model).__name__}")
    path = os.fspath(path)
    payload = {
        "format": _FORMAT,
        "config": json.dumps(_model_config(model), sort_keys=True),
        "params": jax.tree.map(np.asarray, jax.device_get(params)),
    }
    data = flax.serialization.msgpack_serialize(payload)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, data)


def load_classifier(path: str | os.PathLike) -> tuple[Classifier, Any]:
    """Reads a `save_classifier` file: ``(model, params)``, params a nested dict of numpy arrays.

    Raises ``ValueError`` if the file is not in the 'diffax.classifier/1' format.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        payload = flax.serialization.msgpack_restore(f.read())
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path!r} is not a saved classifier: format {fmt!r}, allowed {_FORMAT!r}")
    return _model_from_config(json.loads(payload["config"])), payload["params"]


# --------------------------------------------------------------------------- features


@functools.partial(jax.jit, static_argnums=0)
def apply_features(model: Classifier, params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The jit boundary: ``model.apply(params, x, return_features=True)`` -> (logits, features).

    Jitted with ``model`` static: one compilation per (model, batch shape), which is why the callers
    below feed it batches of one fixed size.
    """
    return model.apply(params, x, train=False, return_features=True)


def _check_model(model: Classifier) -> None:
    if not isinstance(model, Classifier):
        raise ValueError(f"model must be a diffax.models.Classifier, got {type(model).__name__}")
    if model.time_conditional:
        raise ValueError("feature metrics need a clean-data classifier: got time_conditional=True")


def _batches(samples, batch_size: int):
    """Yields (zero-padded batch of exactly ``batch_size`` rows, number of real rows)."""
    x = np.asarray(samples)
    if x.ndim not in (2, 4) or x.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty (N, H, W, C) or (N, D) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"samples must be floating point (images in [-1, 1]), got dtype {x.dtype}")
    for _, n, (chunk,) in padded_batches(batch_size, x):
        yield chunk, n


def classifier_outputs(
    samples, *, model: Classifier, params: Any, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) and penultimate features (N, F) of ``samples`` (N, H, W, C) in [-1, 1], as numpy.

    Evaluated in batches of exactly ``batch_size`` (the last one zero-padded and trimmed), so one
    compilation of ``model.apply(params, x, return_features=True)`` serves any N.
    """
    _check_model(model)
    batch_size = check_int("batch_size", batch_size, 1)
    logits, feats = [], []
    for chunk, n in _batches(samples, batch_size):
        lg, ft = jax.device_get(apply_features(model, params, jnp.asarray(chunk)))
        logits.append(lg[:n])
        feats.append(ft[:n])
    return np.concatenate(logits), np.concatenate(feats)


def feature_stats(samples, *, model: Classifier, params: Any, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(mu (F,), sigma (F, F)) of the penultimate features of ``samples``, float64, unbiased 1/(N-1).

    Accumulated batch by batch with `diffax.evaluation.metrics.stats_update` (Chan, Golub & LeVeque 1979), so
    only O(F^2) memory is kept however many samples there are.
    """
    _check_model(model)
    batch_size = check_int("batch_size", batch_size, 1)
    stats = None
    for chunk, n in _batches(samples, batch_size):
        _, ft = jax.device_get(apply_features(model, params, jnp.asarray(chunk)))
        if stats is None:
            stats = metrics.stats_init(int(ft.shape[1]))
        stats = metrics.stats_update(stats, ft[:n])
    return metrics.stats_finalize(stats)


def save_feature_stats(path: str | os.PathLike, mu, sigma, *, n: int, features=None) -> None:
    """Writes ``mu``, ``sigma`` (float64), ``n`` and optionally the raw ``features`` (for KID) to an .npz,
    atomically (`diffax._util.write_atomic`); as with ``np.savez``, ``.npz`` is appended to a path without it."""
    arrays = dict(mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), n=np.asarray(n, np.int64))
    if features is not None:
        arrays["features"] = np.asarray(features)
    path = os.fspath(path)
    write_atomic(path if path.endswith(".npz") else path + ".npz", npz_bytes(**arrays))


def load_feature_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads ``(mu, sigma)`` from an .npz with keys 'mu' and 'sigma' (as `save_feature_stats` writes)."""
    with np.load(path) as z:
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"{os.fspath(path)!r} must hold arrays 'mu' and 'sigma', has {sorted(z.files)}")
        return np.array(z["mu"]), np.array(z["sigma"])


# --------------------------------------------------------------------------- metrics


def feature_fid(samples, ref_stats, *, model: Classifier, params: Any, batch_size: int = 500) -> float:
    """Classifier FID: Fréchet distance between the feature Gaussians of ``samples`` and ``ref_stats``.

    d^2 = ||mu_s - mu_r||^2 + tr(S_s + S_r - 2 (S_s S_r)^{1/2})  (Heusel et al. 2017, eq. 6; computed by
    `diffax.evaluation.metrics.frechet_distance`), with (mu_s, S_s) = `feature_stats` of the samples and
    ``ref_stats = (mu_r, S_r)`` (e.g. from `load_feature_stats`). Biased upwards for small N
    (the covariance estimate's noise); compare values only at equal N.
    """
    if not isinstance(ref_stats, (tuple, list)) or len(ref_stats) != 2:
        raise ValueError(f"ref_stats must be a pair (mu, sigma), got {type(ref_stats).__name__}")
    mu_r, sigma_r = ref_stats
    mu_s, sigma_s = feature_stats(samples, model=model, params=params, batch_size=batch_size)
    if np.shape(mu_r) != mu_s.shape:
        raise ValueError(f"ref_stats has feature dim {np.shape(mu_r)}, the classifier gives {mu_s.shape}")
    return metrics.frechet_distance(mu_s, sigma_s, mu_r, sigma_r)


def feature_kid(
    samples,
    ref_features,
    *,
    model: Classifier,
    params: Any,
    batch_size: int = 500,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Classifier KID: (mean, std) over subsets of the unbiased cubic-kernel MMD^2 between features.

    MMD^2_u with k(a, b) = (a.b / F + 1)^3 between the features of ``samples`` and ``ref_features``
    (N_r, F) (Binkowski et al. 2018; `diffax.evaluation.metrics.kernel_inception_distance`). Unbiased: its
    expectation is 0 when samples and reference come from one distribution.
    """
    _, feats = classifier_outputs(samples, model=model, params=params, batch_size=batch_size)
    return metrics.kernel_inception_distance(
        feats, ref_features, num_subsets=num_subsets, subset_size=subset_size, seed=seed
    )


def classifier_accuracy(samples, labels, *, model: Classifier, params: Any, batch_size: int = 500) -> float:
    """Fraction of ``samples`` the classifier assigns to ``labels``: mean_i [argmax_k logits_ik == y_i].

    For class-conditional samples (``labels`` the classes they were drawn for) this measures how
    often a sample is recognisably of its class; on real test data it is the test accuracy.
    """
    y = np.asarray(labels)
    n = np.shape(samples)[0] if np.ndim(samples) else 0
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the samples, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    logits, _ = classifier_outputs(samples, model=model, params=params, batch_size=batch_size)
    return float(np.mean(np.argmax(logits, axis=1) == y))
