"""Config -> training.objective 'score_sde': the process (sde.*), its loss and its samplers 'ode' / 'pc'.

One of the per-part config readers of `diffax.training.builders`; it calls the pure functions of
`diffax.score_sde` (Song et al. 2021, "Score-Based Generative Modeling through SDEs"):

  sde.process             'vp' (beta(t) = sde.beta_min + t (sde.beta_max - sde.beta_min)), 'vp_cosine' or
                          've' (sigma(t) = sde.sigma_min (sde.sigma_max / sde.sigma_min)^t): `score_sde.make_process`
  sde.t_eps               training times t ~ U(t_eps, T) (score_sde: 1e-5)
  sde.likelihood_weighting   lambda(t) = g(t)^2 instead of sigma(t)^2 (`score_sde.dsm_loss`)
  sde.sampling_eps        the samplers' last time (None: score_sde's 1e-3 for the VP family, 1e-5 for the VE)

  sampling.method   what it runs                                            sampling.* it reads
  'ode'             `ode.ode_sample` (probability-flow ODE, eq. 13), then   ode_rtol, ode_atol, denoise
                    `score_sde.tweedie_denoise` at sampling_eps (denoise)
  'pc'              `score_sde.pc_sample` (reverse diffusion + Langevin)    num_steps (None: 1000), pc_snr,
                                                                            pc_n_corrector, denoise
  'edm'             `edm.edm_sampler` on `score_sde.denoiser_from_score`    as for every 'edm' run
                    (`diffax.training.sampler_builders`; sigma range clipped to the process's
                    sigma/alpha at [sampling_eps, T])

``ValueError`` names a bad value and what is allowed; `check_keys` runs in `sampler_builders.check_method`, so
before any training.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from diffax import ode, score_sde
from diffax._util import check_choice, check_int, check_number
from diffax.processes import Process
from diffax.training import step

__all__ = ["SDE_METHODS", "DEFAULT_PC_STEPS", "SAMPLING_EPS", "build_process", "sampling_eps", "sigma_range",
           "score_sde_loss_fn", "build_loss_fn", "check_keys", "sampler"]  # fmt: skip

SDE_METHODS = ("ode", "edm", "pc")
DEFAULT_PC_STEPS = 1000  # sampling.num_steps None for 'pc': score_sde's N
# sde.sampling_eps None: score_sde's run_lib (`sampling_eps` 1e-3 for VP / sub-VP SDEs, 1e-5 for the VE).
SAMPLING_EPS = {"vp": 1e-3, "vp_cosine": 1e-3, "ve": 1e-5}


def build_process(config: ml_collections.ConfigDict) -> Process:
    """`score_sde.make_process` of sde.process with sde.beta_min / beta_max ('vp') or sigma_min / sigma_max ('ve')."""
    d = config.sde
    name = check_choice("sde.process", d.process, score_sde.PROCESSES)
    if name == "vp":
        lo = check_number("sde.beta_min", d.beta_min)
        hi = check_number("sde.beta_max", d.beta_max, strict=True)
        if not lo < hi:
            raise ValueError(f"sde.beta_min must be < sde.beta_max, got {lo:g}, {hi:g}")
        return score_sde.make_process(name, beta_min=lo, beta_max=hi)
    if name == "ve":
        lo = check_number("sde.sigma_min", d.sigma_min, strict=True)
        hi = check_number("sde.sigma_max", d.sigma_max, strict=True)
        if not lo < hi:
            raise ValueError(f"sde.sigma_min must be < sde.sigma_max, got {lo:g}, {hi:g}")
        return score_sde.make_process(name, sigma_min=lo, sigma_max=hi)
    return score_sde.make_process(name)


def _time(name: str, value: Any, process: Process) -> float:
    t = check_number(name, value, low=process.t_min, strict=True)
    if not t < process.t_max:
        raise ValueError(f"{name} must be in ({process.t_min:g}, {process.t_max:g}) (inside the process's time "
                         f"range), got {value!r}")
    return t


def sampling_eps(config: ml_collections.ConfigDict, process: Process) -> float:
    """sde.sampling_eps, None meaning `SAMPLING_EPS` of sde.process."""
    eps = config.sde.sampling_eps
    return _time("sde.sampling_eps", SAMPLING_EPS[config.sde.process] if eps is None else eps, process)


def sigma_range(config: ml_collections.ConfigDict, lo: float, hi: float) -> tuple[float, float]:
    """[lo, hi] (edm.sigma_min / sigma_max) clipped to EDM's sigma~ = sigma / alpha of the run's process at
    [sampling_eps, T] (`score_sde.edm_sigma`): the noise levels the network was trained at."""
    process = build_process(config)
    with jax.ensure_compile_time_eval():
        ts = jnp.asarray([sampling_eps(config, process), process.t_max])
        s_lo, s_hi = (float(v) for v in score_sde.edm_sigma(process, ts))
    return max(lo, s_lo), min(hi, s_hi)


def score_sde_loss_fn(apply_fn, process: Process, *, t_eps: float, likelihood_weighting: bool,
                      num_classes: int | None = None, p_uncond: float = 0.0) -> step.LossFn:
    """The batch mean of `score_sde.dsm_loss` as a `LossFn`, the network called as ``apply_fn({'params': p},
    x_t, time_input, y=y, ...)`` and made a score by `score_sde.score_fn_from_network`. The step key is split
    three ways: dropout, loss (t and z), label dropout (`step.drop_labels`, with p_uncond > 0). Metrics: 'loss'."""

    def loss_fn(params, key, batch, train):
        k_dropout, k_loss, k_label = jax.random.split(key, 3)
        y = batch.get("y") if num_classes is not None else None
        if y is not None and train and p_uncond > 0:
            y = step.drop_labels(k_label, y, p_uncond, num_classes)

        def net(x, time_input):
            return apply_fn({"params": params}, x, time_input, y=y, train=train, rngs={"dropout": k_dropout})

        score_fn = score_sde.score_fn_from_network(net, process)
        loss = jnp.mean(score_sde.dsm_loss(score_fn, process, k_loss, batch["x"], t_eps=t_eps,
                                           likelihood_weighting=likelihood_weighting))  # fmt: skip
        return loss, {"loss": loss}

    return loss_fn


def build_loss_fn(config: ml_collections.ConfigDict, model) -> step.LossFn:
    """`score_sde_loss_fn` of sde.* (process, t_eps, likelihood_weighting), model.num_classes, diffusion.p_uncond."""
    process = build_process(config)
    lw = config.sde.likelihood_weighting
    if not isinstance(lw, bool):
        raise ValueError(f"sde.likelihood_weighting must be True or False, got {lw!r}")
    return score_sde_loss_fn(model.apply, process, t_eps=_time("sde.t_eps", config.sde.t_eps, process),
                             likelihood_weighting=lw, num_classes=config.model.num_classes,
                             p_uncond=float(config.diffusion.p_uncond))  # fmt: skip


def check_keys(config: ml_collections.ConfigDict, method: str) -> dict[str, Any]:
    """The sampling.* keys of ``method`` for a 'score_sde' run, validated: sampling.order None (no method here
    has one); 'ode': num_steps and clip_x0 None (adaptive steps; no x_0 prediction to clip), ode_rtol / ode_atol
    > 0; 'pc': clip_x0 None, num_steps >= 1 (None: 1000), pc_snr > 0, pc_n_corrector >= 0; 'edm': its keys are
    checked where its sampler is built. Returns the keyword arguments of the method's function."""
    s = config.sampling
    if s.order is not None:
        raise ValueError(f"sampling.order={s.order!r} applies to 'dpm_solver_pp' / 'unipc' of 'diffusion' runs; "
                         f"sampling.method={method!r} has no order: leave sampling.order unset (None)")  # fmt: skip
    if method == "edm":
        return {}
    bad = ("num_steps", "clip_x0") if method == "ode" else ("clip_x0",)
    for name in bad:
        if s[name] is not None:
            why = "it takes adaptive steps" if name == "num_steps" else "the score has no clipped form"
            raise ValueError(f"sampling.{name}={s[name]!r} does not apply to sampling.method={method!r} of a "
                             f"'score_sde' run ({why}): leave sampling.{name} unset (None)")  # fmt: skip
    if not isinstance(s.denoise, bool):
        raise ValueError(f"sampling.denoise must be True or False, got {s.denoise!r}")
    if method == "ode":
        return dict(rtol=check_number("sampling.ode_rtol", s.ode_rtol, strict=True),
                    atol=check_number("sampling.ode_atol", s.ode_atol, strict=True))
    return dict(num_steps=DEFAULT_PC_STEPS if s.num_steps is None else check_int("sampling.num_steps", s.num_steps, 1),
                snr=check_number("sampling.pc_snr", s.pc_snr, strict=True),
                n_corrector=check_int("sampling.pc_n_corrector", s.pc_n_corrector, 0))  # fmt: skip


