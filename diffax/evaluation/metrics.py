"""Sample-quality metrics: FID / KID statistics, Inception Score, and toy-data distances.

Two groups:
  * Feature statistics (host side, NumPy float64): `frechet_distance` (FID; Heusel et al. 2017),
    `kernel_inception_distance` (KID; Binkowski et al. 2018), streaming mean/covariance
    (`stats_init`, `stats_update`, `stats_merge`, `stats_finalize`), `inception_score` (Salimans et al. 2016).
    They take features/logits produced by any network; no network is bundled here.
  * Toy-data distances (JAX, jittable, work on numpy input too): `wasserstein_1d`,
    `sliced_wasserstein` (Rabin et al. 2011; Bonneel et al. 2015), `mode_weights`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

__all__ = [
    "frechet_distance",
    "kernel_inception_distance",
    "polynomial_mmd2_unbiased",
    "stats_init",
    "stats_update",
    "stats_merge",
    "stats_finalize",
    "inception_score",
    "wasserstein_1d",
    "sliced_wasserstein",
    "mode_weights",
]


# --------------------------------------------------------------------------- FID


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root by eigh, eigenvalues clipped at 0."""
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2); FID on Inception features.

    d^2 = ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})   (Dowson & Landau 1982;
    Heusel et al. 2017). The trace term uses tr (sigma1 sigma2)^{1/2} = tr (S sigma2 S)^{1/2} with
    S = sigma1^{1/2}: both square roots of symmetric PSD matrices by `eigh` with eigenvalues clipped
    at 0, so it is real, finite and the result >= 0 (up to rounding) even for singular covariances,
    without scipy.linalg.sqrtm's complex parts or eps-regularisation. NumPy float64; returns a float.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected mu (D,) and sigma (D, D) for both; got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    root1 = _psd_sqrt(s1)
    tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0.0, None))))
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


# --------------------------------------------------------------------------- streaming statistics


def stats_init(dim: int) -> dict:
    """Empty running statistics of D-dim features: dict(n=0, mean (D,), m2 (D, D)) in float64."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    return dict(n=0, mean=np.zeros(dim), m2=np.zeros((dim, dim)))


def stats_merge(a: dict, b: dict) -> dict:
    """Combine two running statistics (Chan, Golub & LeVeque 1979, pairwise update).

    n = n_a + n_b,  mean = mean_a + delta n_b / n,  M2 = M2_a + M2_b + delta delta^T n_a n_b / n,
    delta = mean_b - mean_a; M2 is the scatter matrix sum (x - mean)(x - mean)^T.
    """
    n = a["n"] + b["n"]
    if n == 0:
        return dict(n=0, mean=a["mean"].copy(), m2=a["m2"].copy())
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * (b["n"] / n)
    m2 = a["m2"] + b["m2"] + np.outer(delta, delta) * (a["n"] * b["n"] / n)
    return dict(n=n, mean=mean, m2=m2)


def stats_update(stats: dict, feats) -> dict:
    """Add a batch of features (N, D) to the running statistics (batch moments merged by Chan's rule)."""
    x = np.asarray(feats, np.float64)
    if x.ndim != 2 or x.shape[1] != stats["mean"].shape[0]:
        raise ValueError(f"feats must have shape (N, {stats['mean'].shape[0]}), got {x.shape}")
    if x.shape[0] == 0:
        return stats
    mean = x.mean(axis=0)
    c = x - mean
    return stats_merge(stats, dict(n=x.shape[0], mean=mean, m2=c.T @ c))


def stats_finalize(stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) with the unbiased 1/(n-1) normalisation (as np.cov, and FID code)."""
    if stats["n"] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got n={stats['n']}")
    return stats["mean"].copy(), stats["m2"] / (stats["n"] - 1)


# --------------------------------------------------------------------------- KID


def polynomial_mmd2_unbiased(x, y) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018).

    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 mean_{i,j} k(x_i, y_j).
    NumPy float64.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = x.shape[0], y.shape[0]
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def kernel_inception_distance(
    feats1, feats2, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and std over random subsets of the unbiased polynomial-kernel MMD^2 (Binkowski et al. 2018).

    Each of `num_subsets` rounds draws min(subset_size, N1, N2) rows without replacement from each
    set (NumPy generator seeded by `seed`) and evaluates `polynomial_mmd2_unbiased`. The estimator is
    unbiased: its expectation is 0 when both sets come from one distribution (it can be negative).
    Returns (mean, std) over subsets, in float64.
    """
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N1, D) and (N2, D), got {f1.shape} and {f2.shape}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2 or num_subsets < 1:
        raise ValueError(f"need subsets of >= 2 rows and num_subsets >= 1, got {m} rows, {num_subsets}")
    rng = np.random.default_rng(seed)
    vals = np.array(
        [
            polynomial_mmd2_unbiased(
                f1[rng.choice(f1.shape[0], m, replace=False)], f2[rng.choice(f2.shape[0], m, replace=False)]
            )
            for _ in range(num_subsets)
        ]
    )
    return float(vals.mean()), float(vals.std())


# --------------------------------------------------------------------------- Inception score


