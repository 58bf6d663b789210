"""Samplers: DDPM ancestral sampling, DDIM, Langevin, annealed Langevin, predictor-corrector.

Every sampler is ONE ``jax.lax.scan`` over its steps. The carry holds only the current x, so
memory is flat in the number of steps unless ``return_trajectory=True``, in which case the scan
also stacks the states and the sampler returns ``(x_final, trajectory)`` with
``trajectory[0]`` the initial state, ``trajectory[i]`` the state after i steps and
``trajectory[-1] == x_final`` (shape ``(num_steps + 1, *shape)``); otherwise it returns
``x_final`` alone.

Randomness: all step keys are split from ``key`` up front (``jax.random.split``), so the same key
gives bitwise the same samples. For the diffusion samplers ``key`` is first split into
``(key_init, key_steps)``; ``key_init`` draws x_T ~ N(0, I) and ``x_init`` (if given) replaces
that draw only, leaving the per-step noise unchanged.

Static arguments (``shape``, step counts, timestep subsequences, string options) are resolved in
Python before tracing, so any sampler runs under the caller's ``jax.jit``, e.g.
``jax.jit(lambda k: samplers.ddpm(model_fn, s, k, (B, D)))``. The library never jits.

Model conventions: ``model_fn(x_t, t) -> output`` with ``t`` an int32 array of shape (B,), B =
``shape[0]``; the output is an eps, x0 or v prediction (``mean_type``), with 2C channels on the
last axis for learned variances (``var_type`` 'learned' / 'learned_range').
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffax import diffusion, schedules
from diffax._util import (
    ModelFn,
    alphas_cumprod_on_grid,
    batch_t,
    check_choice,
    check_int,
    check_positive,
    check_shape,
    expand_to,
    initial_x,
    resolve_timesteps,
    scan_trajectory,
)
from diffax.diffusion import ClipX0
from diffax.schedules import Schedule

Array = jnp.ndarray

DDIM_SPACINGS = ("leading", "linspace", "trailing")

__all__ = ["ddpm", "ddim", "ddim_timesteps", "ddim_sigmas", "langevin", "annealed_langevin", "pc", "DDIM_SPACINGS"]


# --------------------------------------------------------------------------- DDPM


def ddpm(
    model_fn: ModelFn,
    s: Schedule,
    key: Array,
    shape: tuple[int, ...],
    *,
    x_init: Array | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: ClipX0 = None,
    timesteps=None,
    return_trajectory: bool = False,
):
    """Ancestral sampling of p_theta (Ho et al. 2020, Algorithm 2).

    From x_T ~ N(0, I), for t = T-1, ..., 0 (0-based index; the paper's t+1):
        x_{t-1} = mean_theta(x_t, t) + sigma_t z,   z ~ N(0, I),  and no noise at t = 0,
    where (mean, log sigma_t^2) = `diffusion.p_mean_variance(s, model_fn(x_t, t), x_t, t, ...)`,
    i.e. mean = coef1_t pred_x0 + coef2_t x_t (eqs. 7, 11) and sigma_t^2 from ``var_type``
    (beta-tilde_t for 'fixed_small', beta_t for 'fixed_large', or the model's learned variance,
    Nichol & Dhariwal 2021, eq. 15).

    ``timesteps`` (an ascending subsequence tau_0 < ... < tau_{K-1} of {0..T-1}) samples the
    K-step respaced chain ``schedules.respace(s, timesteps)`` (improved-diffusion's respacing,
    Nichol & Dhariwal 2021, sec. 4) while calling ``model_fn`` with the ORIGINAL index tau_k, so a
    model (learned variance included) trained on T steps is sampled in K. With ``timesteps`` the
    schedule must be concrete (it is respaced in NumPy); without, ``s`` may also be traced.

    Args:
      model_fn: (x_t, t) -> output, t int32 of shape (B,).
      s: the schedule the model was trained on.
      key: PRNG key (split into x_T's key and one key per step).
      shape: the sample shape, batch first.
      x_init: replaces the drawn x_T (same shape).
      mean_type: 'eps' | 'x0' | 'v';  var_type: 'fixed_small' | 'fixed_large' | 'learned' | 'learned_range'.
      clip_x0: None, a bound c (pred_x0 clipped to [-c, c]) or a function of pred_x0.
      return_trajectory: also return the (K+1, *shape) stack of states, x_T first.

    Returns:
      x_0 of `shape`, or (x_0, trajectory).
    """
    check_choice("mean_type", mean_type, diffusion.MEAN_TYPES)
    check_choice("var_type", var_type, diffusion.VAR_TYPES)
    shape = check_shape(shape)
    if timesteps is None:
        s_run = s
        model_ts = np.arange(s.num_timesteps, dtype=np.int32)
    else:
        model_ts = np.asarray(timesteps)
        s_run = schedules.respace(s, model_ts)  # validates: strictly increasing ints in [0, T-1]
        model_ts = model_ts.astype(np.int32)
    num_steps = int(model_ts.shape[0])
    batch = shape[0]

    key_init, key_steps = jax.random.split(key)
    x = initial_x(key_init, shape, s_run.betas.dtype, x_init)
    xs = (
        jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32),  # index k in the (respaced) chain
        jnp.asarray(model_ts[::-1].copy()),  # the index the model sees
        jax.random.split(key_steps, num_steps),
    )

    def step(x, inp):
        k, model_t, step_key = inp
        out = model_fn(x, batch_t(model_t, batch))
        # A scalar index: one table lookup per step, broadcast, instead of a gather of B entries.
        pmv = diffusion.p_mean_variance(
            s_run, out, x, k, mean_type=mean_type, var_type=var_type, clip_x0=clip_x0
        )
        noise = jax.random.normal(step_key, x.shape, dtype=x.dtype)
        sigma = jnp.where(k > 0, jnp.exp(0.5 * pmv["log_variance"]), 0.0)
        return (pmv["mean"] + sigma * noise).astype(x.dtype)

    return scan_trajectory(step, x, xs, return_trajectory)


# --------------------------------------------------------------------------- DDIM


def ddim_timesteps(
    s: Schedule, num_steps: int | None = None, spacing: str = "leading", *, timesteps=None
) -> np.ndarray:
    """The ASCENDING subsequence tau of {0..T-1} that `ddim` visits (NumPy, resolved before tracing).

    ``timesteps`` if given (strictly monotone ints in [0, T-1], either order), else
    ``schedules.space_timesteps(T, num_steps, spacing)``, else (both None) all T indices; passing
    both is an error. ``spacing`` is one of `DDIM_SPACINGS`.
    """
    check_choice("spacing", spacing, DDIM_SPACINGS)
    return resolve_timesteps(s.num_timesteps, num_steps, timesteps, spacing)


def ddim_sigmas(s: Schedule, timesteps, eta) -> tuple[Array, Array, Array]:
    """DDIM's per-step (alpha-bar_t, alpha-bar_prev, sigma) on an ascending subsequence tau.

    For step k (from tau_k to tau_{k-1}; alpha-bar_prev = 1 after the last step, k = 0):
        sigma_k = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    (Song et al. 2021, eq. 16). With all T steps and eta = 1, sigma_k^2 equals DDPM's posterior
    variance beta-tilde_t. Arrays of shape (K,), in ascending order of tau.
    """
    abar, abar_prev = alphas_cumprod_on_grid(s, timesteps)
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar)) * jnp.sqrt(1.0 - abar / abar_prev)
    return abar, abar_prev, sigma.astype(abar.dtype)


def ddim(
    model_fn: ModelFn,
    s: Schedule,
    key: Array,
    shape: tuple[int, ...],
    *,
    num_steps: int | None = None,
    timesteps=None,
    spacing: str = "leading",
    eta: float = 0.0,
    x_init: Array | None = None,
    mean_type: str = "eps",
    var_type: str = "fixed_small",
    clip_x0: ClipX0 = None,
    return_trajectory: bool = False,
):
    """DDIM sampling (Song et al. 2021, eq. 12) on a subsequence tau of {0..T-1}.

    For tau_k = t with predecessor tau_{k-1} = t' (abar_prev = abar_{t'}, and 1 after the last step):
        x0_hat = pred_x0(x_t),  eps_hat = the eps implied by x0_hat (after clipping),
        x_{t'} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
        sigma  = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev)   (eq. 16).
    eta = 0 is the deterministic DDIM; eta = 1 with all T steps is DDPM with beta-tilde (the same
    chain as `ddpm(var_type='fixed_small')`). For eta > 1 the direction term is clipped at 0.

    The subsequence: ``timesteps`` if given (strictly monotone, ascending or descending: DDIM
    always runs from the largest to the smallest), else ``schedules.space_timesteps(T, num_steps,
    spacing)``, else (both None) all T steps. ``var_type`` only tells how to split a
    learned-variance output (2C channels: the first half is used); the variance itself is eta's.

    Returns x_0 of `shape`, or (x_0, trajectory) with trajectory (K+1, *shape), x_T first.
    """
    check_choice("mean_type", mean_type, diffusion.MEAN_TYPES)
    check_choice("var_type", var_type, diffusion.VAR_TYPES)
    check_positive("eta", eta, allow_zero=True)
    shape = check_shape(shape)
    if num_steps is not None:
        num_steps = check_int("num_steps", num_steps, 1)
    ts = ddim_timesteps(s, num_steps, spacing, timesteps=timesteps)
    batch = shape[0]

    abar, abar_prev, sigma = ddim_sigmas(s, ts, eta)
    dir_coef = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0))
    # eta == 0 known statically: the deterministic sampler draws no step noise at all.
    stochastic = isinstance(eta, jax.core.Tracer) or float(eta) != 0.0
    key_init, key_steps = jax.random.split(key)
    x = initial_x(key_init, shape, s.betas.dtype, x_init)
    xs = (
        jnp.asarray(ts[::-1].astype(np.int32)),
        jnp.sqrt(abar_prev)[::-1],
        dir_coef[::-1],
        sigma[::-1],
        jax.random.split(key_steps, ts.shape[0]) if stochastic else None,
    )

    def step(x, inp):
        t, sqrt_abar_prev, c_dir, sig, step_key = inp
        out, _ = diffusion.split_variance_output(model_fn(x, batch_t(t, batch)), var_type)
        # pred_x0 (clipped) and the eps it implies; XLA drops the unused DDPM mean and variance.
        # t as a scalar: one table lookup per step, broadcast against x.
        pmv = diffusion.p_mean_variance(s, out, x, t, mean_type=mean_type, clip_x0=clip_x0)
        x_prev = sqrt_abar_prev * pmv["pred_x0"] + c_dir * pmv["pred_eps"]
        if stochastic:
            x_prev = x_prev + sig * jax.random.normal(step_key, x.shape, dtype=x.dtype)
        return x_prev.astype(x.dtype)

    return scan_trajectory(step, x, xs, return_trajectory)


# --------------------------------------------------------------------------- Langevin


def langevin(
    score_fn: Callable[[Array], Array],
    key: Array,
    x_init: Array,
    *,
    step_size: float,
    num_steps: int,
    return_trajectory: bool = False,
):
    """Unadjusted Langevin dynamics (Roberts & Tweedie 1996; Welling & Teh 2011):

        x <- x + eps * score(x) + sqrt(2 eps) z,   z ~ N(0, I),  eps = step_size,

    which targets the density whose score is `score_fn` (up to an O(eps) discretization bias).
    One key per step is split from `key`. Returns x after `num_steps` steps, or
    (x, trajectory) with trajectory (num_steps + 1, *x_init.shape), x_init first.
    """
    check_positive("step_size", step_size)
    num_steps = check_int("num_steps", num_steps, 1)
    x = jnp.asarray(x_init)

    def step(x, step_key):
        noise = jax.random.normal(step_key, x.shape, dtype=x.dtype)
        return (x + step_size * score_fn(x) + jnp.sqrt(2.0 * step_size) * noise).astype(x.dtype)

    return scan_trajectory(step, x, jax.random.split(key, num_steps), return_trajectory)


def annealed_langevin(
    score_fn: Callable[[Array, Array], Array],
    sigmas: Array,
    key: Array,
    x_init: Array,
    *,
    eps: float,
    steps_per_level: int,
    denoise: bool = False,
    return_trajectory: bool = False,
):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1), the paper's exact form:

        for i = 1..L (sigma_1 > ... > sigma_L):  alpha_i = eps * sigma_i^2 / sigma_L^2
            repeat steps_per_level times:   x <- x + (alpha_i / 2) score(x, sigma_i) + sqrt(alpha_i) z.

    Note the official NCSN code writes the same update as x + a grad + sqrt(2 a) z with
    a = step_lr * (sigma_i / sigma_L)^2, i.e. a = alpha_i / 2: the paper's eps is twice the
    code's ``step_lr`` (e.g. step_lr = 2e-5 there is eps = 4e-5 here).
    ``score_fn(x, sigma)`` gets sigma as an array of shape (B,) filled with the current level.
    ``denoise=True`` ends with one Tweedie step x <- x + sigma_L^2 score(x, sigma_L)
    (Jolicoeur-Martineau et al. 2021), i.e. E[x_0 | x] under the sigma_L perturbation.

    One scan over all L * steps_per_level steps. Returns the final x, or (x, trajectory) where
    the trajectory (L * steps_per_level + 1, *x_init.shape) holds the Langevin states (x_init
    first; the denoising step, if any, is applied to the returned x only).
    """
    check_positive("eps", eps)
    steps_per_level = check_int("steps_per_level", steps_per_level, 1)
    sigmas = jnp.asarray(sigmas)
    if sigmas.ndim != 1 or sigmas.shape[0] < 1:
        raise ValueError(f"sigmas must be a non-empty 1-D array, got shape {sigmas.shape}")
    if not isinstance(sigmas, jax.core.Tracer):
        sig_np = np.asarray(sigmas, dtype=np.float64)
        if not (np.all(np.isfinite(sig_np)) and np.all(sig_np > 0) and np.all(np.diff(sig_np) <= 0)):
            raise ValueError(f"sigmas must be positive, finite and non-increasing, got {sig_np.tolist()}")
    x = jnp.asarray(x_init)
    batch = x.shape[0]
    num_levels = sigmas.shape[0]
    total = num_levels * steps_per_level
    level_sigma = jnp.repeat(sigmas, steps_per_level, total_repeat_length=total).astype(x.dtype)
    alpha = eps * level_sigma**2 / level_sigma[-1] ** 2

    def step(x, inp):
        sig, a, step_key = inp
        noise = jax.random.normal(step_key, x.shape, dtype=x.dtype)
        score = score_fn(x, jnp.full((batch,), sig, dtype=x.dtype))
        return (x + 0.5 * a * score + jnp.sqrt(a) * noise).astype(x.dtype)

    result = scan_trajectory(step, x, (level_sigma, alpha, jax.random.split(key, total)), return_trajectory)
    if not denoise:
        return result
    x_last, traj = result if return_trajectory else (result, None)
    sig_l = jnp.full((batch,), level_sigma[-1], dtype=x.dtype)
    sig_l_b = expand_to(sig_l, x.ndim)
    x_den = (x_last + sig_l_b**2 * score_fn(x_last, sig_l)).astype(x.dtype)
    return (x_den, traj) if return_trajectory else x_den


