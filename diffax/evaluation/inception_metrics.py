"""FID, Inception Score and KID with the FID Inception-v3, computed the way the papers compute them.

- **Inputs**: uint8 images (N, H, W, 3) or (N, H, W, 1) (grey repeated to RGB, as PIL's ``convert('RGB')``
  in pytorch-fid). Samples are quantised to uint8 first (`diffax.evaluation.images.to_uint8`), exactly as
  pytorch-fid sees them through saved PNGs; then x = u / 127.5 - 1, resized bilinearly to 299x299 inside
  `diffax.models.inception.InceptionV3` (pytorch-fid: ``F.interpolate(..., align_corners=False)``, 2x - 1).
- **Features**, `inception_outputs`: batches of the images, rows split over every device of every process
  (`diffax.device_mesh`), one jitted program. Per batch it returns the pool3 features (2048-d),
  the logits without the fc bias, and the batch's centred moments (mean, scatter sum (x - mean)(x - mean)^T,
  on the devices in float32 at full matmul precision), merged on the host in float64 by Chan's rule
  (`metrics.stats_merge`). Convolutions and matmuls run at 'highest' precision (no TF32), so FID does not
  depend on the accelerator's fast path.
- **FID** (Heusel et al. 2017, eq. 6): `metrics.frechet_distance` of (mu, Sigma) of pool3 on the samples and
  on the reference (the training split, `reference_stats`; or a pytorch-fid ``.npz`` with ``mu``/``sigma``);
  for N <= 2048 samples the same number from their features (`frechet_distance_from_features`).
  Sigma has the 1/(N-1) normalisation of ``np.cov`` as in pytorch-fid and the TF reference code.
- **Inception Score** (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) over ``IS_NUM_SPLITS`` = 10
  equal splits, mean and std (`metrics.inception_score`). p(y|x) = softmax(pool3 W) over the 1008 classes
  *without* the fc bias, as the original code (improved-gan's ``inception_score.py`` multiplies pool_3 by
  the weights of ``softmax/logits/MatMul``; torch-fidelity's ``logits_unbiased``).
- **KID** (Binkowski et al. 2018): unbiased MMD^2 of pool3 with the cubic polynomial kernel
  k(a, b) = (a.b / 2048 + 1)^3, mean and std over ``KID_NUM_SUBSETS`` = 100 random subsets of
  ``KID_SUBSET_SIZE`` = 1000 rows of each set (fewer if a set is smaller; `metrics.kernel_inception_distance`).

Reference statistics are files: `save_reference` writes ``mu``, ``sigma`` (pytorch-fid's names, so its
``.npz`` files load here and ours load there), ``num_images`` and, for KID, ``features`` (pool3 of every
reference image); `load_reference` reads either kind (a file without ``features`` gives FID only).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from diffax._util import npz_bytes, write_atomic
from diffax.evaluation import metrics
from diffax.evaluation.batching import pad_to
from diffax.device_mesh import gather_rows, global_batch_size, put_rows, replicate, replicated, row_sharding
from diffax.models.inception import POOL3_DIM, InceptionV3, load_fid_weights

__all__ = ["IS_NUM_SPLITS", "KID_NUM_SUBSETS", "KID_SUBSET_SIZE", "InceptionOutputs", "Reference", "file_sha256",
           "load_inception", "inception_outputs", "reference_stats", "save_reference", "load_reference",
           "frechet_distance_from_features", "sample_metrics"]  # fmt: skip

IS_NUM_SPLITS = 10  # Salimans et al. 2016: 50k samples in 10 splits
KID_NUM_SUBSETS = 100
KID_SUBSET_SIZE = 1000  # Binkowski et al. 2018


class InceptionOutputs(NamedTuple):
    """What `inception_outputs` computes for N images."""

    stats: dict  # running moments of pool3 (metrics.stats_*: n, mean (2048,), m2 (2048, 2048)), float64
    pool3: np.ndarray | None  # (N, 2048) float32, None unless keep_features
    logits: np.ndarray | None  # (N, 1008) float32 logits without the fc bias (for IS), None unless keep_features

    def mu_sigma(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (2048,), Sigma (2048, 2048)) with the 1/(N-1) normalisation."""
        return metrics.stats_finalize(self.stats)


