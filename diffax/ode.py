"""The probability-flow ODE of any `diffax.processes` process: score adapters, sampling, encoding, decoding.

What lives where (top to bottom of this file):

  score adapters        `score_fn_from_model` (a discrete-index eps / x0 / v / score model called at
                        continuous tau), `oracle_score_fn` (an `oracles.GaussianMixture`, exact),
                        `drift` (the probability-flow vector field, eq. 13)
  ODE solves            `ode_solve` (either direction), `ode_sample` (noise -> data),
                        `ode_encode` / `ode_decode` (data <-> latent x_{t_max}); the pieces they share
                        with `diffax.ode_likelihood`: `flow_field`, `time_endpoint`, `adaptive_solve`,
                        `check_tolerances`, `end_time`, `start_time`

The processes they run on (VP, cosine VP, VE, EDM, rectified flow) are in `diffax.processes`, with the
general drift dx/dt = f x - 1/2 g^2 s derived there; the exact likelihood of the
ODE and its bits/dim are in `diffax.ode_likelihood`. The discrete-time counterparts are
elsewhere: the ancestral / DDIM / DPM-Solver samplers in `diffax.samplers` and
`diffax.dpm_solver`, the DDIM-ODE encoder in `diffax.interpolation`.

The VP SDE  dx = -1/2 beta(tau) x dtau + sqrt(beta(tau)) dw  (Song et al. 2021, "Score-Based
Generative Modeling through SDEs", eqs. 11, 13 and App. B, D; `diffax.processes`) has the same
marginals as the deterministic probability-flow ODE (eq. 13)

    dx/dtau = f(x, tau) = -1/2 beta(tau) [x + s(x, tau)],     s(x, tau) = grad_x log p_tau(x).

Calling a model trained on the discrete index at continuous tau (`score_fn_from_model`):
t_index = tau T - 1 (the inverse of tau_k = (k+1)/T, see `processes.VP.from_schedule`), passed
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
from diffax.processes import TIME_VARIABLES, VP, Process
from diffax.schedules import Schedule

Array = jnp.ndarray
ScoreFn = Callable[[Array, Array], Array]

SOLVERS = ("tsit5", "dopri5")
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
    "end_time",
    "start_time",
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
    `VP.from_schedule(s)`, sigma^2 = 1 - abar:  eps -> -eps / sigma;
    x0 -> -(x - sqrt(abar) x0) / sigma^2;  v -> eps = sqrt(abar) v + sigma x, then -eps / sigma
    (Salimans & Ho 2022); 'score' is passed through.
    """
    check_choice("mean_type", mean_type, MEAN_TYPES)
    check_choice("time_input", time_input, TIME_INPUTS)
    sde = VP.from_schedule(s)
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


def oracle_score_fn(mixture, sde: Process) -> ScoreFn:
    """The exact score of an `oracles.GaussianMixture` noised to continuous tau under any process:
    grad log p_tau(x) = mixture.score_scaled(x, *sde.marginal_coefs(tau)) (VP: sqrt(abar), 1 - abar)."""

    def score_fn(x: Array, tau: Array) -> Array:
        scale, var = sde.marginal_coefs(tau)
        return mixture.score_scaled(x, scale, var)

    return score_fn


def drift(score_fn: ScoreFn, sde: Process, x: Array, tau: Array) -> Array:
    """The probability-flow drift dx/dt = f(t) x - 1/2 g(t)^2 s(x, t) = -1/2 c (k x + s) of any process
    (Song et al. 2021, eq. 13; f = alpha'/alpha, g^2 = 2 sigma sigma' - 2 f sigma^2; (c, k) =
    ``sde.pf_coefs(t)``, see `diffax.processes`). VP: -1/2 beta(t) [x + s]; EDM: -t s = (x - D(x; t))/t
    (Karras et al. 2022, eq. 3). tau of shape (B,)."""
    return _field(score_fn, sde, x, tau, "tau")


def _field(score_fn: ScoreFn, sde: Process, x: Array, tau: Array, time_variable: str) -> Array:
    """-1/2 c (k x + s(x, tau)) with (c, k) = ``sde.pf_coefs(tau, time_variable)``."""
    c, k = sde.pf_coefs(tau, time_variable)
    c, k = expand_to(c, x.ndim), expand_to(k, x.ndim)
    return -0.5 * c * (k * x + score_fn(x, tau))


