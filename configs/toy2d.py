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
Expected: samples.png traces the data; eval.json's distance_ratio (sliced W1 of the samples to
held-out data over the data-vs-data baseline) below ~2; for the mixtures mode weights within 0.05.
A few minutes on 2 CPU cores.
"""

from diffax.training import presets

NAMES = ("two_moons", "swiss_roll", "checkerboard", "gmm2d", "gmm2d_grid", "gmm2d_ring")


OBJECTIVE_VARIANTS = ("edm", "flow")


def get_config(arg=None):
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    names = [p for p in parts if p not in OBJECTIVE_VARIANTS]
    if len(names) > 1 or any(n not in NAMES for n in names) or ("edm" in parts and "flow" in parts):
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
    config.lock()
    return config
