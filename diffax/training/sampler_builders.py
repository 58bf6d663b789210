"""Config -> the sampler: sampling.method and its steps, clipping, and guidance, as a pure function.

One of the per-part config readers of `diffax.training.builders` (which assembles them into an
`Experiment`); it validates sampling.* against the model and objective (``ValueError`` naming the bad
value and what is allowed). `per_example_sampler` turns a sampler into one whose sample i depends on
(key, i) only, the form every CLI sampling run uses.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffax import edm, flow_matching, guidance, samplers, schedules, score_sde
from diffax._util import check_choice, check_int, check_number
from diffax.schedules import Schedule
from diffax.training import score_sde_builders, solver_builders, step
from diffax.training.train_builders import FLOW_TIME_SCALE, build_sigmas, objective

__all__ = ["SAMPLING_METHODS", "METHODS_OF", "CONTINUOUS_METHODS", "CONTINUOUS_SAMPLING_KEYS", "SPACINGS",
           "SampleBatchFn", "build_sampler", "check_method", "labeled_sampler", "per_example_sampler",
           "edm_sigma_range"]  # fmt: skip

logger = logging.getLogger(__name__)

SAMPLING_METHODS = ("ddpm", "ddim", "annealed_langevin", "edm", "euler", "heun") + solver_builders.SOLVER_METHODS
# Which sampling.method samples which training.objective.
METHODS_OF = {"diffusion": ("ddpm", "ddim", "edm") + solver_builders.SOLVER_METHODS, "ncsn": ("annealed_langevin",),
              "edm": ("edm",), "flow_matching": ("euler", "heun", "edm"),
              "score_sde": score_sde_builders.SDE_METHODS}  # fmt: skip
CONTINUOUS_METHODS = ("edm", "euler", "heun")
# sampling.* keys read only by the continuous-time methods (left out of a discrete run's sample fingerprint).
CONTINUOUS_SAMPLING_KEYS = ("rho", "s_churn", "s_min", "s_max", "s_noise")
DEFAULT_CONTINUOUS_STEPS = 18  # sampling.num_steps None: EDM's CIFAR-10 setting (35 NFE with 'edm')
SPACINGS = ("leading", "linspace", "trailing")

SampleBatchFn = Callable[[Any, jax.Array, int], jax.Array]


def _check_clip(clip_x0: Any) -> float | None:
    if clip_x0 is None:
        return None
    if isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float)) or not (0 < clip_x0 < math.inf):
        raise ValueError(f"sampling.clip_x0 must be None (no clipping) or a finite number > 0, got {clip_x0!r} "
                         "(clip_x0 <= 0 would map every sample to -1)")  # fmt: skip
    return float(clip_x0)


def build_sampler(
    config: ml_collections.ConfigDict,
    model,
    schedule: Schedule,
    data_shape: tuple[int, ...],
    classifier: tuple[Any, Any] | None = None,
) -> SampleBatchFn:
    """``sample_fn(params, key, n) -> (n, *data_shape)`` samples of the model (not jitted; jit it).

    One key for the whole batch (`per_example_sampler` gives each sample its own key instead).
    sampling.method 'ddpm' (ancestral; respaced to sampling.num_steps with sampling.spacing if given,
    Nichol & Dhariwal 2021 sec. 4) or 'ddim' (eta = sampling.eta, Song et al. 2021); clip_x0 as in
    `diffusion.p_mean_variance`. A class-conditional model (model.num_classes = K) samples the labels
    i mod K, with classifier-free guidance if sampling.guidance_w != 0 (`diffax.guidance.classifier_free`,
    null class K; the model must have been trained with label dropout, diffusion.p_uncond > 0).
    ``classifier = (module, params)`` of a noise-aware classifier (K classes) with
    sampling.classifier_scale != 0: classifier guidance toward the labels i mod K, applied to the eps
    implied by the model's output whatever diffusion.mean_type is (`diffax.guidance.classifier`;
    Dhariwal & Nichol 2021, Algorithms 1-2).
    'annealed_langevin' (training.objective 'ncsn'): Song & Ermon 2019, Algorithm 1 over `build_sigmas`,
    from x ~ N(0, sigma_1^2 I) (the sigma_1-perturbed data is close to it when sigma_1 is large).
    'edm' (EDM Algorithm 2) and 'euler' / 'heun' (flow ODE): `_continuous_sampler`; `METHODS_OF` says which
    method samples which training.objective. A 'score_sde' run's 'ode' / 'pc': `score_sde_builders.sampler`.
    'dpm_solver_pp' (multistep DPM-Solver++, sampling.order 1-3, None = 2; sampling.num_steps = NFE, None = 20,
    on sampling.timestep_grid), 'unipc' (the same keys and sampling.unipc_variant), 'ode' (adaptive
    probability-flow ODE, sampling.ode_rtol / ode_atol) and 'pc' (VP predictor-corrector, sampling.pc_snr /
    pc_n_corrector) sample 'diffusion' runs through `solver_builders.solver`, with the same guidance and
    parameterisations as 'ddpm' / 'ddim' and from the x_T that 'ddpm' / 'ddim' draw from the same key
    (`solver_builders.initial_noise`), so runs of one seed with different methods are paired.
    """
    sample_labeled, num_labels = labeled_sampler(config, model, schedule, data_shape, classifier)

    def sample_fn(params, key: jax.Array, n: int) -> jax.Array:
        y = None if num_labels is None else jnp.arange(n, dtype=jnp.int32) % num_labels
        return sample_labeled(params, key, n, y)

    return sample_fn


def per_example_sampler(sample_labeled: Callable, num_labels: int | None) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """``sample_fn(params, key, indices) -> (len(indices), *data_shape)``: sample i drawn from its own key
    ``fold_in(key, i)`` for the label ``i mod num_labels``, so it depends on (key, i) only, not on which
    batch, device or process draws it (the batch is a `jax.vmap` over single-sample runs).
    ``sample_labeled(params, key, n, y)`` is `Experiment.sampler`'s function."""

    def sample_fn(params, key: jax.Array, indices: jax.Array) -> jax.Array:
        def one(i):
            y = None if num_labels is None else (i % num_labels).astype(jnp.int32)[None]
            return sample_labeled(params, jax.random.fold_in(key, i), 1, y)[0]

        return jax.vmap(one)(jnp.asarray(indices))

    return sample_fn


