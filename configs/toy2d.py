r"""2-D toy data sets with an MLP, DDPM T=1000. Pick the data set after a colon:

    python -m diffax.main --config=configs/toy2d.py:swiss_roll --workdir=/tmp/diffax_swiss --mode=train,sample,eval
    python -m diffax.main --config=configs/toy2d.py:checkerboard --workdir=/tmp/diffax_checker --mode=train,sample,eval

Names: two_moons, swiss_roll, checkerboard, gmm2d, gmm2d_grid, gmm2d_ring (default swiss_roll). Continuous-time
objectives as a further comma-separated variant (same MLP, optimizer and steps):

    python -m diffax.main --config=configs/toy2d.py:edm --workdir=/tmp/diffax_swiss_edm --mode=train,sample,eval
    python -m diffax.main --config=configs/toy2d.py:two_moons,flow --workdir=/tmp/diffax_moons_flow --mode=train,sample,eval

  edm    EDM (Karras et al. 2022): the MLP preconditioned with sigma_data = 1 (the toy sets' std is 0.5..1.4),
         ln sigma ~ N(-1.2, 1.2^2), EDM's Heun sampler with 18 steps (35 network calls).
  flow   flow matching / rectified flow, t uniform, Heun on the flow ODE with 18 steps (36 network calls).
  vp_sde score_sde's continuous VP (beta 0.1..20, DDPM's T = 1000 schedule in the limit): denoising score
         matching with t ~ U(1e-5, 1), an eps-network at time input 999 t; sampled by the probability-flow ODE
         (sampling.method 'ode', rtol = atol = 1e-3 for 2-D data, Tweedie step at t = 1e-3).
  ve_sde score_sde's VE with sigma in [0.01, 6] (sigma_max above the toy sets' largest pairwise distance, about
         5.4; Song & Ermon 2020, technique 1): the MLP's output divided by sigma, time input log sigma; sampled by
         'pc' with the reverse-diffusion predictor alone (1000 steps and network calls; sampling.pc_n_corrector
         = 0): the Langevin corrector's step 2 (snr |n| / |score|)^2 uses one sample's norms (each sample is drawn
         alone), and in 2-D 1 / |score|^2 has an infinite mean: with snr 0.16 the samples scatter (distance
         ratio 40 at 300 steps); it is meant for images, where the norms concentrate.
         Both sample with sampling.method 'ode', 'pc' or 'edm' (`diffax.training.score_sde_builders`):

    python -m diffax.main --config=configs/toy2d.py:vp_sde --workdir=/tmp/diffax_swiss_vp --mode=train,sample,eval
    python -m diffax.main --config=configs/toy2d.py:ve_sde --workdir=/tmp/diffax_swiss_ve --mode=train,sample,eval

Expected: samples.png traces the data; eval.json's distance_ratio (sliced W1 of the samples to
held-out data over the data-vs-data baseline) below ~2; for the mixtures mode weights within 0.05.
A few minutes on 2 CPU cores.
"""

from diffax.training import presets

NAMES = ("two_moons", "swiss_roll", "checkerboard", "gmm2d", "gmm2d_grid", "gmm2d_ring")


OBJECTIVE_VARIANTS = ("edm", "flow", "vp_sde", "ve_sde")


def get_config(arg=None):
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    names = [p for p in parts if p not in OBJECTIVE_VARIANTS]
    if len(names) > 1 or any(n not in NAMES for n in names) or len(set(parts) & set(OBJECTIVE_VARIANTS)) > 1:
        raise ValueError(f"toy2d: unknown data set {arg!r}; allowed: one of {NAMES}, optionally with one of "
                         f"{OBJECTIVE_VARIANTS} (e.g. 'two_moons,edm')")
    name = names[0] if names else "swiss_roll"
    config = presets.base_config()
    config.seed = 0
    config.data.name = name
    config.training.num_steps = 6000
    config.training.batch_size = 256
    config.training.checkpoint_every = 2000
    config.training.log_every = 200
    config.training.ema_decay = 0.995
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 100
    config.optim.decay_steps = 6000
    config.model.hidden = 256
    config.model.num_layers = 4
    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.sampling.method = "ddpm"
    config.sampling.num_samples = 4000
    if "edm" in parts:
        config.training.objective = "edm"
        config.edm.sigma_data = 1.0
        config.sampling.method, config.sampling.num_steps = "edm", 18
    if "flow" in parts:
        config.training.objective = "flow_matching"
        config.sampling.method, config.sampling.num_steps = "heun", 18
    if "vp_sde" in parts:
        config.training.objective = "score_sde"
        config.sde.process = "vp"
        # rtol = atol = 1e-3 (score_sde's 1e-5 is for images): swiss roll 300 steps, distance ratio 1.94 vs 1.97
        # at 1e-5, 11 s vs 27 s for 2000 samples on 2 CPU cores
        config.sampling.method, config.sampling.ode_rtol, config.sampling.ode_atol = "ode", 1e-3, 1e-3
    if "ve_sde" in parts:
        config.training.objective = "score_sde"
        config.sde.process, config.sde.sigma_min, config.sde.sigma_max = "ve", 0.01, 6.0
        config.sampling.method, config.sampling.pc_n_corrector = "pc", 0
    config.lock()
    return config