def inception_score(logits_or_probs, *, from_logits: bool = False, num_splits: int = 1) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))), p(y) = E_x p(y|x)  (Salimans et al. 2016).

    `logits_or_probs` is (N, K): class probabilities (rows summing to 1), or logits with
    from_logits=True. Computed on `num_splits` equal chunks (10 in the original); returns
    (mean, std) over splits. 1 <= IS <= K: 1 for identical predictions, K for confident
    predictions spread evenly over K classes.
    """
    a = np.asarray(logits_or_probs, np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected (N, K) logits or probabilities, got shape {a.shape}")
    if from_logits:
        logp = a - a.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    else:
        if np.any(a < 0) or not np.allclose(a.sum(axis=1), 1.0, atol=1e-5):
            raise ValueError("probabilities must be >= 0 with rows summing to 1; pass from_logits=True for logits")
        with np.errstate(divide="ignore"):
            logp = np.log(a)
    if not 1 <= num_splits <= a.shape[0]:
        raise ValueError(f"num_splits must be in [1, {a.shape[0]}], got {num_splits}")
    scores = []
    for chunk in np.array_split(logp, num_splits):  # (a class no sample uses has p = 0 everywhere)
        p = np.exp(chunk)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_marginal = np.log(p.mean(axis=0))
            kl = np.sum(np.where(p > 0, p * (chunk - log_marginal), 0.0), axis=1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------- toy-data distances (JAX)


def wasserstein_1d(x: Array, y: Array, *, p: float = 1.0) -> Array:
    """p-Wasserstein distance between the empirical distributions of 1-D samples x (n,) and y (m,).

    W_p^p = int_0^1 |F^{-1}(u) - G^{-1}(u)|^p du over the quantile functions (Villani 2009, thm 2.18):
    for n = m this is mean |sort(x) - sort(y)|^p; for n != m the integral is exact over the merged
    breakpoints {i/n} U {j/m}. Returns W_p (a scalar; jittable).
    """
    x, y = jnp.sort(jnp.ravel(jnp.asarray(x))), jnp.sort(jnp.ravel(jnp.asarray(y)))
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"need non-empty samples, got sizes {n} and {m}")
    if n == m:
        diff = jnp.abs(x - y)
        return jnp.mean(diff**p) ** (1.0 / p)
    dtype = jnp.result_type(x.dtype, y.dtype, jnp.float32)
    # Merged breakpoints v_1 <= ... <= v_{n+m}; on (v_{k-1}, v_k] the x-quantile is
    # x[# x-breakpoints among v_1..v_{k-1}] (same for y); empty intervals (ties) get weight 0.
    u = jnp.concatenate([jnp.arange(1, n + 1, dtype=dtype) / n, jnp.arange(1, m + 1, dtype=dtype) / m])
    is_x = jnp.concatenate([jnp.ones((n,), jnp.int32), jnp.zeros((m,), jnp.int32)])
    order = jnp.argsort(u, stable=True)
    u, is_x = u[order], is_x[order]
    du = jnp.diff(jnp.concatenate([jnp.zeros((1,), dtype), u]))
    before_x = jnp.cumsum(is_x) - is_x
    before_y = jnp.arange(n + m) - before_x
    qx = x[jnp.minimum(before_x, n - 1)]
    qy = y[jnp.minimum(before_y, m - 1)]
    return jnp.sum(du * jnp.abs(qx - qy) ** p) ** (1.0 / p)


def sliced_wasserstein(x: Array, y: Array, *, key: Array, num_projections: int = 64, p: float = 1.0) -> Array:
    """Sliced p-Wasserstein distance: SW_p = (E_theta W_p^p(theta.x, theta.y))^{1/p}, theta uniform on S^{d-1}.

    (Rabin et al. 2011; Bonneel et al. 2015.) Monte Carlo over `num_projections` directions
    theta = g / ||g||, g ~ N(0, I_d) drawn from `key` as ``jax.random.normal(key, (P, d))``; each
    1-D term is `wasserstein_1d`. x (n, d), y (m, d). Returns a scalar; jittable.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected x (n, d) and y (m, d), got {x.shape} and {y.shape}")
    g = jax.random.normal(key, (num_projections, x.shape[1]), dtype=jnp.result_type(x.dtype, jnp.float32))
    theta = g / jnp.linalg.norm(g, axis=1, keepdims=True)
    per = jax.vmap(lambda th: wasserstein_1d(x @ th, y @ th, p=p) ** p)(theta)
    return jnp.mean(per) ** (1.0 / p)


def mode_weights(samples: Array, means: Array, *, max_dist: float | None = None) -> Array:
    """Fraction of samples whose nearest mean (Euclidean) is each of the K means: shape (K,).

    With `max_dist`, samples farther than that from every mean count for no mode, so the
    weights sum to the fraction of "high-quality" samples (as in mode-coverage evaluations of
    GAN/diffusion toy mixtures). samples (N, D), means (K, D).
    """
    samples, means = jnp.asarray(samples), jnp.asarray(means)
    if samples.ndim != 2 or means.ndim != 2 or samples.shape[1] != means.shape[1]:
        raise ValueError(f"expected samples (N, D) and means (K, D), got {samples.shape} and {means.shape}")
    d2 = jnp.sum(jnp.square(samples[:, None, :] - means[None, :, :]), axis=-1)
    nearest = jnp.argmin(d2, axis=1)
    ok = jnp.ones(nearest.shape, bool) if max_dist is None else jnp.min(d2, axis=1) <= max_dist**2
    counts = jnp.zeros((means.shape[0],), samples.dtype).at[nearest].add(ok.astype(samples.dtype))
    return counts / samples.shape[0]
