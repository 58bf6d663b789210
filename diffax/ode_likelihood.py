"""Exact likelihoods of the probability-flow ODE, and their bits/dim on 8-bit data.

  ODE likelihood        `ode_log_likelihood` (instantaneous change of variables, exact or
                        Hutchinson trace, solved with `diffax.ode`), `standard_normal_logp` (its prior)
  bits/dim              `dequantize` (uint8 -> uniformly dequantized model space) and
                        `bits_per_dim` (nats of a continuous density -> bits/dim of 8-bit data)

The discrete-time counterpart, the variational bound, is `diffax.likelihood`.

Two bits/dim conventions. Both report -log2 P(x) / D for 8-bit data x in {0..255}^D (lower is
better) and both are upper bounds in expectation, so the numbers are comparable (as Song et al.
2021, Table 2, compare their ODE bits/dim with DDPM's bound), but they bound it differently:

  `likelihood.vlb_bpd`   the variational bound of the DISCRETE model: x scaled to the grid
                         2k/255 - 1 in [-1, 1], the last step a discretized Gaussian decoder that
                         assigns a probability to each of the 256 bins (Ho et al. 2020, eq. 13),
                         so the bound is already in bits of a discrete probability: no offset.
  `ode_likelihood.bits_per_dim`
                         a CONTINUOUS density log p_model(y) from `ode_log_likelihood` at the
                         uniformly dequantized y = 2 (x + u) / 256 - 1 (`dequantize`), converted by
                         bpd = -log p_model(y) / (D log 2) + 7, i.e. + 8 for the 256 bins of width
                         1/256 in [0, 1] and - 1 for the [0, 1] -> [-1, 1] scaling (Theis et al.
                         2016; score_sde's offset). E_u of it bounds -log2 P(x) / D of the
                         dequantized model (Jensen).

Note the two grids differ slightly: pixel k sits at 2k/255 - 1 for the decoder, while its
dequantization bin is [k/128 - 1, (k + 1)/128 - 1) (centre (2k + 1)/256 - 1); a model trained
on 2k/255 - 1 sees the dequantized data shrunk by 255/256 (score_sde accepts the same mismatch).

NFE (reported as ``nfe``): as in `diffax.ode`, where one evaluation is one model call plus its jvp(s).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffax import ode
from diffax._util import check_choice, check_int, sum_flat
from diffax.processes import Process

Array = jnp.ndarray

TRACES = ("hutchinson", "exact")
HUTCHINSON_DISTS = ("rademacher", "gaussian")

__all__ = [
    "ode_log_likelihood",
    "standard_normal_logp",
    "bits_per_dim",
    "dequantize",
    "TRACES",
    "HUTCHINSON_DISTS",
]


# --------------------------------------------------------------------------- likelihood


def standard_normal_logp(z: Array) -> Array:
    """log N(z; 0, I) summed over all but the batch axis: -D/2 log(2 pi) - |z|^2 / 2 (score_sde's prior)."""
    d = math.prod(z.shape[1:])
    return -0.5 * d * math.log(2 * math.pi) - 0.5 * sum_flat(z**2)


def ode_log_likelihood(
    score_fn: ode.ScoreFn,
    sde: Process,
    key: Array,
    x: Array,
    *,
    trace: str = "hutchinson",
    hutchinson_dist: str = "rademacher",
    t_eps: float | None = None,
    t_max: float | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "tsit5",
    time_variable: str = "rho",
    max_steps: int = 4096,
    prior_logp_fn: Callable[[Array], Array] | None = None,
) -> dict[str, Array]:
    """log p_{t_eps}(x) under the probability-flow ODE, by the instantaneous change of variables.

    d log p_tau(x(tau)) / dtau = -div f(x(tau), tau)  (Chen et al. 2018, Thm. 1; Song et al. 2021,
    eq. 39 / App. D.2), so integrating (x, z) with dz/dtau = div f from tau = t_eps (x(t_eps) = x)
    to T = t_max (default the process's) gives

        log p_{t_eps}(x) = log p_T(x(T)) + int_{t_eps}^T div f(x(tau), tau) dtau
                         = prior_logp + delta_logp,

    with f the drift of any process (`ode.drift`). This is the density of x_{t_eps} = alpha(t_eps) x_0 +
    sigma(t_eps) z, not of x_0 itself; t_eps (default max(1e-5, t_min)) -> 0 recovers the data density
    (score_sde's default 1e-5 makes the gap negligible for the VP). p_T is taken as the process's
    prior N(0, prior_std^2 I) (`Process.prior_logp`; N(0, I) for the VP, score_sde's convention, exact
    up to the O(abar(1)) prior mismatch) unless ``prior_logp_fn(z) -> (B,)`` is given.

    trace: 'exact' computes div f = tr(df/dx) with one jvp per input dimension (for low D; the
    examples of a batch must not interact); 'hutchinson' uses tr J = E[e^T J e] with ONE probe e per
    solve, drawn from ``key`` (Rademacher or Gaussian, Hutchinson 1989; Grathwohl et al. 2019), so
    the estimate of log p is unbiased. The integral is invariant under the change of time
    variable (``time_variable``, see `ode.ode_solve`): dz/drho = div_x (dx/drho).

    Returns dict(log_prob (B,) in nats, prior_logp (B,), delta_logp (B,), nfe).
    """
    check_choice("trace", trace, TRACES)
    check_choice("hutchinson_dist", hutchinson_dist, HUTCHINSON_DISTS)
    t_eps = ode.end_time(sde, t_eps, 1e-5)
    ode.check_tolerances(rtol, atol, t_eps, sde)
    t_max = ode.start_time(sde, t_max, t_eps)
    x = jnp.asarray(x)
    batch = x.shape[0]
    prior_logp_fn = sde.prior_logp if prior_logp_fn is None else prior_logp_fn

    if trace == "hutchinson":
        if hutchinson_dist == "rademacher":
            probe = jax.random.rademacher(key, x.shape, dtype=x.dtype)
        else:
            probe = jax.random.normal(key, x.shape, dtype=x.dtype)

        def divergence(f, y):
            fy, jv = jax.jvp(f, (y,), (probe,))
            return fy, sum_flat(probe * jv)

    else:
        d = math.prod(x.shape[1:])
        # e_j, the same for every example: (D, B, ...) tangents; J is block-diagonal over examples.
        basis = jnp.broadcast_to(jnp.eye(d, dtype=x.dtype)[:, None, :], (d, batch, d)).reshape(
            (d,) + x.shape
        )

        def divergence(f, y):
            fy = f(y)
            jv = jax.vmap(lambda v: jax.jvp(f, (y,), (v,))[1])(basis)
            return fy, _exact_trace(basis, jv, batch, d)

    _, field = ode.flow_field(score_fn, sde, batch, time_variable)

    def vector_field(v, state, args):
        y, _ = state
        return divergence(lambda u: field(u, v), y)

    init = (x, jnp.zeros((batch,), x.dtype))
    (x1, delta_logp), nfe = ode.adaptive_solve(
        vector_field,
        init,
        ode.time_endpoint(sde, t_eps, time_variable),
        ode.time_endpoint(sde, t_max, time_variable),
        rtol=rtol,
        atol=atol,
        solver=solver,
        max_steps=max_steps,
    )
    prior_logp = prior_logp_fn(x1)
    return dict(log_prob=prior_logp + delta_logp, prior_logp=prior_logp, delta_logp=delta_logp, nfe=nfe)


def _exact_trace(basis: Array, jv: Array, batch: int, d: int) -> Array:
    """sum_j e_j^T (J e_j) per example, from the (D, B, ...) stacks of basis vectors and J e_j."""
    return jnp.sum(basis.reshape(d, batch, d) * jv.reshape(d, batch, d), axis=(0, 2))


# --------------------------------------------------------------------------- bits per dim


def bits_per_dim(log_prob: Array, dim: int, *, dequantized_uint8: bool = True) -> Array:
    """Bits per dimension of uint8 data from the model-space log density log p_model(y).

    score_sde's convention (Song et al. 2021, App. D.2; Ho et al. 2020, sec. 4): an image
    x in {0..255}^D is uniformly dequantized to u = (x + U[0,1)) / 256 in [0, 1)^D and mapped to
    model space by the data scaler y = 2u - 1 in [-1, 1). The continuous density of u is

        log p(u) = log p_model(y) + D log 2                     (|dy/du| = 2 per dimension),

    and the discrete probability that uniform dequantization lower-bounds is P(x) >= p(u) * (1/256)^D
    (Theis et al. 2016), so

        bpd = -log2 P(x) / D = -(log p_model(y) + D log 2 - D log 256) / (D log 2)
            = -log p_model(y) / (D log 2) - 1 + 8
            = -(log p_model(y) + D log(2/256)) / (D log 2).

    The "+ 8" is the log2 256 of the 256 bins; the "- 1" is log2 |dy/du| of the [0,1] -> [-1,1]
    scaling. score_sde writes the two together as ``offset = 7 - inverse_scaler(-1)``: 7 - 0 = 7 for
    centered data (inverse_scaler(y) = (y + 1)/2), 7 - (-1) = 8 for data left in [0, 1] (no scaling). With ``dequantized_uint8=False`` the plain -log p / (D log 2) is returned
    (continuous data, no offset). log_prob in nats, any shape; dim = D.
    """
    check_int("dim", dim, 1)
    bpd = -jnp.asarray(log_prob) / (dim * math.log(2.0))
    if dequantized_uint8:
        bpd = bpd + 8.0 - 1.0
    return bpd


def dequantize(key: Array, x_uint8: Array, *, dtype=None) -> Array:
    """Uniform dequantization to model space: y = 2 (x + u) / 256 - 1, u ~ U[0, 1)^shape.

    (Theis et al. 2016; score_sde's likelihood evaluation.) x_uint8 holds integers in {0..255};
    y lies in [-1, 1). Pair with `bits_per_dim(..., dequantized_uint8=True)`.
    """
    x = jnp.asarray(x_uint8)
    dtype = jnp.asarray(0.0).dtype if dtype is None else dtype
    u = jax.random.uniform(key, x.shape, dtype=dtype)
    lower = (x.astype(dtype) - 128.0) / 128.0  # = 2x/256 - 1, exact in binary floating point
    upper = lower + 1.0 / 128.0
    # u/128 is exact; the sum may round up onto the next bin's edge: keep y inside its own bin.
    return jnp.minimum(lower + u / 128.0, jnp.nextafter(upper, lower))
