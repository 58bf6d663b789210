"""diffax: diffusion models as small pure JAX functions.

The math (each module one concept; no Flax, no config objects):
  schedules         betas -> `Schedule` pytree (linear, cosine, quadratic, sigmoid, respace)
  diffusion         q(x_t|x_0), q(x_{t-1}|x_t,x_0), eps/x0/v/score conversions, p_mean_variance
  losses            L_simple, hybrid/vlb (improved DDPM), DSM, sliced and exact score matching
  samplers          ddpm, ddim, langevin, annealed_langevin, pc, dpm_solver_pp_2m (each one lax.scan)
  likelihood        normal_kl, discretized decoder, vb_terms_bpd, prior_bpd, vlb_bpd (bits/dim)
  timestep_sampler  importance-sampled timesteps for L_vlb (Nichol & Dhariwal 2021, sec. 3.3)
  ode               the VP probability-flow ODE (diffrax): sampling, encoding, exact likelihood
  dpm_solver        DPM-Solver++(2M)
  guidance          classifier and classifier-free guidance as eps-function wrappers
  interpolation     slerp, DDPM and DDIM-latent interpolation
  oracles           analytic Gaussian mixtures: exact marginals, scores, posteriors
  metrics           Frechet distance, KID, IS, Wasserstein distances, running feature statistics
Training and models: `diffax.models`, `diffax.training`, `diffax.checkpoint`, `diffax.data`,
and the entry point `python -m diffax.main`.
"""

from diffax import (  # noqa: F401
    diffusion,
    dpm_solver,
    guidance,
    interpolation,
    likelihood,
    losses,
    metrics,
    oracles,
    samplers,
    schedules,
    timestep_sampler,
)

__version__ = "0.1.0"