# --------------------------------------------------------------------------- solving


def _check_t_eps(t_eps, sde: Process | None = None) -> None:
    lo, hi = (0.0, 1.0) if sde is None else (sde.t_min, sde.t_max)
    if not (isinstance(t_eps, (int, float)) and lo <= t_eps < hi):
        raise ValueError(f"t_eps must be a float in [{lo}, {hi}) (the process's [t_min, t_max)), got {t_eps!r}")


def end_time(sde: Process, t_eps: float | None, default: float) -> float:
    """The solve's end time: ``t_eps``, or max(default, t_min) when None (1e-3 / 1e-5 for the VP as
    before; EDM's sigma_min = 0.002 for `processes.edm`); checked to lie in [t_min, t_max)."""
    t_eps = max(default, sde.t_min) if t_eps is None else t_eps
    _check_t_eps(t_eps, sde)
    return t_eps


def start_time(sde: Process, t_max: float | None, t_eps: float) -> float:
    """The solve's start time: ``t_max`` or the process's, above ``t_eps``; alpha there must be > 0 (the
    score form of the ODE is singular where alpha = 0, e.g. rectified flow at t = 1)."""
    t_max = sde.t_max if t_max is None else t_max
    if not (isinstance(t_max, (int, float)) and sde.t_min < t_max <= sde.t_max):
        raise ValueError(f"t_max must be a float in ({sde.t_min}, {sde.t_max}], got {t_max!r}")
    if not t_eps < t_max:
        raise ValueError(f"t_eps must be a float in [{sde.t_min}, t_max = {t_max}), got {t_eps!r}")
    _check_alpha_positive(sde, t_max, "t_max")
    return t_max


def _check_alpha_positive(sde: Process, t: float, name: str) -> None:
    with jax.ensure_compile_time_eval():
        alpha = sde.alpha(jnp.asarray(t, sde.dtype))
    if not isinstance(alpha, jax.core.Tracer) and not float(alpha) > 0.0:
        raise ValueError(
            f"{name} = {t!r}: alpha({name}) = {float(alpha)!r}, but the probability-flow ODE in score form "
            f"needs alpha > 0 (f = alpha'/alpha); start below it, e.g. {name}=1 - 1e-3 for rectified flow"
        )


def check_tolerances(rtol, atol, t_eps, sde: Process | None = None) -> None:
    """Raise ValueError unless rtol > 0, atol > 0 and t_eps in [t_min, t_max) of ``sde`` ([0, 1) without one)."""
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    _check_t_eps(t_eps, sde)


def _solver(name: str):
    import diffrax  # imported where used: it (with equinox) adds ~0.5 s to every `import diffax`

    check_choice("solver", name, SOLVERS)
    return diffrax.Tsit5() if name == "tsit5" else diffrax.Dopri5()


def _nfe(sol) -> Array:
    """Vector-field evaluations of an FSAL 7-stage solve: 6 per attempted step + 1 (see module doc)."""
    return 6 * sol.stats["num_steps"] + 1


def flow_field(score_fn: ScoreFn, sde: Process, batch: int, time_variable: str):
    """(v -> tau(v), vector field g(x, v) = dx/dv) for the chosen time variable v.

    'tau':  g = dx/dt = -1/2 c (k x + s(x, t)), `drift` (VP: -1/2 beta(tau) [x + s], eq. 13);
    'rho':  rho = log(1 + sigma^2/alpha^2) (the VP's -log abar(tau) = int_0^tau beta), drho/dt =
            g^2/(alpha^2 + sigma^2), so g = dx/drho = -1/2 (alpha^2 + sigma^2)(k x + s(x, t(rho))):
            the same ODE reparameterized; for the VP -1/2 [x + s], with beta gone from the field (the
            solver no longer sees the kinks of a piecewise-constant beta).
    """
    check_choice("time_variable", time_variable, TIME_VARIABLES)

    if time_variable == "tau":

        def to_tau(v):
            return v

    else:

        def to_tau(v):
            return sde.t_of_rho(v)

    def field(x, v):
        tau = jnp.full((batch,), to_tau(v), dtype=x.dtype)
        return _field(score_fn, sde, x, tau, time_variable)

    return to_tau, field