class Reference(NamedTuple):
    """FID / KID reference: pool3 statistics of real images (and their features, for KID)."""

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int | None  # None when a user's file does not say
    features: np.ndarray | None  # (N_ref, 2048) float32, or None (KID not available)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (identifies the Inception weights in eval.json and cache names)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_inception(path: str | os.PathLike, *, model: InceptionV3 | None = None) -> tuple[InceptionV3, dict]:
    """(model, variables) of the FID Inception-v3 from pytorch-fid's weights at ``path`` (.npz, or .pth with
    torch; `load_fid_weights`). ``model`` defaults to ``InceptionV3()`` (299x299 input, as FID).

    ``path`` is the setting eval.inception_weights: a missing, unreadable (garbage, truncated) or wrong file
    raises FileNotFoundError / ValueError ``eval.inception_weights=PATH: what is wrong`` (one line)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"eval.inception_weights={path}: no such file ({os.path.abspath(path)}); expected "
                                "pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or that state dict saved as "
                                ".npz")  # fmt: skip
    try:
        variables = load_fid_weights(path)
    except ValueError as e:  # its message starts with the path
        raise ValueError(f"eval.inception_weights={e}") from e
    return model or InceptionV3(), variables


def _as_rgb_uint8(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"Inception metrics take uint8 images (quantise samples with images.to_uint8 first), "
                         f"got dtype {images.dtype}")  # fmt: skip
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 3) or (N, H, W, 1), got shape {images.shape}")
    return images


@functools.lru_cache(maxsize=8)
def _feature_step(model: InceptionV3, mesh: Mesh):
    """The jitted per-batch program: (variables, uint8 rows, row weights) -> (mean, scatter, pool3, logits)."""
    rows, rep = row_sharding(mesh), replicated(mesh)
    hi = jax.lax.Precision.HIGHEST

    def step(variables, u8, w):
        x = u8.astype(jnp.float32)
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        with jax.default_matmul_precision("highest"):
            pool3, _ = model.apply(variables, x / 127.5 - 1.0)
        logits = jnp.dot(pool3, variables["params"]["fc"]["kernel"], precision=hi)  # no bias (IS)
        n = jnp.sum(w)
        mean = jnp.dot(w, pool3, precision=hi) / n
        c = (pool3 - mean) * w[:, None]
        return mean, jnp.dot(c.T, c, precision=hi), pool3, logits

    return jax.jit(step, in_shardings=(rep, rows, rows), out_shardings=(rep, rep, rows, rows))


def inception_outputs(
    images: np.ndarray,
    model: InceptionV3,
    variables: Any,
    mesh: Mesh,
    *,
    batch_size: int = 200,
    keep_features: bool = True,
    progress: bool = False,
    desc: str = "inception",
) -> InceptionOutputs:
    """pool3 moments (and, with ``keep_features``, pool3 and bias-free logits) of uint8 ``images`` (N, H, W, C).

    Global batches of ``batch_size`` images (rounded up to a multiple of the device count; the last one
    zero-padded, its padding rows weighted 0 in the moments and trimmed from the features) are split over
    the mesh's devices across all processes; every process gets the same result. The moments of batch b
    (mean_b and M2_b = sum (x - mean_b)(x - mean_b)^T over its m_b real rows, float32 on the devices) are
    merged in float64 on the host: M2 = M2_a + M2_b + delta delta^T n_a n_b / n (Chan et al. 1979).
    """
    images = _as_rgb_uint8(images)
    n = len(images)
    b = global_batch_size(batch_size, n, mesh)
    step = _feature_step(model, mesh)
    variables = replicate(variables, mesh)
    stats = metrics.stats_init(POOL3_DIM)
    pool3, logits = [], []
    with tqdm(total=n, desc=desc, unit="image", disable=not progress, mininterval=5.0, dynamic_ncols=True) as bar:
        for lo in range(0, n, b):
            m = min(b, n - lo)
            w = put_rows(pad_to(np.ones((m,), np.float32), b), mesh)
            mean, m2, p, lg = step(variables, put_rows(pad_to(images[lo : lo + m], b), mesh), w)
            batch = dict(n=m, mean=np.asarray(mean, np.float64), m2=np.asarray(m2, np.float64))
            stats = metrics.stats_merge(stats, batch)
            if keep_features:
                pool3.append(gather_rows(p)[:m])
                logits.append(gather_rows(lg)[:m])
            bar.update(m)
    if not keep_features:
        return InceptionOutputs(stats, None, None)
    return InceptionOutputs(stats, np.concatenate(pool3), np.concatenate(logits))


def reference_stats(images: np.ndarray, model: InceptionV3, variables: Any, mesh: Mesh, *, batch_size: int = 200,
                    progress: bool = False) -> Reference:  # fmt: skip
    """The `Reference` (mu, Sigma, N, pool3 features) of real uint8 images (e.g. the training split)."""
    out = inception_outputs(images, model, variables, mesh, batch_size=batch_size, progress=progress,
                            desc="inception (reference)")  # fmt: skip
    mu, sigma = out.mu_sigma()
    return Reference(mu, sigma, int(out.stats["n"]), out.pool3)


def save_reference(path: str | os.PathLike, reference: Reference, **meta: str) -> None:
    """Writes ``mu``, ``sigma`` (float64), ``num_images``, ``features`` (if any) and string ``meta`` entries
    to ``path`` (.npz), atomically (`diffax._util.write_atomic`)."""
    path = os.fspath(path)
    arrays: dict[str, Any] = dict(mu=reference.mu, sigma=reference.sigma)
    if reference.num_images is not None:
        arrays["num_images"] = np.asarray(reference.num_images)
    if reference.features is not None:
        arrays["features"] = np.asarray(reference.features, np.float32)
    arrays.update({k: np.asarray(str(v)) for k, v in meta.items()})
    write_atomic(path, npz_bytes(**arrays))


def load_reference(path: str | os.PathLike) -> Reference:
    """A `Reference` from an .npz with ``mu`` (2048,) and ``sigma`` (2048, 2048) (pytorch-fid's
    ``--save-stats`` format, or `save_reference`'s, which adds ``num_images`` and ``features``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FID reference statistics: no file {os.path.abspath(path)!r}")
    try:
        with np.load(path) as f:
            files = set(f.files)
            if not {"mu", "sigma"} <= files:
                raise ValueError(f"{path}: FID reference statistics need keys 'mu' and 'sigma' (pytorch-fid's "
                                 f".npz format), found {sorted(files)}")  # fmt: skip
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
            num = int(f["num_images"]) if "num_images" in files else None
            feats = np.asarray(f["features"], np.float32) if "features" in files else None
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: unreadable FID reference statistics ({type(e).__name__}: {e})") from e
    if mu.shape != (POOL3_DIM,) or sigma.shape != (POOL3_DIM, POOL3_DIM):
        raise ValueError(f"{path}: mu must be ({POOL3_DIM},) and sigma ({POOL3_DIM}, {POOL3_DIM}) (pool3 of the "
                         f"FID Inception), got {mu.shape} and {sigma.shape}")  # fmt: skip
    if feats is not None and (feats.ndim != 2 or feats.shape[1] != POOL3_DIM):
        raise ValueError(f"{path}: features must be (N, {POOL3_DIM}), got {feats.shape}")
    return Reference(mu, sigma, num, feats)


def frechet_distance_from_features(x: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """FID of the Gaussian of the rows of ``x`` (N, D) (mean, covariance with 1/(N-1)) against N(mu_ref, sigma_ref).

    The same number as ``metrics.frechet_distance(mean(x), cov(x), mu_ref, sigma_ref)``, computed for N <= D
    without a D x D eigendecomposition: with A = (x - mean(x)) / sqrt(N - 1), Sigma_x = A^T A, and the non-zero
    eigenvalues of Sigma_x Sigma_ref = A^T (A Sigma_ref) are those of the N x N PSD matrix A Sigma_ref A^T, so
    tr (Sigma_x Sigma_ref)^{1/2} = sum_i sqrt(lambda_i(A Sigma_ref A^T)) (eigenvalues clipped at 0), and
    tr Sigma_x = ||A||_F^2. (At D = 2048 the two eigendecompositions of the general formula take seconds.)
    """
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    if x.ndim != 2 or n < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {x.shape}")
    mu = x.mean(axis=0)
    a = (x - mu) / np.sqrt(n - 1)
    m = a @ np.asarray(sigma_ref, np.float64) @ a.T
    tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0.0, None))))
    diff = mu - np.asarray(mu_ref, np.float64)
    return max(float(diff @ diff + np.sum(a * a) + np.trace(sigma_ref) - 2.0 * tr_covmean), 0.0)


