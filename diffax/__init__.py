"""diffax: diffusion models as small pure JAX functions.

The math (each module one concept; no Flax, no config objects):
  schedules            betas -> `Schedule` pytree (linear, cosine, quadratic, sigmoid, respace)
  diffusion            q(x_t|x_0), q(x_{t-1}|x_t,x_0), eps/x0/v/score conversions, p_mean_variance
  losses               L_simple, hybrid/vlb (improved DDPM), DSM, sliced and exact score matching
  samplers             ddpm, ddim, langevin, annealed_langevin, pc, dpm_solver_pp_2m (each one lax.scan)
  dpm_solver           multistep DPM-Solver++ (orders 1-3) on the discrete schedule, and the timestep grids
  unipc                UniPC (orders 1-3, bh1 / bh2): predictor-corrector with NFE = steps
  likelihood           the discrete variational bound: normal_kl, discretized decoder, vb_terms_bpd,
                       prior_bpd, vlb_bpd (bits/dim of 8-bit data)
  processes            continuous-time noise processes x_t = alpha(t) x_0 + sigma(t) z: VP (linear, cosine,
                       from a discrete schedule), VE, EDM, rectified flow
  ode                  the probability-flow ODE: score adapters, sampling / encoding (diffrax)
  ode_likelihood       exact ODE likelihood and its bits/dim convention (dequantization; see the
                       module docstring for how it relates to `likelihood.vlb_bpd`)
  edm                  EDM (Karras et al. 2022): preconditioning (Table 1), loss weight and loss, the sigma
                       grid (eq. 5), the Heun / churn sampler (Algorithm 2), discrete models as denoisers
  flow_matching        flow matching / rectified flow: the velocity loss and Euler / Heun samplers
  score_sde            score_sde's continuous-time denoising score matching on VP / VE: the loss, the network
                       parameterisation, the score as an EDM denoiser, the predictor-corrector sampler
  importance_sampling  importance-sampled timesteps for L_vlb (Nichol & Dhariwal 2021, sec. 3.3)
  guidance             classifier and classifier-free guidance as eps-function wrappers
  interpolation        slerp, DDPM and DDIM-latent interpolation
  oracles              analytic Gaussian mixtures: exact marginals, scores, posteriors
Evaluation (`diffax.evaluation`): metrics (Frechet distance, KID, IS, Wasserstein distances, running
feature statistics), classifier_features (classifier-feature FID / KID / accuracy), images (uint8 <->
[-1, 1], classifier FID), bits_per_dim (test-split bits/dim over the mesh), toys (distances, mode weights).
`diffax.device_mesh`: the 'data' mesh over every device and process and arrays split by rows over it
(used by training and evaluation).
Private: `diffax._util` holds the helpers these modules share (option checks, timestep grids, the
sampler scan, atomic file writes).
Training and models: `diffax.models`, `diffax.training`, `diffax.checkpoint` (with its parts
`checkpoint_integrity`, `checkpoint_layout`, `checkpoint_files`, `orbax_noise`), `diffax.data`,
and the entry point `python -m diffax.main`.
"""

from diffax import (  # noqa: F401
    diffusion,
    dpm_solver,
    edm,
    evaluation,
    flow_matching,
    guidance,
    importance_sampling,
    interpolation,
    likelihood,
    losses,
    ode,
    ode_likelihood,
    oracles,
    processes,
    samplers,
    schedules,
    score_sde,
    unipc,
)

__version__ = "0.1.0"
