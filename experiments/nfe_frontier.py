r"""The quality-per-NFE frontier of diffax's deterministic samplers, measured on exact models (issue 23, item 3).

    python experiments/nfe_frontier.py --out_dir=/tmp/nfe_frontier            # table, nfe_frontier.{png,json}
    python experiments/nfe_frontier.py --quick                                 # smoke run (~1-3 min)
    python experiments/nfe_frontier.py --mnist_workdir=runs/mnist_small \
        --classifier=runs/mnist_classifier/classifier.msgpack                  # + classifier FID of a trained run

Models (both discrete-time eps models on DDPM's linear schedule, T = 1000, float64 throughout):
  ring_2d   `diffax.data.toys.toy_mixture('gmm2d_ring')`: 8 equal Gaussians, std 0.1, on the circle of radius 2;
  mnist_mix an image-shaped mixture: the first ``--num_images`` (200) MNIST training images in [-1, 1] as the
            means (784 dims), isotropic per-pixel std ``--pixel_std`` (0.05), equal weights: an exact score
            in 784 dimensions with the sharp, curved trajectories of real images.
Both are `oracles.GaussianMixture`s; the exact eps / score / E[x_0 | x_t] are evaluated by `MixtureModel` in the
matmul form of an equal-std isotropic mixture (no (B, K, D) intermediate; tests/test_nfe_frontier.py checks
it against `GaussianMixture.eps`, the brute-force oracle, to 1e-10 in float64):
    r_k(x) = softmax_k(log w_k + (c x.mu_k - c^2 |mu_k|^2 / 2) / v),  v = c^2 s^2 + sigma^2,  m = sum_k r_k mu_k,
    score = (c m - x) / v,  E[x_0 | x] = (sigma^2 m + c s^2 x) / v,  eps = sigma (x - c m) / v
for x = c x_0 + sigma z (c = sqrt(abar_t), sigma^2 = 1 - abar_t).

Methods, NFE in {5, 8, 10, 15, 20, 35, 50, 100} (``--nfe``), every one from the SAME x_T ~ N(0, I) (PRNGKey(seed),
one draw per model), no clipping, each call jitted once:
  ddim            `samplers.ddim`, eta = 0, ``--ddim_spacing`` (default 'leading', DDIM's own: tau = 0, T/S, ...,
                  T - T/S, so it reads x_T as x at index T - T/S; of 'leading' / 'linspace' / 'trailing' it had the
                  lowest rms on mnist_mix at NFE 5, 10, 20 and 50: 0.19 / 0.16 / 0.11 / 0.089 against trailing's
                  0.28 / 0.21 / 0.13 / 0.091 and linspace's 0.34 / 0.21 / 0.13 / 0.089: ``--models=mnist_mix
                  --methods=ddim --nfe=5,10,20,50 --n_image=128 --skip_overhead --ddim_spacing=...``), NFE = steps;
  dpm++k          `dpm_solver.dpm_solver_pp(order=k)`, k = 1, 2, 3 (order 1 is DDIM on the solvers' grid);
  unipck          `unipc.unipc(order=k, variant='bh2')`, k = 1, 2, 3, and unipc2_bh1 (``--methods`` adds unipc3_bh1);
  edm             `edm.edm_sampler` (Heun, no churn) on `edm.denoiser_from_discrete(eps)` (sigma rounded to the
                  nearest discrete index, NVlabs' iDDPM), sigma_max = sigma_{T-1} = 157.4, sigma_min = sigma_0 =
                  0.01 of the schedule (sigma_k = sqrt(1/abar_k - 1)); N = (NFE + 1) // 2 steps spend 2N - 1
                  NFE (5, 7, 9, 15, 19, 35, 49, 99; the table shows the NFE asked for, the plot the NFE spent). Its
                  latents are x_T sqrt(1 + sigma_max^2) / sigma_max, so its start x_T sqrt(1 + sigma_max^2) =
                  x_T / sqrt(abar_{T-1}) is exactly the other samplers' x_T at index T - 1 in EDM's unscaled variable.
  The multistep solvers (dpm++k, unipck) run once per grid of ``--grids`` (default 'time_uniform' and 'logSNR',
  `dpm_solver.dpm_solver_timesteps`; the label says which, e.g. unipc3@logSNR), with diffusers' step-order rules
  and a final first-order step to sigma = 0. 'time_uniform' ends its model calls at index ~T/NFE - 1 and jumps to
  sigma = 0 from there (first order, so it stalls at high NFE); 'logSNR' ends at index 0.

Metrics per (model, method, NFE):
  rms   sqrt(mean over samples and coordinates of (x - x_ref)^2): the distance to the converged solution of the
        probability-flow ODE from the same x_T. Every sampler here converges to the same limit: the exact flow
        from index T - 1 to index 0 followed by the step to sigma = 0, x = E[x_0 | x_{t=0}] (DDIM's last step,
        DPM-Solver's/UniPC's final first-order step, EDM's last Euler step from sigma_min = sigma_0). x_ref is
        that: the adaptive diffrax solve (`ode.ode_solve`, Tsit5, rho time, rtol = atol = ``--ref_tol`` 1e-10) of
        `processes.VP.from_schedule(s)` from tau = 1 to tau = 1/T (abar(tau) = alphas_cumprod at the knots),
        then E[x_0 | x_0-index]. Its convergence is printed: the same solve at 100x the tolerance, and
        DPM-Solver++(3) on all 1000 indices (final_step='none') + the same last step, each as an rms to x_ref.
  flip  the fraction of samples whose nearest component mean is not the reference's: the samples the solver sent
        to another mode (on mnist_mix these few dominate rms; rms falls steeply once they stop).
  sw1   the sliced W1 (`evaluation.toys.distance`, 256 directions) between the samples and as many exact mixture
        samples; ``floor`` is the same distance between two independent exact samples of that size, and
        ``sw1_reference`` that of x_ref (what the samplers converge to; one draw each, so the two differ by the
        sampling noise at that n).
  nn    (mnist_mix) the mean over samples of the per-pixel RMS distance to the nearest component mean; exact
        samples give ~ pixel_std (the floor printed, beside x_ref's). Below it the samples are too smooth (the
        within-component detail is lost: a last step to sigma = 0 from a large sigma returns ~ the mean).

Sampler overhead (``--skip_overhead`` to skip): configs/mnist.py:small's UNet (ch 32, random weights, float32) at
batch ``--overhead_batch`` (256), ``--overhead_nfe`` (5) steps of ddim, dpm++3 and unipc3: the median wall
time of the jitted sampler per NFE over the median time of one jitted model call on the same batch
(round-robin timing, ``--overhead_repeats`` rounds after a warm-up; compile time apart), and, robust to a loaded
machine's noise, 1 + the sampler's own work per step (timed with a free model x -> 0.5 x) / one model call.
Target <= 1.05.

With ``--mnist_workdir`` (off by default): the trained run (training.objective 'diffusion') is restored
(`training.restore.restore_ema`) and sampled with the same methods at ``--mnist_nfe`` from one x_T, no clipping,
labels i mod 10 for a class-conditional run (no guidance); classifier FID (`evaluation.images.reference_metrics`,
experiments/train_classifier.py's classifier at ``--classifier``) of ``--mnist_num_samples`` samples against the
10 000 test images.

Outputs: a table per model and metric on stdout (``--json``: one JSON object instead), and with ``--out_dir``
nfe_frontier.json and nfe_frontier.png (log-log rms vs NFE, one line per method, one panel per model; the
distribution distances in a second row). The moonshot line: the best method's rms at 10 NFE on mnist_mix beside
DDIM's at 50 NFE.

Measured (the default run, docs/img/nfe_frontier.png and README's table): 298 s on the 2 shared CPU cores at load ~5
(468 s and 600 s at load ~7-8), of which ring_2d ~110 s, mnist_mix ~90 s, the overhead ~110 s:
    python experiments/nfe_frontier.py --out_dir=/tmp/nfe_frontier
  mnist_mix rms at 10 NFE: unipc3@time_uniform 0.105 (the best), ddim 0.167; DDIM at 50 NFE 0.104. Reference
  checks: rms 1.7e-8 to the solve at 1e-8, 5.9e-5 to DPM-Solver++(3) on all indices (ring_2d 9.0e-9, 6.7e-5).
  Overhead (batch 256, 5 NFE): sampler / model call 0.91-0.94; 1 + own work / model call <= 1.0008.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffax import dpm_solver, edm, ode, oracles, processes, samplers, schedules, unipc
from diffax.evaluation import toys as toy_eval

__all__ = ["MixtureModel", "METHODS", "NFES", "image_mixture", "ring_mixture", "run_method", "reference_solution",
           "frontier", "sampler_overhead"]  # fmt: skip

NFES = (5, 8, 10, 15, 20, 35, 50, 100)
# name -> (family, order, variant)
METHODS: dict[str, tuple[str, int, str]] = {
    "ddim": ("ddim", 1, ""),
    "dpm++1": ("dpm", 1, ""),
    "dpm++2": ("dpm", 2, ""),
    "dpm++3": ("dpm", 3, ""),
    "unipc1": ("unipc", 1, "bh2"),
    "unipc2": ("unipc", 2, "bh2"),
    "unipc3": ("unipc", 3, "bh2"),
    "unipc2_bh1": ("unipc", 2, "bh1"),
    "unipc3_bh1": ("unipc", 3, "bh1"),
    "edm": ("edm", 2, ""),
}
GRIDS = ("time_uniform", "logSNR", "edm")
DEFAULT_METHODS = ("ddim", "dpm++1", "dpm++2", "dpm++3", "unipc1", "unipc2", "unipc3", "unipc2_bh1", "edm")


def variants(methods, grids) -> list[tuple[str, str, str | None]]:
    """(label, method, grid) of every line: each multistep method once per grid ('unipc3@logSNR'); ddim and edm
    (their own grids) once."""
    out = []
    for m in methods:
        if METHODS[m][0] in ("ddim", "edm"):
            out.append((m, m, None))
        else:
            out.extend((f"{m}@{g}", m, g) for g in grids)
    return out


# ============================================================================ exact models


@dataclasses.dataclass(frozen=True)
class MixtureModel:
    """The exact eps / score / E[x_0 | x] of an equal-std isotropic `oracles.GaussianMixture` in matmul form
    (see the module docstring), O(B K + B D + K D) memory. Arrays are passed explicitly (``params``) so a
    jitted sampler takes them as arguments instead of baking the means into the program."""

    mixture: oracles.GaussianMixture
    schedule: schedules.Schedule

    def __post_init__(self):
        sd = np.asarray(self.mixture.stds)
        if not np.all(sd == sd.flat[0]):
            raise ValueError(f"MixtureModel needs one isotropic std shared by all components, got stds {np.unique(sd)}")

    @property
    def params(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(log weights (K,), means (K, D), variance s^2 ())."""
        m = self.mixture
        return jnp.log(m.weights), m.means, m.stds[0, 0] ** 2

    @staticmethod
    def mean_of_means(params, x: jax.Array, c: jax.Array, nv: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(m = sum_k r_k(x) mu_k (B, D), v = c^2 s^2 + sigma^2 (B, 1)) at x = c x_0 + sigma z; c, nv (B,)."""
        logw, mu, s2 = params
        c, nv = c[:, None], nv[:, None]
        v = c**2 * s2 + nv
        logits = logw + (c * (x @ mu.T) - 0.5 * c**2 * jnp.sum(mu**2, axis=-1)) / v
        return jax.nn.softmax(logits, axis=-1) @ mu, v

    @classmethod
    def score_scaled(cls, params, x, c, nv):
        m, v = cls.mean_of_means(params, x, c, nv)
        return (c[:, None] * m - x) / v

    @classmethod
    def posterior_mean_scaled(cls, params, x, c, nv):
        m, v = cls.mean_of_means(params, x, c, nv)
        return (nv[:, None] * m + c[:, None] * params[2] * x) / v

    def eps_fn(self, params) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """The exact discrete eps model ``(x_t, t) -> E[eps | x_t]`` (t int (B,)) of the bound schedule."""
        acp = self.schedule.alphas_cumprod

        def eps(x, t):
            abar = jnp.take(acp, t)
            m, v = self.mean_of_means(params, x, jnp.sqrt(abar), 1.0 - abar)
            return jnp.sqrt(1.0 - abar)[:, None] * (x - jnp.sqrt(abar)[:, None] * m) / v

        return eps

    def denoise_at_index(self, params, x: jax.Array, t: int) -> jax.Array:
        """E[x_0 | x_t = x] at index t (the samplers' last step to sigma = 0 from index t)."""
        abar = jnp.full((x.shape[0],), self.schedule.alphas_cumprod[t])
        return self.posterior_mean_scaled(params, x, jnp.sqrt(abar), 1.0 - abar)


def ring_mixture() -> oracles.GaussianMixture:
    """8 equal Gaussians (std 0.1) on the circle of radius 2 (`toys.toy_mixture('gmm2d_ring')`)."""
    from diffax.data import toys

    return toys.toy_mixture("gmm2d_ring")


def image_mixture(num_images: int, pixel_std: float, data_path: str | None = None) -> oracles.GaussianMixture:
    """Equal-weight mixture of N(mu_k, pixel_std^2 I) with mu_k the first ``num_images`` MNIST training images in
    [-1, 1], flattened (784 dims). Reads the local IDX files (``data_path``, default configs/mnist.py's)."""
    from diffax import data
    from diffax.evaluation import images

    if data_path is None:
        data_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                                 "mnist")  # fmt: skip
    x, _ = data.load_array("mnist_local", split=f"train[:{int(num_images)}]", path=data_path)
    means = images.to_model_range(x).reshape(len(x), -1).astype(np.float64)
    return oracles.GaussianMixture(np.ones(len(x)), means, np.full(len(x), float(pixel_std)))


# ============================================================================ samplers and reference


def edm_range(s: schedules.Schedule) -> tuple[float, float]:
    """(sigma_min, sigma_max) = (sigma_0, sigma_{T-1}), sigma_k = sqrt(1 / abar_k - 1), of the schedule."""
    acp = np.asarray(s.alphas_cumprod, np.float64)
    sig = np.sqrt(1.0 / acp - 1.0)
    return float(sig[0]), float(sig[-1])


def run_method(name: str, model_fn, s: schedules.Schedule, x_T: jax.Array, nfe: int, *, grid: str | None = "logSNR",
               ddim_spacing: str = "leading", mean_type: str = "eps",
               var_type: str = "fixed_small") -> tuple[jax.Array, int]:  # fmt: skip
    """(x_0, NFE spent) of method ``name`` (a `METHODS` key) from x_T at index T - 1 with about ``nfe`` model calls."""
    family, order, variant = METHODS[name]
    key = jax.random.PRNGKey(0)  # unused: every sampler starts from x_init
    kw = dict(x_init=x_T, mean_type=mean_type, var_type=var_type)
    if family == "ddim":
        return samplers.ddim(model_fn, s, key, x_T.shape, num_steps=nfe, spacing=ddim_spacing, eta=0.0, **kw), nfe
    if family == "dpm":
        return dpm_solver.dpm_solver_pp(model_fn, s, key, x_T.shape, order=order, num_steps=nfe, spacing=grid,
                                        **kw), nfe  # fmt: skip
    if family == "unipc":
        return unipc.unipc(model_fn, s, key, x_T.shape, order=order, variant=variant, num_steps=nfe, spacing=grid,
                           **kw), nfe  # fmt: skip
    n = max((nfe + 1) // 2, 2)
    smin, smax = edm_range(s)
    latents = x_T * (np.sqrt(1.0 + smax**2) / smax)
    denoise = edm.denoiser_from_discrete(model_fn, s, mean_type=mean_type)
    return edm.edm_sampler(denoise, latents, num_steps=n, sigma_min=smin, sigma_max=smax), 2 * n - 1


def reference_solution(model: MixtureModel, x_T: jax.Array, *, tol: float = 1e-10) -> tuple[jax.Array, dict]:
    """(x_ref, checks): the adaptive solve of the exact probability-flow ODE from index T - 1 to 0, then the step to
    sigma = 0 (see the module docstring); checks = rms of the same at 100 tol and of DPM-Solver++(3) on every index."""
    s, params = model.schedule, model.params
    T = s.num_timesteps
    sde = processes.VP.from_schedule(s)

    def score_fn(x, tau):
        c, nv = sde.marginal_coefs(tau)  # (alpha(tau), sigma(tau)^2)
        return model.score_scaled(params, x, c, nv)

    @functools.partial(jax.jit, static_argnums=1)
    def solve(x, rtol):
        x0, nfe = ode.ode_solve(score_fn, sde, x, t0=1.0, t1=1.0 / T, rtol=rtol, atol=rtol, max_steps=100_000)
        return model.denoise_at_index(params, x0, 0), nfe

    ref, nfe = solve(x_T, tol)
    loose, nfe_loose = solve(x_T, 100 * tol)
    every = np.arange(T - 1, -1, -1)
    x0 = jax.jit(lambda x: dpm_solver.dpm_solver_pp(model.eps_fn(params), s, None, x.shape, order=3, timesteps=every,
                                                      final_step="none", x_init=x))(x_T)  # fmt: skip
    dpm = model.denoise_at_index(params, x0, 0)
    return ref, dict(ref_tol=tol, ref_nfe=int(nfe), rms_ref_100tol=_rms(loose, ref), ref_100tol_nfe=int(nfe_loose),
                     rms_dpm3_all_indices=_rms(dpm, ref))  # fmt: skip


def _rms(a, b) -> float:
    return float(jnp.sqrt(jnp.mean((jnp.asarray(a) - jnp.asarray(b)) ** 2)))


def _nearest_means(x: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest mean, per-coordinate RMS distance to it) of each sample (float64)."""
    d2 = np.sum(x**2, 1)[:, None] - 2.0 * x @ means.T + np.sum(means**2, 1)[None, :]
    k = np.argmin(d2, axis=1)
    return k, np.sqrt(np.maximum(d2[np.arange(len(x)), k], 0.0) / x.shape[1])


# ============================================================================ the frontier on one model


def frontier(model: MixtureModel, *, n: int, nfes, lines, ddim_spacing: str, seed: int = 0,
             ref_tol: float = 1e-10, nearest_mean: bool = False, log=print) -> dict:  # fmt: skip
    """{"reference": checks, "floor": {...}, "rows": [{label, method, grid, nfe, nfe_used, rms, flip, sw1[, nn],
    compile_s, run_s}]} for ``lines`` = `variants`."""
    s, params, mix = model.schedule, model.params, model.mixture
    k_T, k_data, k_data2, k_dirs = jax.random.split(jax.random.PRNGKey(seed), 4)
    x_T = jax.random.normal(k_T, (n, mix.dim), dtype=jnp.float64)
    t0 = time.perf_counter()
    ref, checks = reference_solution(model, x_T, tol=ref_tol)
    checks["ref_s"] = round(time.perf_counter() - t0, 1)
    log(f"  reference: adaptive ODE at rtol=atol={ref_tol:g} ({checks['ref_nfe']} NFE, {checks['ref_s']} s); rms to it "
        "of "
        f"the solve at 100x tol {checks['rms_ref_100tol']:.2e}, of DPM-Solver++(3) on all {s.num_timesteps} indices "
        f"{checks['rms_dpm3_all_indices']:.2e}")  # fmt: skip
    data, data2 = np.asarray(mix.sample(k_data, n)), np.asarray(mix.sample(k_data2, n))
    floor = dict(sw1=toy_eval.distance(data2, data, key=k_dirs), sw1_reference=toy_eval.distance(ref, data, key=k_dirs))
    means = np.asarray(mix.means)
    ref_k, ref_dist = _nearest_means(np.asarray(ref), means)
    if nearest_mean:
        floor["nn"] = float(np.mean(_nearest_means(data2, means)[1]))
        floor["nn_reference"] = float(np.mean(ref_dist))
    rows = []
    for label, name, grid in lines:
        for nfe in nfes:
            fn = jax.jit(lambda p, x, name=name, nfe=nfe, grid=grid: run_method(
                name, model.eps_fn(p), s, x, nfe, grid=grid, ddim_spacing=ddim_spacing)[0])  # fmt: skip
            t0 = time.perf_counter()
            compiled = fn.lower(params, x_T).compile()
            t1 = time.perf_counter()
            x = np.asarray(compiled(params, x_T))
            t2 = time.perf_counter()
            used = 2 * max((nfe + 1) // 2, 2) - 1 if METHODS[name][0] == "edm" else nfe
            k, dist = _nearest_means(x, means)
            row = dict(label=label, method=name, grid=grid, nfe=nfe, nfe_used=used, rms=_rms(x, ref),
                       flip=float(np.mean(k != ref_k)), sw1=toy_eval.distance(x, data, key=k_dirs),
                       compile_s=round(t1 - t0, 2), run_s=round(t2 - t1, 3))  # fmt: skip
            if nearest_mean:
                row["nn"] = float(np.mean(dist))
            rows.append(row)
        log(f"  {label:22s} rms " + " ".join(f"{r['rms']:.1e}" for r in rows if r["label"] == label))
    return dict(n=n, dim=mix.dim, components=mix.num_components, reference=checks, floor=floor, rows=rows)


# ============================================================================ sampler overhead


def _interleaved_median_s(fns: dict, repeats: int) -> dict:
    """Median wall time (s) of each blocking fn() over ``repeats`` round-robin rounds, after one warm-up each
    (a shared machine's load hits all of them alike; experiments/bench_sampling.py's procedure)."""
    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def sampler_overhead(*, batch: int = 256, nfe: int = 5, repeats: int = 3, methods=("ddim", "dpm++3", "unipc3"),
                     grid: str = "logSNR", ddim_spacing: str = "leading") -> dict:  # fmt: skip
    """Wall time per NFE of each sampler over one jitted model call: configs/mnist.py:small's UNet, float32,
    random weights, batch ``batch``. Run with x64 off.

    ratio = sampler / (nfe x model call), both medians of round-robin timings (noisy on a loaded machine);
    own_ratio = 1 + (the sampler with a free model, x -> 0.5 x, per step) / model call: the sampler's own per-step
    work, timed apart with ``10 x repeats`` runs, i.e. the same quantity without the UNet's timing noise."""
    import importlib.util

    from diffax.training import model_builders

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "mnist.py")
    spec = importlib.util.spec_from_file_location("mnist_config", path)
    cfg_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg_mod)
    config = cfg_mod.get_config("small")
    model = model_builders.build_model(config, (28, 28, 1))
    s = schedules.linear(1000)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 28, 28, 1), jnp.float32)
    t = jnp.full((batch,), 500, jnp.int32)
    params = jax.jit(lambda k: model.init(k, x[:1], t[:1], train=False))(jax.random.PRNGKey(1))

    def call(p, x, t):
        return model.apply(p, x, t, train=False)

    fns, compile_s = {}, {}
    t0 = time.perf_counter()
    call_c = jax.jit(call).lower(params, x, t).compile()
    compile_s["model_call"] = round(time.perf_counter() - t0, 2)
    fns["model_call"] = lambda: call_c(params, x, t).block_until_ready()
    for name in methods:
        fn = jax.jit(lambda p, x, name=name: run_method(name, lambda xt, tt: call(p, xt, tt), s, x, nfe, grid=grid,
                                                         ddim_spacing=ddim_spacing)[0])  # fmt: skip
        t0 = time.perf_counter()
        c = fn.lower(params, x).compile()
        compile_s[name] = round(time.perf_counter() - t0, 2)
        fns[name] = lambda c=c: c(params, x).block_until_ready()
    free = {}
    for name in methods:
        c = jax.jit(lambda x, name=name: run_method(name, lambda xt, tt: 0.5 * xt, s, x, nfe, grid=grid,
                                                    ddim_spacing=ddim_spacing)[0]).lower(x).compile()  # fmt: skip
        free[name] = lambda c=c: c(x).block_until_ready()
    med = _interleaved_median_s(fns, repeats)
    own = _interleaved_median_s(free, 10 * repeats)
    call_s = med["model_call"]
    rows = [dict(method=m, nfe=nfe, run_s=round(med[m], 4), per_nfe_s=round(med[m] / nfe, 4),
                 ratio=round(med[m] / (nfe * call_s), 3), own_per_step_ms=round(1e3 * own[m] / nfe, 3),
                 own_ratio=round(1.0 + own[m] / (nfe * call_s), 4), compile_s=compile_s[m])
            for m in methods]  # fmt: skip
    return dict(model="configs/mnist.py:small UNet (ch 32, random weights, float32)", batch=batch, nfe=nfe,
                repeats=repeats, model_call_s=round(call_s, 4), model_call_compile_s=compile_s["model_call"],
                devices=str(jax.devices()[0].platform), rows=rows)  # fmt: skip