def sampler(config: ml_collections.ConfigDict, model, data_shape: tuple[int, ...], method: str,
            classifier=None) -> Callable:
    """sample_labeled(params, key, n, y) of sampling.method 'ode' / 'pc' for a 'score_sde' run (the module doc);
    the whole key goes to `ode.ode_sample` / `score_sde.pc_sample` (prior draw, then the steps), so under
    `sampler_builders.per_example_sampler` sample i depends on (seed, i) only. No guidance."""
    s = config.sampling
    if float(s.guidance_w) != 0 or float(s.classifier_scale) != 0 or classifier is not None:
        raise ValueError(f"sampling.method={method!r} of a 'score_sde' run has no guidance: set sampling.guidance_w=0 "
                         "and sampling.classifier_scale=0")  # fmt: skip
    if method not in ("ode", "pc"):
        raise ValueError(f"score_sde_builders.sampler builds 'ode' / 'pc', got {method!r} ('edm': sampler_builders)")
    kw = check_keys(config, method)
    process = build_process(config)
    eps, denoise = sampling_eps(config, process), bool(s.denoise)
    num_classes = config.model.num_classes
    data_shape = tuple(int(d) for d in data_shape)

    def sample_labeled(params, key: jax.Array, n: int, y) -> jax.Array:
        y_model = y if num_classes is not None else None

        def net(x, time_input):
            return model.apply({"params": params}, x, time_input, y=y_model, train=False)

        score_fn = score_sde.score_fn_from_network(net, process)
        shape = (n,) + data_shape
        if method == "pc":
            return score_sde.pc_sample(score_fn, process, key, shape, t_eps=eps, denoise=denoise, **kw)
        x, _ = ode.ode_sample(score_fn, process, key, shape, t_eps=eps, **kw)
        return score_sde.tweedie_denoise(score_fn, process, x, eps) if denoise else x

    return sample_labeled