# --------------------------------------------------------------------------- predictor-corrector


def pc(
    model_fn: ModelFn,
    s: Schedule,
    key: Array,
    shape: tuple[int, ...],
    *,
    snr: float = 0.16,
    n_corrector: int = 1,
    x_init: Array | None = None,
    return_trajectory: bool = False,
):
    """Predictor-corrector sampling for the VP diffusion (Song et al. 2021b, Algorithms 2 and 4).

    ``model_fn`` predicts eps; the score is ``diffusion.eps_to_score`` = -eps / sqrt(1 - abar_t).
    For t = T-1, ..., 0, as score_sde's ``pc_sampler`` does (corrector, then predictor):
      corrector (n_corrector Langevin steps, Algorithm 4):
          g = score(x, t), z ~ N(0, I),  eps = 2 alpha_t (snr ||z|| / ||g||)^2,
          x <- x + eps g + sqrt(2 eps) z,
        with ||.|| the per-example L2 norm averaged over the batch (as score_sde does);
      predictor (ancestral sampling, eq. 47; = DDPM's eps-mean with variance beta_t):
          x <- (x + beta_t score(x, t)) / sqrt(alpha_t) + sqrt(beta_t) z,  no noise at t = 0.

    One scan over the T timesteps (the correctors are an inner scan). Returns x_0, or (x_0,
    trajectory) with trajectory (T+1, *shape), x_T first.
    """
    check_positive("snr", snr)
    n_corrector = check_int("n_corrector", n_corrector, 0)
    shape = check_shape(shape)
    batch = shape[0]
    T = s.num_timesteps

    key_init, key_steps = jax.random.split(key)
    x = initial_x(key_init, shape, s.betas.dtype, x_init)
    flat_keys = jax.random.split(key_steps, T * (n_corrector + 1))
    step_keys = flat_keys.reshape((T, n_corrector + 1) + flat_keys.shape[1:])  # raw or typed keys
    xs = (jnp.arange(T - 1, -1, -1, dtype=jnp.int32), step_keys)
    red_axes = tuple(range(1, len(shape)))

    def norm(v):
        return jnp.mean(jnp.sqrt(jnp.sum(v**2, axis=red_axes)))

    def step(x, inp):
        t, keys = inp
        t_b = batch_t(t, batch)
        alpha_t = s.alphas[t]

        def corrector(x, c_key):
            g = diffusion.eps_to_score(s, x, t, model_fn(x, t_b))
            z = jax.random.normal(c_key, x.shape, dtype=x.dtype)
            eps = 2.0 * alpha_t * (snr * norm(z) / norm(g)) ** 2
            return (x + eps * g + jnp.sqrt(2.0 * eps) * z).astype(x.dtype), None

        x, _ = jax.lax.scan(corrector, x, keys[:n_corrector])
        pmv = diffusion.p_mean_variance(s, model_fn(x, t_b), x, t, mean_type="eps", var_type="fixed_large")
        z = jax.random.normal(keys[n_corrector], x.shape, dtype=x.dtype)
        sigma = jnp.where(t > 0, jnp.sqrt(s.betas[t]), 0.0)
        return (pmv["mean"] + sigma * z).astype(x.dtype)

    return scan_trajectory(step, x, xs, return_trajectory)


# DPM-Solver++(2M) lives in its own module (one concept per module); re-exported here so that every
# sampler is reachable as `diffax.samplers.<name>`.
from diffax.dpm_solver import dpm_solver_pp_2m  # noqa: E402,F401