# ============================================================================ a trained MNIST run (optional)


def mnist_fid(workdir: str, classifier: str, *, lines, nfes, num_samples: int, seed: int, ddim_spacing: str,
              data_path: str | None = None, log=print) -> dict:  # fmt: skip
    """Classifier FID per method and NFE of the trained discrete-time run in ``workdir`` (float32, x64 off)."""
    from diffax import data
    from diffax.evaluation import images
    from diffax.training import restore

    run = restore.restore_ema(workdir, debias=None)
    exp = run.experiment
    if exp.objective != "diffusion":
        raise ValueError(f"--mnist_workdir: the run's training.objective is {exp.objective!r}; these samplers need a "
                         "discrete-time model, training.objective='diffusion'")  # fmt: skip
    test_images, _ = data.load_array("mnist_local", split="test", path=data_path or exp.data.path)
    reference = images.classifier_reference(classifier, test_images)
    labels = None if exp.num_classes is None else np.arange(num_samples) % exp.num_classes
    y = None if labels is None else jnp.asarray(labels, jnp.int32)
    x_T = jax.random.normal(jax.random.PRNGKey(seed), (num_samples,) + tuple(exp.data.shape), jnp.float32)

    def model_fn(p):
        return lambda xt, tt: exp.model.apply({"params": p}, xt, tt, y=y, train=False)

    rows = []
    for label, name, grid in lines:
        for nfe in nfes:
            fn = jax.jit(lambda p, x, name=name, nfe=nfe, grid=grid: run_method(
                name, model_fn(p), exp.schedule, x, nfe, grid=grid, ddim_spacing=ddim_spacing, mean_type=exp.mean_type,
                var_type=exp.var_type))  # fmt: skip
            t0 = time.perf_counter()
            compiled = fn.lower(run.params, x_T).compile()
            t1 = time.perf_counter()
            x, used = compiled(run.params, x_T)
            x = np.asarray(x)
            t2 = time.perf_counter()
            m = images.reference_metrics(x, reference, sample_labels=labels)
            rows.append(dict(label=label, method=name, grid=grid, nfe=nfe, nfe_used=int(used),
                             classifier_fid=m["classifier_fid"],
                             sample_accuracy=m.get("sample_accuracy"), compile_s=round(t1 - t0, 2),
                             run_s=round(t2 - t1, 2)))  # fmt: skip
            log(f"  {label:22s} NFE {int(used):4d}  classifier FID {m['classifier_fid']:8.3f}  sample {t2 - t1:6.1f} s")
    return dict(workdir=workdir, checkpoint_step=run.step, num_samples=num_samples, rows=rows)


