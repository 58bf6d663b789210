"""Continuous-time denoising score matching on a VP / cosine-VP / VE process (score_sde's objectives) and its samplers.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative Modeling through Stochastic
Differential Equations", ICLR 2021 (reference code yang-song/score_sde: `losses.get_sde_loss_fn`,
`models/utils.get_score_fn`, `sampling.py`). The process is one of `diffax.processes`: x_t = alpha(t) x_0 +
sigma(t) z, z ~ N(0, I), the marginal of the SDE dx = f(t) x dt + g(t) dw (eq. 5; VP eq. 11, VE eq. 9;
f = alpha'/alpha, g^2 = d(sigma^2)/dt - 2 f sigma^2, `processes.Process.pf_coefs`).

Objective (eq. 7 with the Gaussian transition kernel, continuous t; `dsm_loss`):

    t ~ U(t_eps, T),  z ~ N(0, I),  x_t = alpha(t) x_0 + sigma(t) z,
    lambda(t) = sigma(t)^2:           l = mean over dims (sigma s(x_t, t) + z)^2           (score_sde's default)
    lambda(t) = g(t)^2 (likelihood):  l = mean over dims (s(x_t, t) + z / sigma)^2 g(t)^2
                                      (Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood Training of
                                      Score-Based Diffusion Models", Thm. 1: a bound on the KL / -log p)

with t_eps = 1e-5 and T = the process's t_max. The target -z / sigma is grad log q(x_t | x_0); the minimiser
over s is the marginal score grad log p_t (Vincent 2011), where the unweighted loss equals E_t E[Var(z | x_t)]
per dimension.

Network parameterisation (`score_fn_from_network`; score_sde's `get_score_fn` with continuous=True):

    VP, cosine VP  the network F is an eps-prediction with time input 999 t:   s(x, t) = -F(x, 999 t) / sigma(t)
    VE             NCSN++'s scale_by_sigma: the output divided by sigma, time input log sigma(t):
                   s(x, t) = F(x, log sigma(t)) / sigma(t)

score_sde's NCSN++ gets sigma(t) and embeds log sigma with Gaussian Fourier features; diffax's networks embed
their time input sinusoidally, and log sigma is what `diffax.training.step.ncsn_score_fn` gives the same
networks for NCSN. The network sees x_t unscaled, as in score_sde.

Samplers on a trained score: the probability-flow ODE (eq. 13; `diffax.ode.ode_sample`) with a final Tweedie
step (`tweedie_denoise`), EDM's Heun sampler through `denoiser_from_score`, and the predictor-corrector sampler
(`pc_sample`: reverse-diffusion predictor, eq. 47, Langevin corrector; App. E, G, Algorithms 1-5).

Conventions: ``score_fn(x, t) -> score`` with x batch-first and t of shape (B,). Pure JAX; nothing jits.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffax._util import check_int, expand_to, mean_flat
from diffax.processes import VE, VP, CosineVP, Process, ve, vp_cosine, vp_linear

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
NetFn = Callable[[Array, Array], Array]

__all__ = ["PROCESSES", "VP_TIME_SCALE", "make_process", "network_time", "score_from_output",
           "score_fn_from_network", "sample_t", "dsm_loss", "edm_sigma", "t_of_edm_sigma", "denoiser_from_score",
           "tweedie_denoise", "pc_sample"]  # fmt: skip

PROCESSES = ("vp", "vp_cosine", "ve")
VP_TIME_SCALE = 999.0  # score_sde's continuous VP labels t * 999 (`models/utils.get_score_fn`)


def make_process(name: str, *, beta_min: float = 0.1, beta_max: float = 20.0, sigma_min: float = 0.01,
                 sigma_max: float = 50.0) -> Process:
    """The process named ``name``: 'vp' (`processes.vp_linear(beta_min, beta_max)`, score_sde's VPSDE, eq. 11 /
    33), 'vp_cosine' (`processes.vp_cosine()`) or 've' (`processes.ve(sigma_min, sigma_max)`, VESDE, eq. 9 / 30)."""
    if name == "vp":
        return vp_linear(beta_min, beta_max)
    if name == "vp_cosine":
        return vp_cosine()
    if name == "ve":
        return ve(sigma_min, sigma_max)
    raise ValueError(f"unknown score-SDE process {name!r}; allowed: {list(PROCESSES)}")


def _is_ve(process: Process) -> bool:
    """True for the VE (score output), False for the VP family (eps output); ValueError for other processes."""
    if isinstance(process, VE):
        return True
    if isinstance(process, (VP, CosineVP)):
        return False
    raise ValueError(f"score_sde's objectives are defined on the VP, cosine VP and VE processes, got "
                     f"{type(process).__name__} (EDM and rectified flow have their own: diffax.edm, "
                     "diffax.flow_matching)")


def network_time(process: Process, t: Array) -> Array:
    """The network's time input at t: 999 t (VP family) or log sigma(t) (VE); see the module doc."""
    if _is_ve(process):
        return jnp.log(process.sigma(t))
    return VP_TIME_SCALE * jnp.asarray(t)


