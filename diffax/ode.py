"""The probability-flow ODE of the VP diffusion: score adapters, sampling, encoding and decoding.

What lives where (top to bottom of this file):

  score adapters        `score_fn_from_model` (a discrete-index eps / x0 / v / score model called at
                        continuous tau), `oracle_score_fn` (an `oracles.GaussianMixture`, exact),
                        `drift` (the probability-flow vector field, eq. 13)
  ODE solves            `ode_solve` (either direction), `ode_sample` (noise -> data),
                        `ode_encode` / `ode_decode` (data <-> latent x_1); the pieces they share with
                        `diffax.ode_likelihood`: `flow_field`, `time_endpoint`, `adaptive_solve`,
                        `check_tolerances`

The process they run on, `ContinuousVP`, is in `diffax.processes`; the exact likelihood of the
ODE and its bits/dim are in `diffax.ode_likelihood`. The discrete-time counterparts are
elsewhere: the ancestral / DDIM / DPM-Solver samplers in `diffax.samplers` and
`diffax.dpm_solver`, the DDIM-ODE encoder in `diffax.interpolation`.

The VP SDE  dx = -1/2 beta(tau) x dtau + sqrt(beta(tau)) dw  (Song et al. 2021, "Score-Based
Generative Modeling through SDEs", eqs. 11, 13 and App. B, D; `diffax.processes`) has the same
marginals as the deterministic probability-flow ODE (eq. 13)

    dx/dtau = f(x, tau) = -1/2 beta(tau) [x + s(x, tau)],     s(x, tau) = grad_x log p_tau(x).

Calling a model trained on the discrete index at continuous tau (`score_fn_from_model`):
t_index = tau T - 1 (the inverse of tau_k = (k+1)/T, see `ContinuousVP.from_schedule`), passed
as a float (``time_input='float'``, for models with a continuous time embedding) or rounded to the
nearest int and clipped to [0, T-1] (``'round'``). The exact oracle needs no index:
``mixture.score_scaled(x, sqrt(abar(tau)), 1 - abar(tau))`` (`oracle_score_fn`).

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

from typing import Callable

import jax
import jax.numpy as jnp

from diffax._util import ModelFn, check_choice, check_positive, expand_to, initial_x
from diffax.processes import ContinuousVP
from diffax.schedules import Schedule

Array = jnp.ndarray
ScoreFn = Callable[[Array, Array], Array]

SOLVERS = ("tsit5", "dopri5")
TIME_VARIABLES = ("rho", "tau")
TIME_INPUTS = ("float", "round")
MEAN_TYPES = ("eps", "x0", "v", "score")

__all__ = [
    "ScoreFn",
    "score_fn_from_model",
    "oracle_score_fn",
    "drift",
    "ode_solve",
    "ode_sample",
    "ode_encode",
    "ode_decode",
    "flow_field",
    "time_endpoint",
    "adaptive_solve",
    "check_tolerances",
    "SOLVERS",
    "TIME_VARIABLES",
]


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


def check_tolerances(rtol, atol, t_eps) -> None:
    """Raise ValueError unless rtol > 0, atol > 0 and t_eps in [0, 1) (the options of every solve)."""
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


def flow_field(score_fn: ScoreFn, sde: ContinuousVP, batch: int, time_variable: str):
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


def time_endpoint(sde: ContinuousVP, tau: float, time_variable: str) -> Array:
    """tau itself, or rho(tau) = -log abar(tau)."""
    return jnp.asarray(tau) if time_variable == "tau" else -sde.log_alpha_bar(jnp.asarray(tau))


def adaptive_solve(vector_field, y0, t0, t1, *, rtol, atol, solver, max_steps):
    """One adaptive solve from t0 to t1 (either direction); returns (y(t1), nfe).

    ``vector_field(t, y, args) -> dy/dt`` in diffrax's signature, y0 any pytree; ``solver`` one of
    `SOLVERS` under a PID controller at (rtol, atol) (see the module doc). Shared by `ode_solve` and
    `ode_likelihood.ode_log_likelihood`.
    """
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
    check_tolerances(rtol, atol, 0.0)
    for name, v in (("t0", t0), ("t1", t1)):
        if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
            raise ValueError(f"{name} must be a float in [0, 1], got {v!r}")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0!r}")
    _, field = flow_field(score_fn, sde, x.shape[0], time_variable)
    return adaptive_solve(
        lambda v, y, args: field(y, v),
        x,
        time_endpoint(sde, t0, time_variable),
        time_endpoint(sde, t1, time_variable),
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