def sample_metrics(
    samples: np.ndarray,
    reference: Reference,
    model: InceptionV3,
    variables: Any,
    mesh: Mesh,
    *,
    batch_size: int = 200,
    kid_seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """FID, IS and KID of uint8 ``samples`` against ``reference``.

    Returns dict(fid, inception_score, inception_score_std (over IS_NUM_SPLITS splits, fewer if N < 10),
    kid, kid_std (over KID_NUM_SUBSETS subsets of min(KID_SUBSET_SIZE, N, N_ref) rows; None without
    reference features), num_samples). FID and KID are biased upwards / noisy at small N: compare values
    at equal N (the papers use N = 50,000).
    """
    out = inception_outputs(samples, model, variables, mesh, batch_size=batch_size, progress=progress,
                            desc="inception (samples)")  # fmt: skip
    n = int(out.stats["n"])
    if n <= POOL3_DIM:  # Sigma of the samples has rank < N: the N x N form of the same number
        fid = frechet_distance_from_features(out.pool3, reference.mu, reference.sigma)
    else:
        fid = metrics.frechet_distance(*out.mu_sigma(), reference.mu, reference.sigma)
    is_mean, is_std = metrics.inception_score(out.logits, from_logits=True, num_splits=min(IS_NUM_SPLITS, n))
    result: dict[str, Any] = {
        "fid": fid,
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "kid": None,
        "kid_std": None,
        "num_samples": n,
    }
    if reference.features is not None:
        result["kid"], result["kid_std"] = metrics.kernel_inception_distance(
            out.pool3, reference.features, num_subsets=KID_NUM_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=kid_seed
        )
    return result
