"""sampling.method 'dpm_solver_pp', 'unipc', 'ode', 'pc' on 'diffusion' runs (issue 23, item 2: one sampler interface).

What is checked, each as two code paths that must agree:
  * every method starts from the x_T that 'ddim' draws from the same key, bitwise (runs of one seed are paired);
  * the CLI's sampler (`Experiment.sampler` under `per_example_sampler`: sample i from fold_in(key, i), label
    i mod K) equals the library function (`dpm_solver.dpm_solver_pp`, `unipc.unipc`, `ode.ode_sample`,
    `samplers.pc`) called directly per sample with a hand-built guided model_fn, for a class-conditional model
    under classifier-free guidance with a learned variance (learned_range), for an x0-model and (slow) for
    classifier guidance of a v-model;
  * the same through `python -m diffax.main --mode=sample` on trained toy runs, a CFG one (as above) and a
    v-model (slow), and 8 forced CPU devices against 1 device (slow);
  * the sample fingerprint holds exactly the sampling.* keys a method reads.
Tolerance (`_assert_close`): max |difference| <= 1e-5 max |sample|, float32 rounding of two XLA programs (README
"Command line": another program per batch shape), amplified over the steps by the models' fields (pc's corrector
step size is a ratio of norms). Measured on these runs (2-core CPU): at most 0.54 of it (CLI vs library: UniPC
with CFG 0.54, pc 0.41 / 0.49; 8 vs 1 device: UniPC 0.27, DPM-Solver++ and pc bitwise); the ODE CLI vs library
bitwise. The adaptive ODE on 8 devices is the exception: a rounding difference flips step accept / reject
decisions, so per-device batch 1 and 12 take different steps and agree only to the solve's accuracy (rtol = atol
= 1e-4 here: measured max |8 - 1 device| 4.9e-3 against 6.9e-3 between the 1-device samples and the converged
solve, rtol = atol = 1e-6): the test asserts that the 8-device solve is as accurate as the 1-device one,
|8 devices - converged| <= 2 |1 device - converged| (a factor 2 of margin: which steps flip is machine-dependent).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _processes import cpu_env

from diffax import diffusion, dpm_solver, guidance, models, ode, samplers, unipc
from diffax import main as main_lib
from diffax.processes import VP
from diffax.training import builders, presets, restore, sampler_builders, solver_builders

REPO = Path(__file__).resolve().parent.parent
METHODS = solver_builders.SOLVER_METHODS
# Non-default settings, so that a key the builder failed to pass on would show.
SETTINGS = {"dpm_solver_pp": {"sampling.order": 3, "sampling.num_steps": 8, "sampling.timestep_grid": "logSNR"},
            "unipc": {"sampling.order": 3, "sampling.num_steps": 8, "sampling.timestep_grid": "edm",
                      "sampling.unipc_variant": "bh1"},
            "ode": {"sampling.ode_rtol": 1e-4, "sampling.ode_atol": 1e-4},
            "pc": {"sampling.pc_snr": 0.1, "sampling.pc_n_corrector": 2}}  # fmt: skip
# Two models: class-conditional with label dropout, sampled with CFG, eps + learned_range variance (hybrid loss);
# and an unconditional v-model (x0 in the fast test too).
MODELS = {"cfg": {"model.num_classes": 3, "diffusion.p_uncond": 0.2, "sampling.guidance_w": 1.5,
                  "diffusion.var_type": "learned_range", "diffusion.loss_type": "hybrid"},
          "v": {"diffusion.mean_type": "v"},
          "x0": {"diffusion.mean_type": "x0"},
          # pc without its corrector here: the corrector's step size (a ratio of norms) amplifies float32 rounding
          # under a random classifier's gradient by up to 1e4 (the library alone, vmapped vs looped, differed by
          # 1.5e-4 relative); its keys are checked by the other two.
          "clf": {"diffusion.mean_type": "v", "sampling.classifier_scale": 2.0, "sampling.pc_n_corrector": 0}}  # fmt: skip
TINY = {"model.hidden": 32, "model.num_layers": 2, "diffusion.num_timesteps": 100, "training.num_steps": 300,
        "training.checkpoint_every": 300, "sampling.num_samples": 12}  # fmt: skip


def _config(*overrides: dict):
    config = presets.load_config(REPO / "configs" / "toy2d.py:gmm2d")
    for key, value in {k: v for o in (TINY, *overrides) for k, v in o.items()}.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def _direct(method: str, exp, params, key, i, w: float, clf=None) -> jax.Array:
    """Sample i as the library functions give it: key fold_in(key, i), label i mod K, one sample; ``clf`` =
    (module, params, scale) of a guiding classifier (K = its classes)."""
    k = jax.random.fold_in(key, i)
    shape = (1,) + exp.data.shape
    num_labels = exp.num_classes if clf is None else clf[0].num_classes
    y = None if num_labels is None else jnp.reshape(i % num_labels, (1,)).astype(jnp.int32)
    s, mt, vt = exp.schedule, exp.mean_type, exp.var_type

    def net(x, t, labels):
        return exp.model.apply({"params": params}, x, t, y=labels, train=False)

    model_fn = (guidance.classifier_free(net, y, w=w, null_label=exp.num_classes) if w
                else (lambda x, t: net(x, t, y if exp.num_classes else None)))  # fmt: skip
    if clf is not None:
        def log_prob(x, t, labels):
            logp = jax.nn.log_softmax(clf[0].apply({"params": clf[1]}, x, t, train=False))
            return jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]

        model_fn = guidance.classifier(model_fn, log_prob, s, y, scale=clf[2], mean_type=mt)
    c = exp.config["sampling"]

    def mean_part(x, t):
        return diffusion.split_variance_output(model_fn(x, t), vt)[0]

    if method == "dpm_solver_pp":
        x = dpm_solver.dpm_solver_pp(model_fn, s, k, shape, order=c["order"], num_steps=c["num_steps"],
                                     spacing=c["timestep_grid"], mean_type=mt, var_type=vt)  # fmt: skip
    elif method == "unipc":
        x = unipc.unipc(model_fn, s, k, shape, order=c["order"], variant=c["unipc_variant"],
                        num_steps=c["num_steps"], spacing=c["timestep_grid"], mean_type=mt, var_type=vt)  # fmt: skip
    elif method == "ode":  # ode_sample's own draw is the prior's: x_T as ddim draws it is passed
        x_T = jax.random.normal(jax.random.split(k)[0], shape)
        score_fn = ode.score_fn_from_model(mean_part, s, mean_type=mt)
        x, _ = ode.ode_sample(score_fn, VP.from_schedule(s), k, shape, x_init=x_T, rtol=c["ode_rtol"],
                              atol=c["ode_atol"])  # fmt: skip
    else:
        conv = {"eps": lambda s_, x_, t_, o: o, "x0": diffusion.x0_to_eps, "v": diffusion.v_to_eps}[mt]
        x = samplers.pc(lambda x_, t_: conv(s, x_, t_, mean_part(x_, t_)), s, k, shape, snr=c["pc_snr"],
                        n_corrector=c["pc_n_corrector"])  # fmt: skip
    return x[0]


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """max |got - want| <= 1e-5 max |want|: float32 rounding (see the module docstring)."""
    err, scale = float(np.max(np.abs(got - want))), float(np.max(np.abs(want)))
    assert err <= 1e-5 * scale, f"max |difference| {err:.3g} > 1e-5 x max |sample| {scale:.3g}"


def _direct_all(method, exp, params, key, n, w, clf=None) -> np.ndarray:
    """Samples 0..n-1 of `_direct`, vmapped over i (per-sample runs in one program, as the CLI's)."""
    return np.asarray(jax.jit(jax.vmap(lambda i: _direct(method, exp, params, key, i, w, clf)))(jnp.arange(n)))


# --------------------------------------------------------------------------- fast: in-process, random weights


class _Spy:
    """A model whose output is 0 and which records, in call order, every x it is called with."""

    def __init__(self):
        self.seen = []

    def apply(self, variables, x, t, y=None, train=False):
        jax.debug.callback(lambda v: self.seen.append(np.asarray(v)), x, ordered=True)
        return jnp.zeros_like(x)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_starts_from_the_x_T_ddim_draws(method):
    """The first x the model sees (x_T: every method's first call is at x_T) under the CLI's sampler is bitwise
    ddim's for the same key (two separately built samplers, one key). Negative control: `ode.ode_sample`'s own
    draw (x_init=None, the prior's key use) is a different x_T, so the pairing is the builder's doing."""
    key, shape = jax.random.PRNGKey(7), (4, 2)
    first = {}
    for m in ("ddim", method):
        spy = _Spy()
        sample, _ = sampler_builders.labeled_sampler(_config({"sampling.method": m}), spy,
                                                     builders.build(_config()).schedule, (2,))  # fmt: skip
        jax.block_until_ready(sample(None, key, shape[0], None))
        jax.effects_barrier()
        first[m] = spy.seen[0]
    np.testing.assert_array_equal(first[method], first["ddim"])
    assert first["ddim"].shape == shape and np.std(first["ddim"]) > 0.3
    prior_draw = VP.from_schedule(builders.build(_config()).schedule).prior_sample(key, shape)
    assert np.max(np.abs(np.asarray(prior_draw) - first["ddim"])) > 0.5


@pytest.mark.parametrize("model", ["cfg", pytest.param("x0", marks=pytest.mark.slow),
                                   pytest.param("clf", marks=pytest.mark.slow)])  # x0, clf: ~5-15 s each
@pytest.mark.parametrize("method", METHODS)
def test_cli_sampler_equals_the_library_function(method, model):
    """`per_example_sampler(*Experiment.sampler())` (the function `--mode=sample` draws with) on random weights
    (the init plus N(0, 0.1^2) per weight, so that outputs are of order 1 and larger) equals the library function
    per sample: CFG (w = 1.5) on a learned_range eps-model, an x0-model, and classifier guidance (scale 2, a
    random time-conditional `models.Classifier` of 3 classes) on a v-model; non-default order / grid / variant /
    tolerances / snr (`SETTINGS`). Tolerance `_assert_close` (measured <= 0.26 of it, UniPC with CFG; the ODE
    bitwise)."""
    config = _config({"sampling.method": method}, SETTINGS[method], MODELS[model])
    exp = builders.build(config)
    x0 = jnp.zeros((1,) + exp.data.shape)
    params = exp.model.init(jax.random.PRNGKey(0), x0, jnp.zeros((1,), jnp.int32))["params"]
    leaves, tree = jax.tree.flatten(params)  # weights of a larger scale than the init's: outputs of order 1
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    key, n = jax.random.PRNGKey(3), 4
    clf = None
    if model == "clf":
        module = models.Classifier(num_classes=3, hidden=32, num_layers=2, time_conditional=True)
        clf = (module, module.init(jax.random.PRNGKey(2), x0, jnp.zeros((1,), jnp.int32))["params"], 2.0)
    sampler = exp.sampler(None if clf is None else clf[:2])
    cli = np.asarray(jax.jit(sampler_builders.per_example_sampler(*sampler))(params, key, jnp.arange(n)))
    ref = _direct_all(method, exp, params, key, n, float(config.sampling.guidance_w), clf)
    scale = np.max(np.abs(ref))  # ~0.3 (x0-model) to ~100 (the random eps-model under CFG)
    assert np.all(np.isfinite(ref)) and scale > 0.1
    _assert_close(cli, ref)
    # Negative control: sample i against the library's sample i + 1 is far outside the tolerance.
    assert np.min(np.max(np.abs(cli[:-1] - ref[1:]), axis=1)) > 1e-2 * scale


def test_fingerprint_holds_exactly_the_keys_a_method_reads():
    """A key a method reads moves its sample fingerprint, one it does not read does not (so finished parts are
    reused); a ddim run's fingerprint ignores every solver key."""
    reads = {"dpm_solver_pp": ("order", 3), "unipc": ("unipc_variant", "bh1"), "ode": ("ode_rtol", 1e-3),
             "pc": ("pc_snr", 0.2)}  # fmt: skip
    others = {"eta": 0.5, "spacing": "trailing", "timestep_grid": "edm", "pc_n_corrector": 3, "ode_atol": 1e-3}

    def parts(method, **sampling):
        return builders.build(_config({"sampling.method": method},
                                      {f"sampling.{k}": v for k, v in sampling.items()})).sampling.fingerprint_parts

    for method, (key, value) in reads.items():
        base = parts(method)
        assert parts(method, **{key: value}) != base, (method, key)
        for k, v in others.items():
            read = k in solver_builders._READS[method]
            assert (parts(method, **{k: v}) != base) == read, (method, k)
    solver_keys = {"timestep_grid": "edm", "unipc_variant": "bh1", "ode_rtol": 1e-3, "ode_atol": 1e-3, "pc_snr": 0.2,
                   "pc_n_corrector": 3}  # fmt: skip
    assert set(solver_keys) | {"order"} == set(solver_builders.SOLVER_SAMPLING_KEYS)
    for k, v in solver_keys.items():
        assert parts("ddim", **{k: v}) == parts("ddim"), k
    assert parts("ddim", eta=0.5) != parts("ddim")  # control: a key ddim reads


# --------------------------------------------------------------------------- slow: python -m diffax.main


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """The 'cfg' and 'v' toy runs (gmm2d, MLP 32 x 2, T = 100, 300 steps), trained once for the module."""
    out = {}
    for name in ("cfg", "v"):
        workdir = tmp_path_factory.mktemp(name) / "run"
        main_lib.run(_config(MODELS[name]), str(workdir), ["train"])
        out[name] = workdir
    return out


def _cli_sample(trained: Path, dest: Path, overrides: dict, devices: int = 1, batch_size: int = 0) -> np.ndarray:
    shutil.copytree(trained / "checkpoints", dest / "checkpoints")
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **overrides, "sampling.batch_size": batch_size}.items()]
    cmd = [sys.executable, "-m", "diffax.main", "--config=configs/toy2d.py:gmm2d", f"--workdir={dest}",
           "--mode=sample", *flags]  # fmt: skip
    out = subprocess.run(cmd, env=cpu_env(devices), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return np.load(dest / "samples.npz")["samples"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cfg", "v"])
@pytest.mark.parametrize("method", METHODS)
def test_main_sample_equals_the_library_function_and_8_devices_equal_1(trained, tmp_path, method, model):
    """`python -m diffax.main --mode=sample` of a trained run equals the library function called directly with
    the run's EMA parameters and the CLI's key (stream 'sample' of the seed), `_assert_close`; for the CFG run
    also on 8 forced CPU devices in chunks of 8 (per-device batch 1) against 1 device in one chunk of 12, the
    same tolerance ('ode': within the solve's own error, see the module docstring)."""
    overrides = {"sampling.method": method, **SETTINGS[method], **MODELS[model]}
    got = _cli_sample(trained[model], tmp_path / "one", overrides)
    exp = builders.build(_config(overrides))
    params = restore.restore_params(exp, str(tmp_path / "one")).params
    key, n = restore.stream_key(exp.seed, "sample"), exp.sampling.num_samples
    ref = _direct_all(method, exp, params, key, n, exp.sampling.guidance_w)
    assert np.all(np.isfinite(ref)) and np.std(ref) > 0.5  # gmm2d-like samples (data std ~1.3)
    _assert_close(got, ref)
    if model != "cfg":
        return
    eight = _cli_sample(trained[model], tmp_path / "eight", overrides, devices=8, batch_size=7)
    if method != "ode":
        _assert_close(eight, got)
        return
    tight = builders.build(_config(overrides, {"sampling.ode_rtol": 1e-6, "sampling.ode_atol": 1e-6}))
    converged = _direct_all(method, tight, params, key, n, exp.sampling.guidance_w)
    err8, err1 = np.max(np.abs(eight - converged)), np.max(np.abs(got - converged))
    assert err8 <= 2.0 * err1, (err8, err1)  # the 8-device solve is as accurate as the 1-device one (within 2x)
