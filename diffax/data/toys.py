"""Toy data sets in numpy: low-dimensional point clouds for diffusion experiments.

Every sampler is a pure function of ``(n, rng)``; `toy(name, n, seed=s)` draws with
``np.random.default_rng(s)``, so the same (name, n, seed) gives the same array, bitwise.

The Gaussian-mixture toys are built from `diffax.oracles.GaussianMixture` objects (`toy_mixture`),
so a model trained on them can be checked against the exact score/eps/posterior of the same mixture.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TOY_DATASETS", "toy", "toy_mixture", "toy_dim", "toy_num_classes"]

# name -> (dimension, number of classes or None)
_TOY_INFO: dict[str, tuple[int, int | None]] = {
    "gmm1d": (1, 2),
    "gmm2d": (2, 3),
    "gmm2d_grid": (2, 25),
    "gmm2d_ring": (2, 8),
    "swiss_roll": (2, None),
    "two_moons": (2, 2),
    "checkerboard": (2, None),
}
TOY_DATASETS: tuple[str, ...] = tuple(_TOY_INFO)

# Noise levels of the curve-shaped toys (standard deviation of the isotropic Gaussian jitter).
SWISS_ROLL_NOISE = 0.05
TWO_MOONS_NOISE = 0.05


def _check_toy_name(name: str) -> None:
    if name not in _TOY_INFO:
        raise ValueError(f"unknown toy data set {name!r}; allowed: {TOY_DATASETS}")


def toy_dim(name: str) -> int:
    """The dimension D of toy data set ``name``."""
    _check_toy_name(name)
    return _TOY_INFO[name][0]


def toy_num_classes(name: str) -> int | None:
    """The number of labels of toy data set ``name`` (None when it has no labels)."""
    _check_toy_name(name)
    return _TOY_INFO[name][1]


def toy_mixture(name: str):
    """The `diffax.oracles.GaussianMixture` behind a mixture toy (None for the other toys).

    - ``gmm1d``: the seed experiment's 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2) (`oracles.seed_mixture_1d`).
    - ``gmm2d``: `oracles.anisotropic_mixture_2d` (3 unequal, anisotropic components).
    - ``gmm2d_grid``: 25 equal components at {-2,-1,0,1,2}^2, std 0.05.
    - ``gmm2d_ring``: 8 equal components on the circle of radius 2 (angles 2 pi k / 8), std 0.1.
    Bind a schedule with ``.with_schedule(s)`` to get the exact noised score/eps of the data.
    """
    _check_toy_name(name)
    from diffax import oracles  # jax is imported only when a mixture is asked for

    if name == "gmm1d":
        return oracles.seed_mixture_1d()
    if name == "gmm2d":
        return oracles.anisotropic_mixture_2d()
    if name == "gmm2d_grid":
        g = np.arange(-2.0, 3.0)
        means = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        return oracles.GaussianMixture(np.ones(25), means, np.full(25, 0.05))
    if name == "gmm2d_ring":
        ang = 2 * math.pi * np.arange(8) / 8
        means = 2.0 * np.stack([np.cos(ang), np.sin(ang)], -1)
        return oracles.GaussianMixture(np.ones(8), means, np.full(8, 0.1))
    return None


def _sample_mixture(name: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """x = mu_y + std_y * z with y ~ Categorical(w), z ~ N(0, I) (ancestral sampling), float64."""
    mix = toy_mixture(name)
    w = np.asarray(mix.weights, np.float64)
    means = np.asarray(mix.means, np.float64)
    stds = np.asarray(mix.stds, np.float64)
    labels = rng.choice(len(w), size=n, p=w / w.sum())
    x = means[labels] + stds[labels] * rng.standard_normal((n, means.shape[1]))
    return x, labels


def _swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    """2-D Swiss roll: t ~ U(1.5 pi, 4.5 pi), x = t (cos t, sin t) / 5 + 0.05 z (radius 0.94..2.83).

    The 2-D slice of sklearn's ``make_swiss_roll`` (Marsland 2009), scaled by 1/5 to unit-order spread.
    """
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], -1) / 5.0
    return x + SWISS_ROLL_NOISE * rng.standard_normal((n, 2))


def _two_moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles (sklearn's ``make_moons`` geometry), centred, + 0.05 z.

    y ~ Bernoulli(1/2), theta ~ U(0, pi); y = 0: (cos theta, sin theta); y = 1: (1 - cos theta,
    1/2 - sin theta); then shifted by -(1/2, 1/4) so the mean is about 0.
    """
    labels = rng.integers(0, 2, n)
    theta = math.pi * rng.random(n)
    outer = np.stack([np.cos(theta), np.sin(theta)], -1)
    inner = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], -1)
    x = np.where(labels[:, None] == 0, outer, inner) - np.array([0.5, 0.25])
    return x + TWO_MOONS_NOISE * rng.standard_normal((n, 2)), labels


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 unit cells of [-2, 2)^2 where floor(x_1) + floor(x_2) is even.

    The FFJORD checkerboard (Grathwohl et al. 2019, toy data), without its final factor 2.
    """
    x1 = 4.0 * rng.random(n) - 2.0
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.mod(np.floor(x1), 2)
    return np.stack([x1, x2], -1)


def toy(name: str, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw ``n`` points of toy data set ``name`` with ``np.random.default_rng(seed)``.

    Returns ``(x, labels)``: x float32 (n, D); labels int32 (n,) (the mixture component, or the moon),
    or None for unlabelled sets. Names (`TOY_DATASETS`): ``gmm1d`` (D=1, the seed mixture
    0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2)), ``gmm2d``, ``gmm2d_grid``, ``gmm2d_ring`` (see `toy_mixture`),
    ``swiss_roll``, ``two_moons``, ``checkerboard`` (see their samplers' docstrings).
    """
    _check_toy_name(name)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"toy: n must be an int >= 1, got {n!r}")
    rng = np.random.default_rng(_check_seed(seed))
    labels = None
    if name.startswith("gmm"):  # a Gaussian mixture: `toy_mixture(name)` is its exact oracle
        x, labels = _sample_mixture(name, int(n), rng)
    elif name == "swiss_roll":
        x = _swiss_roll(int(n), rng)
    elif name == "two_moons":
        x, labels = _two_moons(int(n), rng)
    else:  # checkerboard
        x = _checkerboard(int(n), rng)
    return x.astype(np.float32), None if labels is None else labels.astype(np.int32)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)
