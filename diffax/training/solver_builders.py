"""Config -> the sampler of the discrete-time solvers: sampling.method 'dpm_solver_pp', 'unipc', 'ode', 'pc'.

`diffax.training.sampler_builders` builds the guided ``model_fn(x_t, t)`` of a 'diffusion' run (classifier-free /
classifier guidance, its output in the model's own parameterisation, diffusion.mean_type) and hands it to the
``solve(model_fn, key, shape) -> x`` built here; this module reads only sampling.* (and diffusion.mean_type /
var_type / num_timesteps) and calls the library's pure functions:

  method         function (reference)                          NFE                     sampling.* it reads
  dpm_solver_pp  `dpm_solver.dpm_solver_pp` (Lu et al. 2022)   num_steps (None: 20)    order (None: 2), timestep_grid,
                                                                                       clip_x0
  unipc          `unipc.unipc` (Zhao et al. 2023)              num_steps (None: 20)    order (None: 2), timestep_grid,
                                                                                       unipc_variant, clip_x0
  ode            `ode.ode_sample` on `VP.from_schedule`:       adaptive, 6 per step    ode_rtol, ode_atol
                 the probability-flow ODE from tau = 1 to      + 1
                 1e-3 (Song et al. 2021b, sec. 4.3; score_sde's
                 ODE sampler, its optional denoising off)
  pc             `samplers.pc` (Song et al. 2021b, Alg. 2, 4)  T (1 + pc_n_corrector)  pc_snr, pc_n_corrector

Paired runs: every method starts from the x_T that `samplers.ddpm` / `samplers.ddim` draw from the same key,
``normal(split(key)[0])``: dpm_solver_pp, unipc and pc draw it so themselves; `ode.ode_sample` draws from its
prior with the whole key, so 'ode' is given `initial_noise` as ``x_init``. With one seed all methods sample from
the same noise (under `sampler_builders.per_example_sampler`, sample i from fold_in(key, i)). Parameterisations:
dpm_solver_pp / unipc take diffusion.mean_type and var_type themselves; for 'ode' the output (its eps / x0 /
v half of a learned-variance output) becomes a score (`ode.score_fn_from_model`, the model called at the
nearest integer index), for 'pc' an eps (`diffusion.predict_eps`). ``ValueError`` names a bad
value and what is allowed (`check_keys`, called by `sampler_builders.check_method`, so before any training).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections

from diffax import diffusion, dpm_solver, ode, samplers, unipc
from diffax._util import ModelFn, check_choice, check_int, check_number
from diffax.processes import VP
from diffax.schedules import Schedule

__all__ = ["SOLVER_METHODS", "ORDER_METHODS", "SOLVER_SAMPLING_KEYS", "DEFAULT_ORDER", "DEFAULT_SOLVER_STEPS",
           "Solve", "check_keys", "unread_sampling_keys", "initial_noise", "solver"]  # fmt: skip

SOLVER_METHODS = ("dpm_solver_pp", "unipc", "ode", "pc")
ORDER_METHODS = ("dpm_solver_pp", "unipc")  # the methods with a sampling.order
# sampling.* keys added for these methods (each read by the methods of `_READS` only).
SOLVER_SAMPLING_KEYS = ("order", "timestep_grid", "unipc_variant", "ode_rtol", "ode_atol", "pc_snr", "pc_n_corrector")
# The keys of the ddpm / ddim / annealed_langevin samplers that none of these methods reads.
_DISCRETE_ONLY_KEYS = ("eta", "spacing", "langevin_eps", "steps_per_level", "denoise")
_READS = {"dpm_solver_pp": ("num_steps", "clip_x0", "order", "timestep_grid"),
          "unipc": ("num_steps", "clip_x0", "order", "timestep_grid", "unipc_variant"),
          "ode": ("ode_rtol", "ode_atol"),
          "pc": ("pc_snr", "pc_n_corrector")}  # fmt: skip
DEFAULT_ORDER = 2  # sampling.order None: DPM-Solver++(2M) / UniPC-2, diffusers' defaults (solver_order=2)
DEFAULT_SOLVER_STEPS = 20  # sampling.num_steps None for dpm_solver_pp / unipc: 20 NFE (DPM-Solver++'s guided setting)

Solve = Callable[[ModelFn, jax.Array, tuple[int, ...]], jax.Array]


def unread_sampling_keys(method: str) -> tuple[str, ...]:
    """The sampling.* keys whose value cannot change the samples of ``method`` (left out of its sample
    fingerprint): for the solver methods the ddpm / ddim / Langevin keys and the solver keys of the others
    (num_steps and clip_x0 too for 'ode' / 'pc', which refuse them); for every other method the solver keys,
    so the fingerprint of a ddpm / ddim / ... run is the one it had before these keys existed."""
    if method not in SOLVER_METHODS:
        return SOLVER_SAMPLING_KEYS
    reads = _READS[method]
    return _DISCRETE_ONLY_KEYS + tuple(k for k in SOLVER_SAMPLING_KEYS + ("num_steps", "clip_x0") if k not in reads)


def check_keys(config: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
    """The solver keys ``method`` reads, validated (ValueError naming the value and what is allowed).

    sampling.order must be None for every method but 'dpm_solver_pp' / 'unipc' (no other has an order), and
    1, 2 or 3 for those; sampling.num_steps and clip_x0 must be None for 'ode' (adaptive steps; the score
    has no clipped form) and 'pc' (all T steps of the schedule; eps only)."""
    s = config.sampling
    if method not in ORDER_METHODS and s.order is not None:
        raise ValueError(f"sampling.order={s.order!r} applies to sampling.method 'dpm_solver_pp' / 'unipc' only; "
                         f"{method!r} has no order: leave sampling.order unset (None)")  # fmt: skip
    if method not in SOLVER_METHODS:
        return {}
    out: dict[str, Any] = {}
    if method in ORDER_METHODS:
        order = DEFAULT_ORDER if s.order is None else s.order
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"sampling.order must be 1, 2 or 3 (None: {DEFAULT_ORDER}) for sampling.method="
                             f"{method!r}, got {s.order!r}")  # fmt: skip
        T = config.diffusion.num_timesteps
        num_steps = DEFAULT_SOLVER_STEPS if s.num_steps is None else s.num_steps
        out.update(order=int(order), num_steps=check_int("sampling.num_steps", num_steps, 1, T),
                   spacing=check_choice("sampling.timestep_grid", s.timestep_grid, dpm_solver.SPACINGS))  # fmt: skip
        if method == "unipc":
            out["variant"] = check_choice("sampling.unipc_variant", s.unipc_variant, unipc.VARIANTS)
        return out
    for name in ("num_steps", "clip_x0"):
        if s[name] is not None:
            why = "it takes adaptive steps" if method == "ode" else "it runs all diffusion.num_timesteps steps"
            raise ValueError(f"sampling.{name}={s[name]!r} does not apply to sampling.method={method!r} ({why}"
                             f"{'' if name == 'num_steps' else '; the x_0 prediction is not clipped there'}): "
                             f"leave sampling.{name} unset (None)")  # fmt: skip
    if method == "ode":
        out.update(rtol=check_number("sampling.ode_rtol", s.ode_rtol, strict=True),
                   atol=check_number("sampling.ode_atol", s.ode_atol, strict=True))
    else:
        out.update(snr=check_number("sampling.pc_snr", s.pc_snr, strict=True),
                   n_corrector=check_int("sampling.pc_n_corrector", s.pc_n_corrector, 0))  # fmt: skip
    return out


def initial_noise(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """x_T ~ N(0, I) exactly as `samplers.ddpm` / `samplers.ddim` draw it from ``key``: ``normal(split(key)[0])``."""
    return jax.random.normal(jax.random.split(key)[0], shape, dtype=dtype)


def solver(config: ml_collections.ConfigDict, schedule: Schedule, method: str, clip_x0: float | None) -> Solve:
    """``solve(model_fn, key, shape) -> x_0`` of sampling.method ``method`` (one of `SOLVER_METHODS`; the table
    in the module docstring), for ``model_fn(x_t, t)`` in diffusion.mean_type's parameterisation (2C output
    channels for a learned diffusion.var_type), from x_T = normal(split(key)[0]) (module docstring), with
    ``clip_x0`` (validated by the caller) for 'dpm_solver_pp' / 'unipc'."""
    kw = check_keys(config, method)
    mean_type, var_type = config.diffusion.mean_type, config.diffusion.var_type
    dtype = schedule.betas.dtype

    def mean_part(model_fn: ModelFn) -> ModelFn:
        return lambda x, t: diffusion.split_variance_output(model_fn(x, t), var_type)[0]

    if method in ORDER_METHODS:
        fn = dpm_solver.dpm_solver_pp if method == "dpm_solver_pp" else unipc.unipc

        def solve(model_fn, key, shape):
            return fn(model_fn, schedule, key, shape, mean_type=mean_type, var_type=var_type, clip_x0=clip_x0, **kw)

    elif method == "ode":
        sde = VP.from_schedule(schedule)

        def solve(model_fn, key, shape):
            score_fn = ode.score_fn_from_model(mean_part(model_fn), schedule, mean_type=mean_type, time_input="round")
            x, _ = ode.ode_sample(score_fn, sde, key, shape, x_init=initial_noise(key, shape, dtype), **kw)
            return x

    else:
        def solve(model_fn, key, shape):
            out_fn = mean_part(model_fn)
            return samplers.pc(lambda x, t: diffusion.predict_eps(schedule, out_fn(x, t), x, t, mean_type), schedule,
                               key, shape, **kw)  # fmt: skip

    return solve