def time_endpoint(sde: Process, tau: float, time_variable: str) -> Array:
    """tau itself, or rho(tau) (the VP's -log abar(tau))."""
    return jnp.asarray(tau) if time_variable == "tau" else sde.rho(jnp.asarray(tau))


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
    sde: Process,
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
    """Integrate the probability-flow ODE of ``sde`` (`drift`; VP: dx/dtau = -1/2 beta(tau)[x + s(x, tau)],
    eq. 13) from tau = t0 to t1, both in [t_min, t_max] with alpha > 0.

    t1 < t0 integrates backwards (sampling), t1 > t0 forwards (encoding). ``time_variable``:
    'rho' (default) integrates dx/drho in rho = log(1 + sigma^2/alpha^2) (VP: -1/2 [x + s(x, tau(rho))]
    in rho = -log abar(tau)), the same ODE with a monotone change of time (same endpoints, same
    solution) that removes beta from the field; 'tau' integrates eq. 13 literally (score_sde).
    Returns (x(t1), nfe).
    """
    check_tolerances(rtol, atol, sde.t_min, sde)
    for name, v in (("t0", t0), ("t1", t1)):
        if not (isinstance(v, (int, float)) and sde.t_min <= v <= sde.t_max):
            raise ValueError(f"{name} must be a float in [{sde.t_min}, {sde.t_max}], got {v!r}")
        _check_alpha_positive(sde, v, name)
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
    sde: Process,
    key: Array,
    shape: tuple[int, ...],
    *,
    x_init: Array | None = None,
    t_eps: float | None = None,
    t_max: float | None = None,
    **solve_kwargs,
) -> tuple[Array, Array]:
    """Deterministic sampling: x ~ the prior N(0, prior_std^2 I) (or ``x_init``), integrated from
    ``t_max`` (default the process's) to ``t_eps`` (default max(1e-3, t_min)).

    (Song et al. 2021, sec. 4.3 and App. D.2; score_sde's ``get_ode_sampler`` without its
    optional final denoising.) Returns (x_{t_eps}, nfe); x_{t_eps} ~ p_{t_eps}, the data scaled by
    alpha(t_eps) plus N(0, sigma(t_eps)^2) noise, for an exact score. ``solve_kwargs``
    (rtol, atol, solver, time_variable, max_steps) go to `ode_solve`.
    """
    shape = tuple(int(d) for d in shape)
    t1 = end_time(sde, t_eps, 1e-3)
    t0 = start_time(sde, t_max, t1)
    x = sde.prior_sample(key, shape) if x_init is None else initial_x(key, shape, sde.dtype, x_init)
    return ode_solve(score_fn, sde, x, t0=t0, t1=t1, **solve_kwargs)


def ode_encode(
    score_fn: ScoreFn, sde: Process, x0: Array, *, t_eps: float | None = None, t_max: float | None = None,
    **solve_kwargs,
) -> Array:
    """The latent x_{t_max} of x0: the probability-flow ODE integrated forwards from t_eps (default
    max(1e-3, t_min)) to t_max (default the process's) (Song et al. 2021, sec. 4.3 "identifiable
    encoding"). x0 is read as x_{t_eps}. ``solve_kwargs`` as `ode_solve`."""
    t_eps = end_time(sde, t_eps, 1e-3)
    return ode_solve(score_fn, sde, x0, t0=t_eps, t1=start_time(sde, t_max, t_eps), **solve_kwargs)[0]


def ode_decode(
    score_fn: ScoreFn, sde: Process, x_T: Array, *, t_eps: float | None = None, t_max: float | None = None,
    **solve_kwargs,
) -> Array:
    """The inverse of `ode_encode`: the probability-flow ODE integrated from t_max back to t_eps."""
    t_eps = end_time(sde, t_eps, 1e-3)
    return ode_solve(score_fn, sde, x_T, t0=start_time(sde, t_max, t_eps), t1=t_eps, **solve_kwargs)[0]