def score_from_output(process: Process, out: Array, t: Array) -> Array:
    """The score of a network output at t of shape (B,): -out / sigma(t) (VP family, eps-network) or
    out / sigma(t) (VE, NCSN++'s scale_by_sigma)."""
    sign = 1.0 if _is_ve(process) else -1.0
    return sign * out / expand_to(process.sigma(t).astype(out.dtype), out.ndim)


def score_fn_from_network(net_fn: NetFn, process: Process) -> ScoreFn:
    """``score_fn(x, t) = score_from_output(process, net_fn(x, network_time(process, t)), t)``:
    score_sde's `get_score_fn(continuous=True)` for ``net_fn(x, time_input) -> output``."""

    def score_fn(x: Array, t: Array) -> Array:
        return score_from_output(process, net_fn(x, network_time(process, t).astype(x.dtype)), t)

    return score_fn


def _check_t_eps(process: Process, t_eps: float) -> float:
    ok = isinstance(t_eps, (int, float)) and not isinstance(t_eps, bool)
    if not (ok and process.t_min < t_eps < process.t_max):
        raise ValueError(f"t_eps must be a float in ({process.t_min}, {process.t_max}) (inside the process's time "
                         f"range: sigma(t_min) may be 0), got {t_eps!r}")
    return float(t_eps)


def sample_t(key: Array, n: int, process: Process, t_eps: float = 1e-5, dtype=jnp.float32) -> Array:
    """n training times t = t_eps + u (T - t_eps), u ~ U[0, 1) (score_sde's ``rand * (T - eps) + eps``)."""
    t_eps = _check_t_eps(process, t_eps)
    return t_eps + jax.random.uniform(key, (n,), dtype) * (process.t_max - t_eps)


def dsm_loss(score_fn: ScoreFn, process: Process, key: Array, x0: Array, *, t_eps: float = 1e-5,
             likelihood_weighting: bool = False) -> Array:
    """Per-example continuous-time denoising score matching loss (B,) (Song et al. 2021, eq. 7; score_sde's
    `get_sde_loss_fn(continuous=True, reduce_mean=True)`):

        t ~ U(t_eps, T),  z ~ N(0, I),  x_t = alpha(t) x_0 + sigma(t) z,
        l = mean over the non-batch dims of (sigma(t) s(x_t, t) + z)^2                    (lambda = sigma^2)
        l = mean over the non-batch dims of (s(x_t, t) + z / sigma(t))^2 * g(t)^2         (likelihood_weighting)

    g^2 = `Process.pf_coefs(t)[0]` (VP: beta(t); VE: 2 sigma^2 log(sigma_max / sigma_min)). score_sde's
    reduce_mean=False is 1/2 the sum over dims, d/2 times this. The key is split once: t, then z.
    At the exact score the unweighted loss averages E_t[alpha^2 s_d^2 / (alpha^2 s_d^2 + sigma^2)] per
    dimension for data N(mu, s_d^2 I) (tests/test_score_sde.py).
    """
    k_t, k_z = jax.random.split(key)
    b = x0.shape[0]
    t = sample_t(k_t, b, process, t_eps, x0.dtype)
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    alpha, sigma = process.alpha(t).astype(x0.dtype), process.sigma(t).astype(x0.dtype)
    a, s = expand_to(alpha, x0.ndim), expand_to(sigma, x0.ndim)
    score = score_fn(a * x0 + s * z, t)
    if not likelihood_weighting:
        return mean_flat(jnp.square(s * score + z))
    g2 = process.pf_coefs(t, "tau")[0].astype(x0.dtype)
    return mean_flat(jnp.square(score + z / s)) * g2


