"""diffax: diffusion models as small pure JAX functions.

The math (each module one concept; no Flax, no config objects):
  schedules            betas -> `Schedule` pytree (linear, cosine, quadratic, sigmoid, respace)
  diffusion            q(x_t|x_0), q(x_{t-1}|x_t,x_0), eps/x0/v/score conversions, p_mean_variance
  losses               L_simple, hybrid/vlb (improved DDPM), DSM, sliced and exact score matching
  samplers             ddpm, ddim, langevin, annealed_langevin, pc, dpm_solver_pp_2m (each one lax.scan)
  dpm_solver           DPM-Solver++(2M) on the discrete schedule
  likelihood           the discrete variational bound: normal_kl, discretized decoder, vb_terms_bpd,
                       prior_bpd, vlb_bpd (bits/dim of 8-bit data)
  ode                  continuous time: the VP SDE (`ContinuousVP`), score adapters, probability-flow
                       ODE sampling / encoding (diffrax), exact ODE likelihood, and its bits/dim
                       convention (dequantization; see the module docstring for how it relates to
                       `likelihood.vlb_bpd`)
  importance_sampling  importance-sampled timesteps for L_vlb (Nichol & Dhariwal 2021, sec. 3.3);
                       `timestep_sampler` is its former name, kept as an alias
  guidance             classifier and classifier-free guidance as eps-function wrappers
  interpolation        slerp, DDPM and DDIM-latent interpolation
  oracles              analytic Gaussian mixtures: exact marginals, scores, posteriors
Evaluation (`diffax.evaluation`): metrics (Frechet distance, KID, IS, Wasserstein distances, running
feature statistics; also importable as `diffax.metrics`), classifier_features (`diffax.feature_fid`),
images (bits/dim, classifier FID), toys (distances, mode weights).
Private: `diffax._util` holds the helpers these modules share (option checks, timestep grids, the
sampler scan, atomic file writes).
Training and models: `diffax.models`, `diffax.training`, `diffax.checkpoint`, `diffax.data`,
and the entry point `python -m diffax.main`.
"""

from diffax import (  # noqa: F401
    diffusion,
    dpm_solver,
    evaluation,
    guidance,
    importance_sampling,
    interpolation,
    likelihood,
    losses,
    metrics,
    ode,
    oracles,
    samplers,
    schedules,
    timestep_sampler,
)

__version__ = "0.1.0"