def check_method(config: ml_collections.ConfigDict) -> str:
    """sampling.method, checked against `SAMPLING_METHODS` and against training.objective (`METHODS_OF`; a
    noisy classifier has no sampler, any method passes), and the keys of the solver methods
    (`solver_builders.check_keys`: sampling.order only for 'dpm_solver_pp' / 'unipc', ...). `builders.build`
    calls it, so a run that could not sample is refused before it trains."""
    method = check_choice("sampling.method", config.sampling.method, SAMPLING_METHODS)
    obj = objective(config)
    if obj != "noisy_classifier" and method not in METHODS_OF[obj]:
        fits = "; ".join(f"{o!r} samples with {' / '.join(repr(m) for m in ms)}" for o, ms in METHODS_OF.items())
        raise ValueError(f"sampling.method={method!r} does not fit training.objective={obj!r}: {fits}")
    if obj == "score_sde":
        score_sde_builders.check_keys(config, method)  # its 'ode' / 'pc' read sampling.* their own way
    elif obj != "noisy_classifier":
        solver_builders.check_keys(config, method)  # sampling.order / timestep_grid / ... of the solver methods
    return method


def labeled_sampler(
    config: ml_collections.ConfigDict,
    model,
    schedule: Schedule,
    data_shape: tuple[int, ...],
    classifier: tuple[Any, Any] | None = None,
) -> tuple[Callable, int | None]:
    """(sample_labeled(params, key, n, y) -> x, K): the config's sampler for given labels y (n,) or None,
    and the number of labels K the samples are drawn for (None: unlabeled); `build_sampler` says what it draws.

    For the discrete-time methods ('ddpm', 'ddim' and `solver_builders.SOLVER_METHODS`) one guided
    ``model_fn(x_t, t)`` is built here (classifier-free guidance on the model's output, classifier guidance on
    the eps it implies; either way in diffusion.mean_type's parameterisation, a learned variance's half kept)
    and passed to the method: 'ddpm' / 'ddim' here, the others to `solver_builders.solver`'s ``solve``."""
    s = config.sampling
    obj = objective(config)
    if obj == "noisy_classifier":
        raise ValueError("training.objective='noisy_classifier' trains a classifier: it has no sampler (use it "
                         "through sampling.classifier_workdir of a diffusion config)")
    method = check_method(config)
    num_classes = config.model.num_classes
    data_shape = tuple(int(d) for d in data_shape)
    if obj == "score_sde" and method != "edm":
        return score_sde_builders.sampler(config, model, data_shape, method, classifier), num_classes
    if method in CONTINUOUS_METHODS:
        return _continuous_sampler(config, model, schedule, data_shape, obj, method, classifier), num_classes
    if method == "annealed_langevin":
        sigmas = build_sigmas(config)
        steps_per_level = check_int("sampling.steps_per_level", s.steps_per_level, 1)

        def langevin_fn(params, key: jax.Array, n: int, y) -> jax.Array:
            k_init, k_run = jax.random.split(key)
            x_init = sigmas[0] * jax.random.normal(k_init, (n,) + data_shape)
            score_fn = step.ncsn_score_fn(model.apply, {"params": params}, y=y)
            return samplers.annealed_langevin(score_fn, sigmas, k_run, x_init, eps=s.langevin_eps,
                                              steps_per_level=steps_per_level, denoise=s.denoise)  # fmt: skip

        return langevin_fn, num_classes
    mean_type, var_type = config.diffusion.mean_type, config.diffusion.var_type
    clip_x0 = _check_clip(s.clip_x0)
    solve = None  # dpm_solver_pp / unipc / ode / pc: `solver_builders.solver`; ddpm / ddim: the grid below
    if method in solver_builders.SOLVER_METHODS:
        solve = solver_builders.solver(config, schedule, method, clip_x0)
    else:
        num_steps, spacing, timesteps = _respacing(s, schedule)
    w, scale = float(s.guidance_w), float(s.classifier_scale)
    if not (math.isfinite(w) and math.isfinite(scale)):
        raise ValueError(f"sampling.guidance_w and sampling.classifier_scale must be finite, got {w}, {scale}")
    if w != 0 and num_classes is None:
        raise ValueError(f"sampling.guidance_w={w} needs a class-conditional model (model.num_classes), got None")
    if w != 0 and not config.diffusion.p_uncond > 0:
        raise ValueError(f"sampling.guidance_w={w} needs a model trained with label dropout (diffusion.p_uncond > 0, "
                         f"e.g. 0.1): with p_uncond={config.diffusion.p_uncond} its null label was never trained")
    if scale != 0 and classifier is None:
        raise ValueError(f"sampling.classifier_scale={scale} needs a classifier (sampling.classifier_workdir)")
    num_labels = num_classes
    if scale != 0:
        clf_module, clf_params = classifier
        num_labels = clf_module.num_classes

    def sample_labeled(params, key: jax.Array, n: int, y) -> jax.Array:
        y_model = y if num_classes is not None else None

        def eps_fn(x_t, t, labels):
            return model.apply({"params": params}, x_t, t, y=labels, train=False)

        def model_fn(x_t, t):
            return eps_fn(x_t, t, y_model)

        if w != 0:
            model_fn = guidance.classifier_free(eps_fn, y, w=w, null_label=num_classes)
        if scale != 0:
            def log_prob_fn(x_t, t, labels):
                logits = clf_module.apply({"params": clf_params}, x_t, t, train=False)
                logp = jax.nn.log_softmax(logits, axis=-1)
                return jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]

            model_fn = guidance.classifier(model_fn, log_prob_fn, schedule, y, scale=scale, mean_type=mean_type)

        shape = (n,) + data_shape
        if solve is not None:
            return solve(model_fn, key, shape)
        if method == "ddpm":
            return samplers.ddpm(model_fn, schedule, key, shape, mean_type=mean_type, var_type=var_type,
                                 clip_x0=clip_x0, timesteps=timesteps)  # fmt: skip
        return samplers.ddim(model_fn, schedule, key, shape, num_steps=num_steps, spacing=spacing, eta=s.eta,
                             mean_type=mean_type, var_type=var_type, clip_x0=clip_x0)  # fmt: skip

    return sample_labeled, num_labels