# --------------------------------------------------------------------------- EDM's sigma frame


def edm_sigma(process: Process, t: Array) -> Array:
    """EDM's noise level of x_t / alpha(t) = x_0 + (sigma / alpha) z: sigma~(t) = sigma(t) / alpha(t)
    (Karras et al. 2022, eq. 4 with s(t) = alpha(t))."""
    return process.sigma(t) / process.alpha(t)


def t_of_edm_sigma(process: Process, sigma: Array) -> Array:
    """The inverse of `edm_sigma`: log-SNR lambda = -2 log sigma~, t = `Process.t_of_log_snr(lambda)`."""
    return process.t_of_log_snr(-2.0 * jnp.log(jnp.asarray(sigma)))


def denoiser_from_score(score_fn: ScoreFn, process: Process) -> Callable[[Array, Array], Array]:
    """The EDM denoiser D(x; sigma~) = E[x_0 | x_0 + sigma~ z = x] of a score on ``process``: with
    t = `t_of_edm_sigma`(sigma~), x_t = alpha(t) x, Tweedie's E[x_0 | x_t] = (x_t + sigma^2 s(x_t, t)) / alpha, so

        D(x; sigma~) = x + sigma(t)^2 / alpha(t) s(alpha(t) x, t)       (VE: alpha = 1, D = x + sigma^2 s(x, t)).

    For a VP eps-network (s = -F / sigma) this is x - sigma~ F(x / sqrt(1 + sigma~^2), 999 t): EDM's VP
    preconditioning (Table 1). sigma has shape (B,). For `diffax.edm.edm_sampler`."""

    def denoise_fn(x: Array, sigma: Array) -> Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
        t = t_of_edm_sigma(process, sigma).astype(x.dtype)
        alpha, var = process.alpha(t).astype(x.dtype), (process.sigma(t) ** 2).astype(x.dtype)
        a = expand_to(alpha, x.ndim)
        return x + expand_to(var / alpha, x.ndim) * score_fn(a * x, t)

    return denoise_fn


def tweedie_denoise(score_fn: ScoreFn, process: Process, x: Array, t: float) -> Array:
    """E[x_0 | x_t = x] = (x + sigma(t)^2 s(x, t)) / alpha(t) (Tweedie; Efron 2011): the final noise-removal
    step of score_sde's samplers (`sampling.noise_removal`) at their last time t."""
    tb = jnp.full(x.shape[:1], t, x.dtype)
    alpha, sigma = process.alpha(tb).astype(x.dtype), process.sigma(tb).astype(x.dtype)
    return (x + expand_to(sigma**2, x.ndim) * score_fn(x, tb)) / expand_to(alpha, x.ndim)


# --------------------------------------------------------------------------- predictor-corrector


def _mean_norm(v: Array) -> Array:
    """The batch mean of the per-example L2 norms over the non-batch dims (score_sde's ``grad_norm``)."""
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(v).reshape(v.shape[0], -1), axis=-1)))


