"""Continuous-time noise processes x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I), as pytrees.

The home of every continuous-time process in diffax (the discrete-time counterpart is
`diffax.schedules`); the probability-flow ODE that runs on any of them is `diffax.ode`, its exact
likelihood `diffax.ode_likelihood`, and the exact score / denoiser / velocity of an analytic
Gaussian mixture under any of them `diffax.oracles`.

Every process gives, elementwise in t (arrays of any shape):

    alpha(t), sigma(t), dalpha(t), dsigma(t)    the marginal scales and their t-derivatives
    log_snr(t) = log(alpha^2 / sigma^2)         and its inverse t_of_log_snr(lam)
    marginal_coefs(t) = (alpha, sigma^2)        what `oracles.GaussianMixture.*_scaled` take
    prior_sample(key, shape) / prior_logp(z)    N(0, prior_std^2 I), the latent at t_max
    t_min, t_max                                the time range (Python floats)
    pf_coefs(t, time_variable), rho, t_of_rho   the probability-flow ODE (below)

  process           alpha(t)            sigma(t)                          t range          prior std
  VP (`vp_linear`,  sqrt(abar(t))       sqrt(1 - abar(t))                 [0, 1]           1
   `VP.from_schedule`)
  `vp_cosine`       cos(phi(t))/cos(phi(0)), phi(t) = (t + s)/(1 + s) pi/2    [0, 0.9946]     1
  `ve`              1                   sigma_min (sigma_max/sigma_min)^t [0, 1]           sigma_max
  `edm`             1                   t                                 [sigma_min, sigma_max] sigma_max
  `rectified_flow`  1 - t               t                                 [0, 1]           1

Sources: VP linear and VE are score_sde's VPSDE / VESDE (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", eqs. 9, 11, 31-33; `sde_lib.py`, whose `prior_sampling` gives the prior std
1 / sigma_max); the cosine VP is Nichol & Dhariwal 2021, eq. 17, in continuous t, with DPM-Solver's
t_max = 0.9946 (Lu et al. 2022, `NoiseScheduleVP`'s T for 'cosine': abar(1) = 0, log-SNR -inf); EDM is Karras et al.
2022, Table 1 (s(t) = 1, sigma(t) = t, prior N(0, sigma_max^2 I) as `edm_sampler`'s latents);
rectified flow is Liu et al. 2023 / Lipman et al. 2023 (x_t = (1 - t) x_0 + t eps). The prior
drops the data's alpha(t_max)^2 Var[x_0] (unit-variance data) against sigma(t_max)^2, score_sde's
convention; for the VP it is N(0, alpha^2 + sigma^2) = N(0, 1) exactly.

The probability-flow ODE (Song et al. 2021, eq. 13; Kingma et al. 2021, "Variational Diffusion
Models", App. A; Karras et al. 2022, eq. 4 with s(t) = alpha, sigma~ = sigma/alpha). x_t = alpha x_0 +
sigma eps is the marginal of the SDE dx = f(t) x dt + g(t) dw with

    f = alpha'/alpha,      g^2 = 2 sigma sigma' - 2 f sigma^2 = d(sigma^2)/dt - 2 f sigma^2,

whose probability-flow ODE is dx/dt = f x - 1/2 g^2 grad log p_t(x). `pf_coefs(t, 'tau')` returns
it as (c, k) with dx/dt = -1/2 c (k x + score): c = g^2, k = -2 f / g^2 = -alpha' / (sigma (alpha
sigma' - alpha' sigma)). In the time rho = log(1 + sigma^2/alpha^2) = softplus(-log_snr)
('rho'; for the VP rho = -log abar), drho/dt = g^2 / (alpha^2 + sigma^2), so dx/drho has c = alpha^2 +
sigma^2 and the same k. Checks: VP c = beta, k = 1 (eq. 13: -1/2 beta (x + score)); EDM f = 0,
g^2 = 2t, dx/dt = -t score = (x - D(x; t)) / t (Karras et al. 2022, eq. 3 with Tweedie's D = x +
t^2 score); rectified flow dx/dt = -(x + t score) / (1 - t) = E[eps - x_0 | x_t]. Where alpha(t) = 0
(rectified flow at t = 1, the cosine VP at phi = pi/2) f is infinite: the score form of the ODE
needs alpha > 0 (the score there carries no information about x_0).

Each process is a frozen dataclass registered as a pytree: array parameters (the VP's) are leaves,
float parameters are static, so a process crosses jit as an argument and its t range stays concrete.

Modules: `base` (the `Process` interface, derived from alpha, sigma and their derivatives),
`variance_preserving` (VP, cosine VP), `variance_exploding` (VE, EDM), `rectified` (rectified flow).
"""

from diffax.processes.base import TIME_VARIABLES, Process
from diffax.processes.rectified import RectifiedFlow, rectified_flow
from diffax.processes.variance_exploding import EDM, VE, edm, ve
from diffax.processes.variance_preserving import VP, CosineVP, vp_cosine, vp_linear

__all__ = [
    "Process",
    "VP",
    "CosineVP",
    "VE",
    "EDM",
    "RectifiedFlow",
    "vp_linear",
    "vp_cosine",
    "ve",
    "edm",
    "rectified_flow",
    "TIME_VARIABLES",
]