# ============================================================================ output


def table(rows: list[dict], nfes, metric: str, fmt: str = "{:.2e}") -> str:
    """Markdown table: one row per method, one column per NFE asked for."""
    methods = list(dict.fromkeys(r["label"] for r in rows))
    lines = [f"| {metric} | " + " | ".join(str(n) for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for m in methods:
        cells = []
        for n in nfes:
            r = next((r for r in rows if r["label"] == m and r["nfe"] == n), None)
            cells.append("-" if r is None or r.get(metric) is None else fmt.format(r[metric]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def moonshot(rows: list[dict]) -> dict | None:
    """The best method's rms at 10 NFE beside DDIM's at 50 NFE (None when either is missing)."""
    at10 = [r for r in rows if r["nfe"] == 10]
    ddim50 = next((r for r in rows if r["method"] == "ddim" and r["nfe"] == 50), None)
    if not at10 or ddim50 is None:
        return None
    best = min(at10, key=lambda r: r["rms"])
    return dict(best_method=best["label"], best_rms_at_10=best["rms"], ddim_rms_at_50=ddim50["rms"],
                ratio=best["rms"] / ddim50["rms"])  # fmt: skip


def plot(results: dict, path: str) -> None:
    """Log-log rms (top) and distribution distance (bottom) vs NFE, one line per method, one column per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models) + 2.5, 9), squeeze=False)
    styles = {"ddim": ("k", "o"), "dpm++1": ("tab:gray", "x"), "dpm++2": ("tab:cyan", "s"), "dpm++3": ("tab:blue", "^"),
              "unipc1": ("tab:olive", "x"), "unipc2": ("tab:orange", "s"), "unipc3": ("tab:red", "^"),
              "unipc2_bh1": ("tab:pink", "s"), "unipc3_bh1": ("tab:purple", "^"), "edm": ("tab:green", "D")}
    grid_styles = {"logSNR": "-", "time_uniform": "--", "edm": ":"}
    for j, name in enumerate(models):
        res = results["models"][name]
        metric2 = "nn" if "nn" in res["floor"] else "sw1"
        for i, metric in enumerate(("rms", metric2)):
            ax = axes[i][j]
            for label in dict.fromkeys(r["label"] for r in res["rows"]):
                rs = [r for r in res["rows"] if r["label"] == label]
                c, mk = styles.get(rs[0]["method"], (None, "o"))
                ls = grid_styles.get(rs[0]["grid"], "-")
                ax.plot([r["nfe_used"] for r in rs], [r[metric] for r in rs], color=c, marker=mk, ls=ls, label=label,
                        ms=4, lw=1.2 if rs[0]["grid"] else 2.0)  # fmt: skip
            if metric != "rms":
                ax.axhline(res["floor"][metric], color="k", lw=0.8, ls=":", label="exact samples")
                ax.axhline(res["floor"][metric + "_reference"], color="tab:purple", lw=0.8, ls="-.",
                           label="converged ODE (x_ref)")  # fmt: skip
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = sorted(results["nfe"])  # edm's points sit at 2N - 1 <= NFE
            ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel("NFE (model evaluations)")
            ax.set_ylabel({"rms": "RMS distance to the exact ODE solution", "sw1": "sliced W1 to exact samples",
                           "nn": "per-pixel RMS to the nearest mean"}[metric])  # fmt: skip
            ax.set_title(f"{name} (D = {res['dim']}, K = {res['components']}, n = {res['n']})")
            ax.grid(True, which="both", alpha=0.3)
            if metric != "rms":
                ax.legend(handles=ax.get_lines()[-2:], fontsize=8, loc="upper right")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, title="solid: logSNR grid\ndashed: time-uniform",
               title_fontsize=8)  # fmt: skip
    fig.suptitle("diffax samplers: error vs NFE on exact Gaussian-mixture eps models (linear T = 1000, float64)")
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (6 * len(models) + 2.5), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ============================================================================ main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nfe", default=",".join(map(str, NFES)), help="comma-separated NFEs")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, of {list(METHODS)}")
    p.add_argument("--models", default="ring_2d,mnist_mix", help="comma-separated, of ring_2d, mnist_mix")
    p.add_argument("--grids", default="time_uniform,logSNR", help=f"the multistep solvers' timestep grids, of {GRIDS}")
    p.add_argument("--ddim_spacing", default="leading", choices=samplers.DDIM_SPACINGS)
    p.add_argument("--n_2d", type=int, default=4096, help="samples (one x_T each) of ring_2d")
    p.add_argument("--n_image", type=int, default=256, help="samples (one x_T each) of mnist_mix")
    p.add_argument("--num_images", type=int, default=200, help="mnist_mix components (MNIST training images)")
    p.add_argument("--pixel_std", type=float, default=0.05, help="mnist_mix per-pixel std (data in [-1, 1])")
    p.add_argument("--data_path", default=None, help="MNIST IDX directory (default ../shared/data/mnist)")
    p.add_argument("--ref_tol", type=float, default=1e-10, help="rtol = atol of the adaptive reference solve")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_overhead", action="store_true")
    p.add_argument("--overhead_batch", type=int, default=256)
    p.add_argument("--overhead_nfe", type=int, default=5)
    p.add_argument("--overhead_repeats", type=int, default=3)
    p.add_argument("--mnist_workdir", default=None, help="a trained MNIST run: also classifier FID per method / NFE")
    p.add_argument("--classifier", default="runs/mnist_classifier/classifier.msgpack")
    p.add_argument("--mnist_nfe", default="10,20,50")
    p.add_argument("--mnist_num_samples", type=int, default=500)
    p.add_argument("--quick", action="store_true", help="smoke run: NFE 5,10,20,50, n 1024 / 64, 50 images, "
                   "overhead batch 32 x 2 NFE")  # fmt: skip
    p.add_argument("--out_dir", default=None, help="write nfe_frontier.json and nfe_frontier.png here")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    if a.quick:
        a.nfe, a.n_2d, a.n_image, a.num_images = "5,10,20,50", 1024, 64, 50
        a.overhead_batch, a.overhead_nfe, a.overhead_repeats = 32, 2, 2
    a.nfe = [int(v) for v in a.nfe.split(",")]
    a.mnist_nfe = [int(v) for v in a.mnist_nfe.split(",")]
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    a.grids = [g.strip() for g in a.grids.split(",") if g.strip()]
    for g in a.grids:
        if g not in GRIDS:
            p.error(f"--grids: unknown grid {g!r}; allowed: {list(GRIDS)}")
    for m in a.methods:
        if m not in METHODS:
            p.error(f"--methods: unknown method {m!r}; allowed: {list(METHODS)}")
    for m in a.models:
        if m not in ("ring_2d", "mnist_mix"):
            p.error(f"--models: unknown model {m!r}; allowed: ring_2d, mnist_mix")
    if min(a.nfe) < 3:
        p.error(f"--nfe values must be >= 3 (EDM's Heun needs 2 steps = 3 NFE), got {a.nfe}")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    log = (lambda *_: None) if a.json else (lambda msg: print(msg, flush=True))
    start = time.perf_counter()
    lines = variants(a.methods, a.grids)
    results: dict = dict(nfe=a.nfe, methods=a.methods, grids=a.grids, ddim_spacing=a.ddim_spacing, seed=a.seed,
                         models={})  # fmt: skip
    with jax.enable_x64(True):
        s = schedules.linear(1000)
        for name in a.models:
            t0 = time.perf_counter()
            if name == "ring_2d":
                mix, n = ring_mixture(), a.n_2d
            else:
                mix, n = image_mixture(a.num_images, a.pixel_std, a.data_path), a.n_image
            log(f"{name}: K = {mix.num_components}, D = {mix.dim}, n = {n}")
            res = frontier(MixtureModel(mix.with_schedule(s), s), n=n, nfes=a.nfe, lines=lines,
                           ddim_spacing=a.ddim_spacing, seed=a.seed, ref_tol=a.ref_tol,
                           nearest_mean=name == "mnist_mix",
                           log=log)  # fmt: skip
            res["wall_s"] = round(time.perf_counter() - t0, 1)
            if name == "mnist_mix":
                res.update(num_images=a.num_images, pixel_std=a.pixel_std)
                res["moonshot"] = moonshot(res["rows"])
            results["models"][name] = res
    if not a.skip_overhead:
        t0 = time.perf_counter()
        results["overhead"] = sampler_overhead(batch=a.overhead_batch, nfe=a.overhead_nfe, repeats=a.overhead_repeats,
                                               grid=a.grids[0], ddim_spacing=a.ddim_spacing)  # fmt: skip
        results["overhead"]["wall_s"] = round(time.perf_counter() - t0, 1)
    if a.mnist_workdir:
        results["mnist_fid"] = mnist_fid(a.mnist_workdir, a.classifier, lines=lines, nfes=a.mnist_nfe,
                                         num_samples=a.mnist_num_samples, seed=a.seed, ddim_spacing=a.ddim_spacing,
                                         data_path=a.data_path, log=log)  # fmt: skip
    results["wall_s"] = round(time.perf_counter() - start, 1)
    if a.out_dir:
        os.makedirs(a.out_dir, exist_ok=True)
        with open(os.path.join(a.out_dir, "nfe_frontier.json"), "w") as f:
            json.dump(results, f, indent=1)
        if results["models"]:
            plot(results, os.path.join(a.out_dir, "nfe_frontier.png"))
    if a.json:
        print(json.dumps(results))
        return results
    print(report(results))
    return results


def report(results: dict) -> str:
    """The tables, the moonshot line and the overhead, as markdown."""
    out, nfes = [], results["nfe"]
    for name, res in results["models"].items():
        ref = res["reference"]
        out.append(f"\n### {name} (D = {res['dim']}, K = {res['components']}, n = {res['n']}; DDIM spacing "
                   f"{results['ddim_spacing']}, solvers' grid after the @)\n")  # fmt: skip
        out.append(f"Reference: adaptive ODE at rtol = atol = {ref['ref_tol']:g}; its rms to the solve at 100x tol "
                   f"{ref['rms_ref_100tol']:.1e}, to DPM-Solver++(3) on all 1000 indices "
                   f"{ref['rms_dpm3_all_indices']:.1e}.\n")  # fmt: skip
        out.append(table(res["rows"], nfes, "rms"))
        out.append("")
        out.append(table(res["rows"], nfes, "flip", "{:.3f}"))
        out.append("")
        out.append(table(res["rows"], nfes, "sw1", "{:.3f}") + f"\n(exact samples: sw1 {res['floor']['sw1']:.3f}; "
                   f"the converged ODE x_ref: {res['floor']['sw1_reference']:.3f})")  # fmt: skip
        if "nn" in res["floor"]:
            out.append("")
            out.append(table(res["rows"], nfes, "nn", "{:.4f}") + f"\n(exact samples: nn {res['floor']['nn']:.4f}; "
                       f"the converged ODE x_ref: {res['floor']['nn_reference']:.4f})")  # fmt: skip
        ms = res.get("moonshot")
        if ms:
            out.append(f"\nMoonshot ({name}): at 10 NFE the best sampler, {ms['best_method']}, has rms "
                       f"{ms['best_rms_at_10']:.2e}; DDIM at 50 NFE has {ms['ddim_rms_at_50']:.2e} "
                       f"(ratio {ms['ratio']:.2f}).")  # fmt: skip
    if "overhead" in results:
        o = results["overhead"]
        out.append(f"\n### Sampler overhead ({o['model']}, batch {o['batch']}, {o['nfe']} NFE, {o['devices']})\n")
        out.append(f"One jitted model call: {o['model_call_s'] * 1e3:.1f} ms.\n")
        out.append("| sampler | s per NFE | / model call | own work per step (free model) | 1 + own / model call "
                   "| compile s |\n|---|---|---|---|---|---|")  # fmt: skip
        for r in o["rows"]:
            out.append(f"| {r['method']} | {r['per_nfe_s']:.4f} | {r['ratio']:.3f} | {r['own_per_step_ms']:.3f} ms | "
                       f"{r['own_ratio']:.4f} | {r['compile_s']} |")  # fmt: skip
    if "mnist_fid" in results:
        fid = results["mnist_fid"]
        out.append(f"\n### Classifier FID, {fid['workdir']} (n = {fid['num_samples']})\n")
        out.append(table(results["mnist_fid"]["rows"], sorted({r["nfe"] for r in results["mnist_fid"]["rows"]}),
                         "classifier_fid", "{:.2f}"))  # fmt: skip
    out.append(f"\nwall time {results['wall_s']} s")
    return "\n".join(out)


if __name__ == "__main__":
    main()