def pc_sample(score_fn: ScoreFn, process: Process, key: Array, shape: tuple[int, ...], *, num_steps: int = 1000,
              t_eps: float = 1e-3, snr: float = 0.16, n_corrector: int = 1, denoise: bool = True) -> Array:
    """Predictor-corrector sampling (Song et al. 2021, sec. 4.2, App. G; Algorithm 1, for the VE / VP 2 / 3 with
    the correctors 4 / 5): reverse-diffusion
    predictor + Langevin corrector on the grid t_i = linspace(T, t_eps, N), i = 0..N-1, then the data (alpha,
    sigma) = (1, 0). One `lax.scan`; step i's keys are fold_in(key, i); NFE = N (n_corrector + 1).

    Between consecutive levels the forward chain of the process is x_i = a_i x_{i+1} + b_i z with
    a_i = alpha(t_i) / alpha(t_{i+1}), b_i^2 = sigma(t_i)^2 - a_i^2 sigma(t_{i+1})^2 (exact marginals; VE:
    a = 1, b^2 = sigma_i^2 - sigma_{i+1}^2 as score_sde's `VESDE.discretize`; VP: a = sqrt(1 - beta_i),
    b^2 = beta_i with beta_i = 1 - abar_i / abar_{i+1}, as `VPSDE.discretize`). At step i, from x ~ p_{t_i}:

      corrector (Algorithm 4/5, `LangevinCorrector`), n_corrector times, with g = s(x, t_i), n ~ N(0, I):
          eps = 2 a_i^2 (snr ||n|| / ||g||)^2,   x <- x + eps g + sqrt(2 eps) n
      predictor (eq. 47, `ReverseDiffusionPredictor`):
          x_mean = (2 - a_i) x + b_i^2 s(x, t_i),   x = x_mean + b_i z

    ||.|| is the per-example L2 norm averaged over the batch, as score_sde's (so a sample depends on its batch;
    `diffax.training.sampler_builders.per_example_sampler` draws each alone). x starts at the prior
    `Process.prior_sample`. Returns x_mean of the last step (``denoise``, score_sde's default) or x.
    The discrete-time VP counterpart on a `Schedule` is `diffax.samplers.pc`.
    """
    num_steps = check_int("num_steps", num_steps, 1)
    n_corrector = check_int("n_corrector", n_corrector, 0)
    t_eps = _check_t_eps(process, t_eps)
    if not (isinstance(snr, (int, float)) and snr >= 0):
        raise ValueError(f"snr must be a number >= 0, got {snr!r}")
    shape = tuple(int(d) for d in shape)
    k_init, k_run = jax.random.split(key)
    x = process.prior_sample(k_init, shape)
    dtype = x.dtype
    ts = jnp.linspace(process.t_max, t_eps, num_steps, dtype=dtype)
    alphas = jnp.concatenate([process.alpha(ts), jnp.ones((1,), dtype)]).astype(dtype)
    sigmas = jnp.concatenate([process.sigma(ts), jnp.zeros((1,), dtype)]).astype(dtype)
    a = alphas[:-1] / alphas[1:]
    b2 = sigmas[:-1] ** 2 - a**2 * sigmas[1:] ** 2
    b = shape[0]

    def corrector(x: Array, inputs) -> tuple[Array, None]:
        k, t, a_i = inputs
        g = score_fn(x, t)
        n = jax.random.normal(k, x.shape, dtype)
        eps = 2.0 * a_i**2 * (snr * _mean_norm(n) / _mean_norm(g)) ** 2
        return x + eps * g + jnp.sqrt(2.0 * eps) * n, None

    def step(carry: tuple[Array, Array], inputs) -> tuple[tuple[Array, Array], None]:
        x, _ = carry
        i, t_i, a_i, b2_i = inputs
        k_corr, k_pred = jax.random.split(jax.random.fold_in(k_run, i))
        t = jnp.full((b,), t_i, dtype)
        if n_corrector:
            keys = jax.random.split(k_corr, n_corrector)
            x, _ = jax.lax.scan(lambda x_, k: corrector(x_, (k, t, a_i)), x, keys)
        x_mean = (2.0 - a_i) * x + b2_i * score_fn(x, t)
        x = x_mean + jnp.sqrt(jnp.maximum(b2_i, 0.0)) * jax.random.normal(k_pred, x.shape, dtype)
        return (x, x_mean), None

    (x, x_mean), _ = jax.lax.scan(step, (x, x), (jnp.arange(num_steps), ts, a, b2))
    return x_mean if denoise else x
