"""The probability-flow ODE of the VP diffusion: sampling, encoding and exact likelihoods.

What lives where (top to bottom of this file):

  the continuous VP     `ContinuousVP` (a pytree): abar(tau), beta(tau), their inverse;
                        `.linear()` is score_sde's VPSDE, `.from_schedule(s)` the discrete schedule
  score adapters        `score_fn_from_model` (a discrete-index eps / x0 / v / score model called at
                        continuous tau), `oracle_score_fn` (an `oracles.GaussianMixture`, exact),
                        `drift` (the probability-flow vector field, eq. 13)
  ODE solves            `ode_solve` (either direction), `ode_sample` (noise -> data),
                        `ode_encode` / `ode_decode` (data <-> latent x_1)
  ODE likelihood        `ode_log_likelihood` (instantaneous change of variables, exact or
                        Hutchinson trace), `standard_normal_logp` (its prior)
  bits/dim              `dequantize` (uint8 -> uniformly dequantized model space) and
                        `bits_per_dim` (nats of a continuous density -> bits/dim of 8-bit data)

The discrete-time counterparts are elsewhere: the ancestral / DDIM / DPM-Solver samplers in
`diffax.samplers` and `diffax.dpm_solver`, the DDIM-ODE encoder in `diffax.interpolation`, and
the variational bound in `diffax.likelihood`.

Two bits/dim conventions. Both report -log2 P(x) / D for 8-bit data x in {0..255}^D (lower is
better) and both are upper bounds in expectation, so the numbers are comparable (as Song et al.
2021, Table 2, compare their ODE bits/dim with DDPM's bound), but they bound it differently:

  `likelihood.vlb_bpd`   the variational bound of the DISCRETE model: x scaled to the grid
                         2k/255 - 1 in [-1, 1], the last step a discretized Gaussian decoder that
                         assigns a probability to each of the 256 bins (Ho et al. 2020, eq. 13),
                         so the bound is already in bits of a discrete probability: no offset.
  `ode.bits_per_dim`     a CONTINUOUS density log p_model(y) from `ode_log_likelihood` at the
                         uniformly dequantized y = 2 (x + u) / 256 - 1 (`dequantize`), converted by
                         bpd = -log p_model(y) / (D log 2) + 7, i.e. + 8 for the 256 bins of width
                         1/256 in [0, 1] and - 1 for the [0, 1] -> [-1, 1] scaling (Theis et al.
                         2016; score_sde's offset). E_u of it bounds -log2 P(x) / D of the
                         dequantized model (Jensen).

Note the two grids differ slightly: pixel k sits at 2k/255 - 1 for the decoder, while its
dequantization bin is [k/128 - 1, (k + 1)/128 - 1) (centre (2k + 1)/256 - 1); a model trained
on 2k/255 - 1 sees the dequantized data shrunk by 255/256 (score_sde accepts the same mismatch).

Continuous-time view of the discrete schedule (Song et al. 2021, "Score-Based Generative Modeling
through SDEs", eqs. 11, 13 and App. B, D). The VP SDE  dx = -1/2 beta(tau) x dtau + sqrt(beta(tau)) dw
on tau in [0, 1] has the marginals  x_tau = sqrt(abar(tau)) x_0 + sqrt(1 - abar(tau)) z  with

    abar(tau) = exp(-int_0^tau beta(u) du),

and the same marginals are transported by the deterministic probability-flow ODE (eq. 13)

    dx/dtau = f(x, tau) = -1/2 beta(tau) [x + s(x, tau)],     s(x, tau) = grad_x log p_tau(x).

Mapping to the discrete schedule (`ContinuousVP.from_schedule`). The discrete index k in
{0..T-1} (paper step k+1) sits at tau_k = (k+1)/T, and tau = 0 is the data (abar = 1). log abar
is the piecewise-LINEAR interpolation in tau of the knots

    log abar(j/T) = log alphas_cumprod[j-1]  (j = 1..T),   log abar(0) = 0,

i.e. beta(tau) is piecewise constant, beta = -d log abar/dtau = -T log(1 - betas[k]) on
((k)/T, (k+1)/T], so abar(tau_k) == alphas_cumprod[k] exactly. For DDPM's linear schedule with
betas = linspace(beta_min/T, beta_max/T, T), -T log(1 - betas[k]) -> beta_min + tau (beta_max -
beta_min) as T -> infinity: this is score_sde's VPSDE with beta_min = 0.1, beta_max = 20 (DDPM's
1e-4..0.02 at T = 1000), available in closed form as `ContinuousVP.linear()`.

Calling a model trained on the discrete index at continuous tau (`score_fn_from_model`):
t_index = tau T - 1, passed as a float (``time_input='float'``, for models with a continuous
time embedding) or rounded to the nearest int and clipped to [0, T-1] (``'round'``). The exact
oracle needs no index: ``mixture.score_scaled(x, sqrt(abar(tau)), 1 - abar(tau))`` (`oracle_score_fn`).

Score functions here have the signature ``score_fn(x, tau) -> score`` with x batch-first and
tau an array of shape (B,). Every solve is one `diffrax.diffeqsolve` with an adaptive
Runge-Kutta method (Tsit5 or Dopri5, Tsitouras 2011 / Dormand & Prince 1980) under a
`diffrax.PIDController(rtol, atol)`: the whole batch is one ODE state with shared steps (as in
score_sde), the error norm is the RMS over the state. Everything runs inside JAX (no host
round-trips), so the functions compose with the caller's ``jax.jit``; the library never jits.

NFE (reported as ``nfe``): vector-field evaluations, ``6 * num_steps + 1`` for these FSAL
7-stage methods in diffrax 0.7 (6 new stages per attempted step, accepted or rejected, plus one;
counted with a host callback in tests/test_ode.py, for Tsit5 and Dopri5 alike). For the
likelihood one evaluation is one model call plus its jvp(s).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffax._util import ModelFn, check_choice, check_int, check_positive, expand_to, initial_x, sum_flat
from diffax.schedules import Schedule

Array = jnp.ndarray
ScoreFn = Callable[[Array, Array], Array]

SOLVERS = ("tsit5", "dopri5")
TRACES = ("hutchinson", "exact")
HUTCHINSON_DISTS = ("rademacher", "gaussian")
TIME_VARIABLES = ("rho", "tau")
TIME_INPUTS = ("float", "round")
MEAN_TYPES = ("eps", "x0", "v", "score")

__all__ = [
    "ContinuousVP",
    "score_fn_from_model",
    "oracle_score_fn",
    "drift",
    "ode_solve",
    "ode_sample",
    "ode_encode",
    "ode_decode",
    "ode_log_likelihood",
    "standard_normal_logp",
    "bits_per_dim",
    "dequantize",
    "SOLVERS",
    "TRACES",
    "HUTCHINSON_DISTS",
    "TIME_VARIABLES",
]


# --------------------------------------------------------------------------- the continuous VP


class ContinuousVP(NamedTuple):
    """A VP diffusion in continuous time tau in [0, 1] (Song et al. 2021, eq. 11 / App. B).

    beta(tau) = beta_min + tau (beta_max - beta_min)  +  beta_pl(tau), where beta_pl is the
    piecewise-constant rate of the piecewise-linear log abar through `log_alpha_bar_knots` (N+1
    values on the uniform grid tau_j = j / N, the first 0). Hence

        log abar(tau) = -(beta_min tau + 1/2 (beta_max - beta_min) tau^2) + interp(tau; knots).

    `linear(beta_min, beta_max)` is score_sde's VPSDE (knots all 0); `from_schedule(s)` has
    beta_min = beta_max = 0 and the discrete schedule's knots (abar(tau_k) = alphas_cumprod[k]
    at tau_k = (k+1)/T). A NamedTuple, hence a pytree that crosses jit as an argument.
    """

    beta_min: Array
    beta_max: Array
    log_alpha_bar_knots: Array

    # ------------------------------------------------------------------ builders
    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0) -> "ContinuousVP":
        """score_sde's VPSDE: beta(tau) = beta_min + tau (beta_max - beta_min) (Song et al. 2021, eq. 33),
        abar(tau) = exp(-beta_min tau - 1/2 (beta_max - beta_min) tau^2)."""
        for name, v in (("beta_min", beta_min), ("beta_max", beta_max)):
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"ContinuousVP.linear: {name} must be finite and >= 0, got {v!r}")
        if beta_min + beta_max <= 0.0:
            raise ValueError(
                f"ContinuousVP.linear: need beta_min + beta_max > 0, got {beta_min!r}, {beta_max!r}"
            )
        dtype = jnp.asarray(0.0).dtype
        return cls(jnp.asarray(beta_min, dtype), jnp.asarray(beta_max, dtype), jnp.zeros((2,), dtype))

    @classmethod
    def from_schedule(cls, s: Schedule) -> "ContinuousVP":
        """The continuous VP whose abar(tau) interpolates the discrete schedule.

        knots: log abar(j / T) = log alphas_cumprod[j - 1] for j = 1..T and 0 at tau = 0, joined
        linearly in tau; so abar((k + 1) / T) = alphas_cumprod[k] and on (k/T, (k+1)/T]
        beta(tau) = -T log(1 - betas[k]) (piecewise constant). Computed in float64 NumPy.
        """
        acp = np.asarray(s.alphas_cumprod, dtype=np.float64)
        knots = np.concatenate([[0.0], np.log(acp)])
        dtype = jnp.asarray(0.0).dtype
        zero = jnp.zeros((), dtype)
        return cls(zero, zero, jnp.asarray(knots, dtype))

    # ------------------------------------------------------------------ tables
    @property
    def num_knot_intervals(self) -> int:
        """N, the number of linear pieces of the interpolated part (T for `from_schedule`)."""
        return int(self.log_alpha_bar_knots.shape[0]) - 1

    def _piece(self, tau: Array) -> tuple[Array, Array]:
        """(value, slope) of the piecewise-linear part at tau (the right-hand slope at a knot)."""
        n = self.num_knot_intervals
        knots = self.log_alpha_bar_knots
        tau = jnp.asarray(tau, dtype=jnp.result_type(tau, knots.dtype))
        j = jnp.clip(jnp.floor(tau * n), 0, n - 1)
        left = jnp.take(knots, j.astype(jnp.int32))
        slope = (jnp.take(knots, j.astype(jnp.int32) + 1) - left) * n
        return left + slope * (tau - j / n), slope

    def log_alpha_bar(self, tau: Array) -> Array:
        """log abar(tau) = -int_0^tau beta(u) du."""
        tau = jnp.asarray(tau)
        value, _ = self._piece(tau)
        return -(self.beta_min * tau + 0.5 * (self.beta_max - self.beta_min) * tau**2) + value

    def alpha_bar(self, tau: Array) -> Array:
        """abar(tau) = exp(-int_0^tau beta): the squared signal scale of q(x_tau | x_0)."""
        return jnp.exp(self.log_alpha_bar(tau))

    def beta(self, tau: Array) -> Array:
        """beta(tau) = -d log abar / dtau (right derivative at the knots of `from_schedule`)."""
        tau = jnp.asarray(tau)
        _, slope = self._piece(tau)
        return self.beta_min + tau * (self.beta_max - self.beta_min) - slope

    def tau_from_log_alpha_bar(self, log_alpha_bar: Array, *, iterations: int = 64) -> Array:
        """The inverse of `log_alpha_bar` on [0, 1] (it is strictly decreasing), by bisection.

        `iterations` halvings of [0, 1] (64 reach float64 resolution); values outside
        [log abar(1), 0] map to the nearest end. Elementwise; differentiable nowhere (not needed:
        it only places a model's time input).
        """
        target = jnp.asarray(log_alpha_bar)
        dtype = jnp.result_type(target.dtype, self.log_alpha_bar_knots.dtype)
        lo = jnp.zeros(target.shape, dtype)
        hi = jnp.ones(target.shape, dtype)

        def halve(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            above = self.log_alpha_bar(mid) > target  # abar(mid) still too large: go right
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, iterations, halve, (lo, hi))
        return 0.5 * (lo + hi)

    def marginal_coefs(self, tau: Array) -> tuple[Array, Array]:
        """(sqrt(abar(tau)), 1 - abar(tau)): scale and noise variance of q(x_tau | x_0) (eq. 29)."""
        log_ab = self.log_alpha_bar(tau)
        return jnp.exp(0.5 * log_ab), -jnp.expm1(log_ab)


# --------------------------------------------------------------------------- score functions


def score_fn_from_model(
    model_fn: ModelFn,
    s: Schedule,
    *,
    mean_type: str = "eps",
    time_input: str = "round",
) -> ScoreFn:
    """Wrap a model trained on the discrete index as ``score_fn(x, tau)`` on the continuous VP.

    The model is called at t_index = tau T - 1 (the inverse of tau_k = (k + 1)/T): as a float
    (``time_input='float'``) or rounded to the nearest int and clipped to [0, T-1] (``'round'``).
    Its output is turned into a score with the continuous abar(tau) of
    `ContinuousVP.from_schedule(s)`, sigma^2 = 1 - abar:  eps -> -eps / sigma;
    x0 -> -(x - sqrt(abar) x0) / sigma^2;  v -> eps = sqrt(abar) v + sigma x, then -eps / sigma
    (Salimans & Ho 2022); 'score' is passed through.
    """
    check_choice("mean_type", mean_type, MEAN_TYPES)
    check_choice("time_input", time_input, TIME_INPUTS)
    sde = ContinuousVP.from_schedule(s)
    T = s.num_timesteps

    def score_fn(x: Array, tau: Array) -> Array:
        t_float = tau * T - 1.0
        if time_input == "round":
            t = jnp.clip(jnp.round(t_float), 0, T - 1).astype(jnp.int32)
        else:
            t = t_float
        out = model_fn(x, t)
        scale, var = sde.marginal_coefs(tau)
        a, v = expand_to(scale, x.ndim), expand_to(var, x.ndim)
        if mean_type == "score":
            return out
        if mean_type == "x0":
            return -(x - a * out) / v
        eps = out if mean_type == "eps" else a * out + jnp.sqrt(v) * x
        return -eps / jnp.sqrt(v)

    return score_fn


def oracle_score_fn(mixture, sde: ContinuousVP) -> ScoreFn:
    """The exact score of an `oracles.GaussianMixture` noised to continuous tau:
    grad log p_tau(x) = mixture.score_scaled(x, sqrt(abar(tau)), 1 - abar(tau))."""

    def score_fn(x: Array, tau: Array) -> Array:
        scale, var = sde.marginal_coefs(tau)
        return mixture.score_scaled(x, scale, var)

    return score_fn


def drift(score_fn: ScoreFn, sde: ContinuousVP, x: Array, tau: Array) -> Array:
    """The probability-flow drift f(x, tau) = -1/2 beta(tau) [x + s(x, tau)] (Song et al. 2021, eq. 13
    for the VP SDE, whose f = -1/2 beta x and g^2 = beta); tau of shape (B,)."""
    beta = expand_to(sde.beta(tau), x.ndim)
    return -0.5 * beta * (x + score_fn(x, tau))


# --------------------------------------------------------------------------- solving


def _check_t_eps(t_eps) -> None:
    if not (isinstance(t_eps, (int, float)) and 0.0 <= t_eps < 1.0):
        raise ValueError(f"t_eps must be a float in [0, 1), got {t_eps!r}")


def _check_tols(rtol, atol, t_eps) -> None:
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    _check_t_eps(t_eps)


def _solver(name: str):
    import diffrax  # imported where used: it (with equinox) adds ~0.5 s to every `import diffax`

    check_choice("solver", name, SOLVERS)
    return diffrax.Tsit5() if name == "tsit5" else diffrax.Dopri5()


def _nfe(sol) -> Array:
    """Vector-field evaluations of an FSAL 7-stage solve: 6 per attempted step + 1 (see module doc)."""
    return 6 * sol.stats["num_steps"] + 1


def _flow_field(score_fn: ScoreFn, sde: ContinuousVP, batch: int, time_variable: str):
    """(v -> tau(v), vector field g(x, v) = dx/dv) for the chosen time variable v.

    'tau':  g = f(x, tau) = -1/2 beta(tau) [x + s(x, tau)]                          (eq. 13);
    'rho':  rho = -log abar(tau) = int_0^tau beta, dtau/drho = 1/beta, so
            g = dx/drho = -1/2 [x + s(x, tau(rho))]: the same ODE reparameterized, with beta gone
            from the field (the solver no longer sees the kinks of a piecewise-constant beta).
    """
    check_choice("time_variable", time_variable, TIME_VARIABLES)

    if time_variable == "tau":

        def to_tau(v):
            return v

        def field(x, v):
            return drift(score_fn, sde, x, jnp.full((batch,), v, dtype=x.dtype))

    else:

        def to_tau(v):
            return sde.tau_from_log_alpha_bar(-v)

        def field(x, v):
            tau = jnp.full((batch,), to_tau(v), dtype=x.dtype)
            return -0.5 * (x + score_fn(x, tau))

    return to_tau, field


def _time_endpoint(sde: ContinuousVP, tau: float, time_variable: str) -> Array:
    """tau itself, or rho(tau) = -log abar(tau)."""
    return jnp.asarray(tau) if time_variable == "tau" else -sde.log_alpha_bar(jnp.asarray(tau))


def _diffeqsolve(vector_field, y0, t0, t1, *, rtol, atol, solver, max_steps):
    """One adaptive solve from t0 to t1 (either direction); returns (y(t1), nfe)."""
    import diffrax

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        _solver(solver),
        t0,
        t1,
        None,  # dt0: chosen by the controller (Hairer, Norsett & Wanner, II.4)
        y0,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    return jax.tree.map(lambda y: y[0], sol.ys), _nfe(sol)


def ode_solve(
    score_fn: ScoreFn,
    sde: ContinuousVP,
    x: Array,
    *,
    t0: float,
    t1: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "tsit5",
    time_variable: str = "rho",
    max_steps: int = 4096,
) -> tuple[Array, Array]:
    """Integrate the probability-flow ODE dx/dtau = -1/2 beta(tau)[x + s(x, tau)] (eq. 13) from tau = t0 to t1.

    t1 < t0 integrates backwards (sampling), t1 > t0 forwards (encoding). ``time_variable``:
    'rho' (default) integrates dx/drho = -1/2 [x + s(x, tau(rho))] in rho = -log abar(tau), the same
    ODE with a monotone change of time (same endpoints, same solution) that removes beta from the
    field; 'tau' integrates eq. 13 literally (score_sde). Returns (x(t1), nfe).
    """
    _check_tols(rtol, atol, 0.0)
    for name, v in (("t0", t0), ("t1", t1)):
        if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            raise ValueError(f"{name} must be a float in [0, 1], got {v!r}")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0!r}")
    _, field = _flow_field(score_fn, sde, x.shape[0], time_variable)
    return _diffeqsolve(
        lambda v, y, args: field(y, v),
        x,
        _time_endpoint(sde, t0, time_variable),
        _time_endpoint(sde, t1, time_variable),
        rtol=rtol,
        atol=atol,
        solver=solver,
        max_steps=max_steps,
    )


def ode_sample(
    score_fn: ScoreFn,
    sde: ContinuousVP,
    key: Array,
    shape: tuple[int, ...],
    *,
    x_init: Array | None = None,
    t_eps: float = 1e-3,
    **solve_kwargs,
) -> tuple[Array, Array]:
    """Deterministic sampling: x_1 ~ N(0, I) (or ``x_init``), integrated from tau = 1 to t_eps.

    (Song et al. 2021, sec. 4.3 and App. D.2; score_sde's ``get_ode_sampler`` without its
    optional final denoising.) Returns (x_{t_eps}, nfe); x_{t_eps} ~ p_{t_eps}, the data scaled by
    sqrt(abar(t_eps)) plus N(0, 1 - abar(t_eps)) noise, for an exact score. ``solve_kwargs``
    (rtol, atol, solver, time_variable, max_steps) go to `ode_solve`.
    """
    shape = tuple(int(d) for d in shape)
    x = initial_x(key, shape, jnp.asarray(sde.log_alpha_bar_knots).dtype, x_init)
    _check_t_eps(t_eps)
    return ode_solve(score_fn, sde, x, t0=1.0, t1=t_eps, **solve_kwargs)


def ode_encode(
    score_fn: ScoreFn, sde: ContinuousVP, x0: Array, *, t_eps: float = 1e-3, **solve_kwargs
) -> Array:
    """The latent x_1 of x0: the probability-flow ODE integrated forwards from t_eps to 1 (Song et al.
    2021, sec. 4.3 "identifiable encoding"). x0 is read as x_{t_eps}. ``solve_kwargs`` as `ode_solve`."""
    _check_t_eps(t_eps)
    return ode_solve(score_fn, sde, x0, t0=t_eps, t1=1.0, **solve_kwargs)[0]


def ode_decode(
    score_fn: ScoreFn, sde: ContinuousVP, x_T: Array, *, t_eps: float = 1e-3, **solve_kwargs
) -> Array:
    """The inverse of `ode_encode`: the probability-flow ODE integrated from tau = 1 back to t_eps."""
    _check_t_eps(t_eps)
    return ode_solve(score_fn, sde, x_T, t0=1.0, t1=t_eps, **solve_kwargs)[0]


# --------------------------------------------------------------------------- likelihood


def standard_normal_logp(z: Array) -> Array:
    """log N(z; 0, I) summed over all but the batch axis: -D/2 log(2 pi) - |z|^2 / 2 (score_sde's prior)."""
    d = math.prod(z.shape[1:])
    return -0.5 * d * math.log(2 * math.pi) - 0.5 * sum_flat(z**2)


def ode_log_likelihood(
    score_fn: ScoreFn,
    sde: ContinuousVP,
    key: Array,
    x: Array,
    *,
    trace: str = "hutchinson",
    hutchinson_dist: str = "rademacher",
    t_eps: float = 1e-5,
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
    to 1 gives

        log p_{t_eps}(x) = log p_1(x(1)) + int_{t_eps}^1 div f(x(tau), tau) dtau
                         = prior_logp + delta_logp.

    This is the density of x_{t_eps} = sqrt(abar(t_eps)) x_0 + sqrt(1 - abar(t_eps)) z, not of x_0
    itself; t_eps -> 0 recovers the data density (score_sde's default 1e-5 makes the gap negligible).
    p_1 is taken as N(0, I) (score_sde's convention; exact up to the O(abar(1)) prior mismatch) unless
    ``prior_logp_fn(z) -> (B,)`` is given.

    trace: 'exact' computes div f = tr(df/dx) with one jvp per input dimension (for low D; the
    examples of a batch must not interact); 'hutchinson' uses tr J = E[e^T J e] with ONE probe e per
    solve, drawn from ``key`` (Rademacher or Gaussian, Hutchinson 1989; Grathwohl et al. 2019), so
    the estimate of log p is unbiased. The integral is invariant under the change of time
    variable (``time_variable``, see `ode_solve`): dz/drho = div_x (dx/drho).

    Returns dict(log_prob (B,) in nats, prior_logp (B,), delta_logp (B,), nfe).
    """
    check_choice("trace", trace, TRACES)
    check_choice("hutchinson_dist", hutchinson_dist, HUTCHINSON_DISTS)
    _check_tols(rtol, atol, t_eps)
    x = jnp.asarray(x)
    batch = x.shape[0]
    prior_logp_fn = standard_normal_logp if prior_logp_fn is None else prior_logp_fn

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

    _, field = _flow_field(score_fn, sde, batch, time_variable)

    def vector_field(v, state, args):
        y, _ = state
        return divergence(lambda u: field(u, v), y)

    init = (x, jnp.zeros((batch,), x.dtype))
    (x1, delta_logp), nfe = _diffeqsolve(
        vector_field,
        init,
        _time_endpoint(sde, t_eps, time_variable),
        _time_endpoint(sde, 1.0, time_variable),
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