def _respacing(s: ml_collections.ConfigDict, schedule: Schedule) -> tuple[int, str, np.ndarray | None]:
    """(num_steps, spacing, timesteps) of 'ddpm' / 'ddim': sampling.num_steps (None = T) indices spaced by
    sampling.spacing (`schedules.space_timesteps`; None for all T), with a warning where 'leading' starts
    below T - 1."""
    T = schedule.num_timesteps
    num_steps = T if s.num_steps is None else check_int("sampling.num_steps", s.num_steps, 1)
    if num_steps > T:
        raise ValueError(f"sampling.num_steps must be <= diffusion.num_timesteps={T}, got {num_steps}")
    spacing = check_choice("sampling.spacing", s.spacing, SPACINGS)
    timesteps = None if num_steps == T else schedules.space_timesteps(T, num_steps, spacing)
    if timesteps is not None and spacing == "leading" and T % num_steps:
        first, abar = int(timesteps[-1]), np.asarray(schedule.alphas_cumprod, np.float64)
        logger.warning(
            "sampling.spacing='leading' with sampling.num_steps=%d of diffusion.num_timesteps=%d: N does not divide "
            "T, so the stride is T // N = %d and sampling starts at step %d (alpha-bar %.2g), not at T - 1 = %d "
            "(alpha-bar %.2g); this is diffusers' 'leading': 'trailing' or 'linspace' start at T - 1",
            num_steps, T, T // num_steps, first, abar[first], T - 1, abar[-1])  # fmt: skip
    return num_steps, spacing, timesteps


def edm_sigma_range(config: ml_collections.ConfigDict, schedule: Schedule, obj: str) -> tuple[float, float]:
    """(sigma_min, sigma_max) of sampling.method 'edm': edm.sigma_min / sigma_max, for a 'diffusion' run clipped
    to the schedule's sigma_k = sqrt(1 / abar_k - 1), k = 0..T-1 (NVlabs generate.py clamps to the network's
    sigma range the same way: there is no sigma outside it to round to); for a 'score_sde' run clipped to
    its process's sigma / alpha at [sde.sampling_eps, T] (`score_sde_builders.sigma_range`)."""
    lo = check_number("edm.sigma_min", config.edm.sigma_min)
    hi = check_number("edm.sigma_max", config.edm.sigma_max)
    if obj == "diffusion":
        sig = np.sqrt(1.0 / np.asarray(schedule.alphas_cumprod, np.float64) - 1.0)
        lo, hi = max(lo, float(sig[0])), min(hi, float(sig[-1]))
    if obj == "score_sde":
        lo, hi = score_sde_builders.sigma_range(config, lo, hi)
    if not (0 < lo < hi):
        raise ValueError(f"sampling.method='edm' needs 0 < sigma_min < sigma_max, got {lo:g}, {hi:g} (edm.sigma_min, "
                         "edm.sigma_max" + (", clipped to the schedule's sigma range)" if obj == "diffusion" else ")"))
    return lo, hi


def _continuous_sampler(config, model, schedule: Schedule, data_shape: tuple[int, ...], obj: str, method: str,
                        classifier) -> Callable:
    """sample_labeled(params, key, n, y) of sampling.method 'edm' / 'euler' / 'heun' (see `labeled_sampler`).

    The key is split into (latents, churn): latents ~ N(0, I) of shape (n, *data_shape), the churn key
    given to `diffax.edm.edm_sampler` only when s_churn > 0 (step i's noise: fold_in(churn key, i)); so a
    per-example key (`per_example_sampler`) makes sample i depend on (seed, i) only.
    The denoiser D(x; sigma) of 'edm': the preconditioned network ('edm' runs), `edm.denoiser_from_discrete`
    ('diffusion' runs; diffusion.mean_type, a learned variance's half dropped), for 'flow_matching' runs
    `flow_matching.denoiser_from_velocity`, for 'score_sde' runs `score_sde.denoiser_from_score`.
    """
    s = config.sampling
    if float(s.guidance_w) != 0 or float(s.classifier_scale) != 0 or classifier is not None:
        raise ValueError(f"sampling.method={method!r} has no guidance: set sampling.guidance_w=0 and "
                         "sampling.classifier_scale=0 (guidance works with the discrete-time methods 'ddpm' / "
                         "'ddim' / 'dpm_solver_pp' / 'unipc' / 'ode' / 'pc')")
    num_steps = DEFAULT_CONTINUOUS_STEPS if s.num_steps is None else check_int("sampling.num_steps", s.num_steps,
                                                                                 2 if method == "edm" else 1)
    clip_x0 = _check_clip(s.clip_x0)
    if clip_x0 is not None and method != "edm":
        raise ValueError(f"sampling.clip_x0={clip_x0} applies to 'ddpm' / 'ddim' / 'edm' (it clips the x_0 "
                         f"prediction), not to the flow ODE of {method!r}: leave sampling.clip_x0 unset")
    num_classes = config.model.num_classes
    if method == "edm":
        sigma_min, sigma_max = edm_sigma_range(config, schedule, obj)
        churn = check_number("sampling.s_churn", s.s_churn)
        kw = dict(num_steps=num_steps, sigma_min=sigma_min, sigma_max=sigma_max,
                  rho=check_number("sampling.rho", s.rho, low=1e-12), S_churn=churn, S_min=check_number("sampling.s_min", s.s_min),
                  S_max=math.inf if s.s_max is None else check_number("sampling.s_max", s.s_max, allow_inf=True),
                  S_noise=check_number("sampling.s_noise", s.s_noise))  # fmt: skip
        edm.edm_sigmas(num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=kw["rho"])  # validates the grid

    def sample_labeled(params, key: jax.Array, n: int, y) -> jax.Array:
        y_model = y if num_classes is not None else None
        k_latents, k_churn = jax.random.split(key)
        latents = jax.random.normal(k_latents, (n,) + data_shape)

        def net(x, t):
            return model.apply({"params": params}, x, t, y=y_model, train=False)

        if method in ("euler", "heun"):
            solver = flow_matching.flow_euler if method == "euler" else flow_matching.flow_heun
            return solver(lambda x, t: net(x, FLOW_TIME_SCALE * t), latents, num_steps=num_steps)
        if obj == "edm":
            denoise_fn = net
        elif obj == "diffusion":
            denoise_fn = edm.denoiser_from_discrete(net, schedule, mean_type=config.diffusion.mean_type)
        elif obj == "score_sde":
            process = score_sde_builders.build_process(config)
            denoise_fn = score_sde.denoiser_from_score(score_sde.score_fn_from_network(net, process), process)
        else:
            denoise_fn = flow_matching.denoiser_from_velocity(lambda x, t: net(x, FLOW_TIME_SCALE * t))
        if clip_x0 is not None:
            unclipped = denoise_fn

            def denoise_fn(x, sigma):
                return jnp.clip(unclipped(x, sigma), -clip_x0, clip_x0)

        return edm.edm_sampler(denoise_fn, latents, key=k_churn if churn > 0 else None, **kw)

    return sample_labeled
