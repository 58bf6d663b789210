"""Continuous-time objectives and samplers through `python -m diffax.main` (issue 22, items 3 and 4).

toy2d (swiss roll, the MLP of configs/toy2d.py) trained 300 steps (training.num_steps = optim.decay_steps = 300)
with ':edm' (EDM loss, preconditioned MLP, EDM Heun sampler, 18 steps = 35 NFE) and ':flow' (flow matching,
flow Heun, 18 steps = 36 NFE), 2000 samples, eval.json's distance_ratio (sliced W1 of the samples to held-out
data over the data-vs-held-out baseline; `diffax.evaluation.toys`). Each run is one subprocess on the CPU.
Measured (2-core CPU, these commands; `configs/toy2d.py` at 300 steps, 2000 samples):
    DDPM (ancestral, 1000 steps)   1.68      :edm   1.82      :flow   1.51      (1-step :edm   5470)
    the :flow run sampled by 'edm' (18 steps, 35 NFE)   2.01;   by 'euler' 35 / 5 steps   1.34 / 2.92
    the DDPM run sampled by DDIM, 35 steps   2.12;   by sampling.method='edm', 18 steps (35 NFE)   1.96
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _processes import cpu_env

from diffax.training import builders, presets, restore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 300
SHORT = [f"--config.training.num_steps={STEPS}", f"--config.optim.decay_steps={STEPS}",
         "--config.training.checkpoint_every=150", "--config.training.log_every=50",
         "--config.sampling.num_samples=2000"]  # fmt: skip
# 1.5 x the DDPM toy config's distance_ratio at 300 steps (1.68, see the module docstring).
DDPM_RATIO_300 = 1.68
BOUND = 1.5 * DDPM_RATIO_300

def main(workdir, config: str, *flags: str, devices: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m diffax.main --config=configs/CONFIG --workdir=WORKDIR FLAGS`` on `devices` CPU devices."""
    cmd = [sys.executable, "-m", "diffax.main", f"--config={os.path.join(REPO, 'configs', config)}",
           f"--workdir={workdir}", *flags]  # fmt: skip
    out = subprocess.run(cmd, env=cpu_env(devices), cwd=REPO, capture_output=True, text=True, timeout=900)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def ratio(workdir) -> float:
    return json.loads((workdir / "eval.json").read_text())["distance_ratio"]


def samples(workdir) -> np.ndarray:
    return np.load(workdir / "samples.npz")["samples"]


def trained_runs(tmp_path_factory, variants) -> dict:
    """{variant: workdir} of `configs/toy2d.py:<variant>` trained, sampled and evaluated with `SHORT`."""
    out = {}
    for variant in variants:
        workdir = tmp_path_factory.mktemp(variant)
        main(workdir, f"toy2d.py:{variant}", "--mode=train,sample,eval", *SHORT)
        out[variant] = workdir
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The :edm and :flow runs of the docstring (train, sample, eval), once for the module."""
    return trained_runs(tmp_path_factory, ("edm", "flow"))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["edm", "flow"])
def test_toy2d_edm_and_flow_reach_the_ddpm_quality(runs, variant, tmp_path):
    """distance_ratio <= 1.5 x DDPM's at equal steps (2.52; measured :edm 1.82, :flow 1.51). Negative control:
    the same config trained 1 step (an untrained model) fails it."""
    assert ratio(runs[variant]) <= BOUND, ratio(runs[variant])
    main(tmp_path, f"toy2d.py:{variant}", "--mode=train,sample,eval", "--config.training.num_steps=1",
         "--config.sampling.num_samples=2000")
    assert ratio(tmp_path) > BOUND, ratio(tmp_path)


@pytest.mark.slow
def test_flow_run_sampled_by_edm_and_euler(runs, tmp_path):
    """The :flow checkpoint sampled with sampling.method='edm' (`flow_matching.denoiser_from_velocity`, 18 steps =
    35 NFE; measured 2.01) and 'euler' (35 steps; measured 1.34) passes the same bound (2.52). Negative control:
    Euler with 5 steps (measured 2.92) fails it."""
    got = {}
    for method, steps in (("edm", 18), ("euler", 35), ("euler", 5)):
        workdir = tmp_path / f"{method}{steps}"
        shutil.copytree(runs["flow"] / "checkpoints", workdir / "checkpoints")
        main(workdir, "toy2d.py:flow", "--mode=sample,eval", *SHORT, f"--config.sampling.method={method}",
             f"--config.sampling.num_steps={steps}")
        got[method, steps] = ratio(workdir)
    assert got["edm", 18] <= BOUND and got["euler", 35] <= BOUND, got
    assert got["euler", 5] > BOUND, got


@pytest.mark.slow
def test_resumed_edm_run_is_bitwise_the_straight_one(runs, tmp_path):
    """The :edm run's workdir with its step-300 checkpoint removed, resumed from step 150 to 300: every array of
    the step-300 TrainState (params, EMA, Adam moments, step, rng) equals the straight run's bitwise."""
    import orbax.checkpoint as ocp

    resumed = tmp_path / "resumed"
    shutil.copytree(runs["edm"] / "checkpoints", resumed / "checkpoints")
    shutil.rmtree(resumed / "checkpoints" / str(STEPS))
    main(resumed, "toy2d.py:edm", "--mode=train", *SHORT)

    def state(workdir, step):
        return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))

    a, b = state(runs["edm"], STEPS), state(resumed, STEPS)
    assert int(a["step"]) == int(b["step"]) == STEPS
    for x, y in zip(jax_leaves(a), jax_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(jax_leaves(state(runs["edm"], 150)["params"]), jax_leaves(a["params"])))
    assert moved > 1e-3, moved  # the resumed 150 steps did move the weights


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.slow
def test_edm_sampler_on_8_devices_equals_1_device(runs, tmp_path):
    """The :edm checkpoint sampled on 8 forced devices (per-device batch 250) and in chunks of 500 on 1 device
    gives the 1-device samples (float32 rounding only: rtol 1e-5, atol 1e-6), deterministic and with churn
    (s_churn = 5: its noise comes from each sample's own key). Negative control: the churned samples differ
    from the deterministic ones by > 1e-2."""
    det = samples(runs["edm"])
    churn = {}
    for name, devices, chunk, churn_flag in (("det8", 8, 0, "0.0"), ("churn1", 1, 500, "5.0"),
                                             ("churn8", 8, 0, "5.0")):  # fmt: skip
        workdir = tmp_path / name
        shutil.copytree(runs["edm"] / "checkpoints", workdir / "checkpoints")
        main(workdir, "toy2d.py:edm", "--mode=sample", *SHORT, f"--config.sampling.batch_size={chunk}",
             f"--config.sampling.s_churn={churn_flag}", devices=devices)
        churn[name] = samples(workdir)
    np.testing.assert_allclose(churn["det8"], det, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(churn["churn8"], churn["churn1"], rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(churn["churn1"] - det)) > 1e-2


@pytest.mark.slow
def test_edm_sampler_on_a_ddpm_run_is_close_to_ddim_at_equal_nfe(tmp_path):
    """A DDPM toy2d run (300 steps) sampled with sampling.method='edm' (`edm.denoiser_from_discrete`, 18 steps =
    35 NFE, sigma in [sigma_0 = 0.01, 80]) and with DDIM at 35 steps: the EDM sampler's distance_ratio is at
    most 1.25 x DDIM's (measured 1.96 vs 2.12). Negative control: the EDM sampler with 10 steps (19 NFE,
    measured 3.65) fails the bound."""
    main(tmp_path, "toy2d.py:swiss_roll", "--mode=train", *SHORT)
    got = {}
    for method, steps in (("ddim", 35), ("edm", 18), ("edm", 10)):
        main(tmp_path, "toy2d.py:swiss_roll", "--mode=sample,eval", *SHORT, f"--config.sampling.method={method}",
             f"--config.sampling.num_steps={steps}")
        got[method, steps] = ratio(tmp_path)
    assert got["edm", 18] <= 1.25 * got["ddim", 35], got
    assert got["edm", 10] > 1.25 * got["ddim", 35], got


@pytest.mark.slow
def test_mismatched_objective_and_method_are_refused(runs, tmp_path):
    """Resuming the :edm run as a DDPM run, sampling it as a flow run, 'ddim' on a flow run and
    'annealed_langevin' on an edm run: one `diffax: error:` line naming the values."""
    cases = [
        (runs["edm"], "toy2d.py:swiss_roll", "--mode=train", "training.objective: run 'edm' vs now 'diffusion'"),
        (runs["edm"], "toy2d.py:flow", "--mode=sample", "training.objective: run 'edm' vs now 'flow_matching'"),
        (runs["edm"], "toy2d.py:edm", "--mode=sample --config.edm.sigma_data=0.5",
         "edm.sigma_data: run 1.0 vs now 0.5"),
        (tmp_path, "toy2d.py:flow", "--mode=train --config.sampling.method=ddim",
         "sampling.method='ddim' does not fit training.objective='flow_matching'"),
        (tmp_path, "toy2d.py:edm", "--mode=train --config.sampling.method=annealed_langevin",
         "sampling.method='annealed_langevin' does not fit training.objective='edm'"),
    ]
    for workdir, config, flags, message in cases:
        out = main(workdir, config, *flags.split(), *SHORT, check=False)
        assert out.returncode != 0
        assert "diffax: error: " in out.stderr and message in out.stderr, out.stderr[-2000:]


def _toy(arg: str):
    return presets.load_config(os.path.join(REPO, "configs", f"toy2d.py:{arg}"))


def test_sample_fingerprint_holds_the_continuous_keys_only_where_they_matter():
    """A discrete run's fingerprint ignores sampling.rho (its samples do not depend on it: parts saved before
    the key existed stay valid); an :edm run's changes with it, and with edm.sigma_max (the sampler's range)."""
    for arg, moves in (("swiss_roll", False), ("edm", True)):
        config = _toy(arg)
        parts = builders.build(config).sampling.fingerprint_parts
        config.sampling.rho = 3.0
        assert (builders.build(config).sampling.fingerprint_parts != parts) == moves, arg
    config = _toy("edm")
    config.edm.sigma_max = 40.0
    assert builders.build(config).sampling.fingerprint_parts != builders.build(_toy("edm")).sampling.fingerprint_parts


def test_run_check_compares_the_network_keys_and_frees_the_training_only_ones():
    """restore.check_compatible: edm.sigma_data / kind and the objective always count; edm.p_mean / p_std,
    edm.sigma_min / sigma_max and flow.* may differ for sample / eval but not for a resume."""
    saved = _toy("edm").to_dict()
    for key, value, free_for_sampling in (("edm.sigma_data", 0.5, False), ("edm.kind", "vp", False),
                                          ("edm.p_mean", -1.0, True), ("edm.sigma_max", 40.0, True),
                                          ("flow.logit_std", 2.0, True)):  # fmt: skip
        config = _toy("edm")
        section, field = key.split(".")
        config[section][field] = value
        with pytest.raises(ValueError, match=f"{key}: run"):
            restore.check_compatible(saved, config.to_dict(), purpose="resume")
        if free_for_sampling:
            restore.check_compatible(saved, config.to_dict(), purpose="sample")
        else:
            with pytest.raises(ValueError, match=f"{key}: run"):
                restore.check_compatible(saved, config.to_dict(), purpose="sample")


def test_bad_continuous_settings_are_refused_by_build():
    """One ValueError naming the value: bits/dim for an edm run, a learned variance, clip_x0 with the flow ODE,
    guidance with 'edm', an unknown flow.t_sampling, edm.kind."""
    cases = [("edm", "eval.bpd_num_examples", 8, "bpd_num_examples=8"),
             ("flow", "diffusion.var_type", "learned_range", "trains no variance"),
             ("flow", "flow.t_sampling", "beta", "flow.t_sampling"),
             ("edm", "edm.kind", "iddpm", "edm.kind")]  # fmt: skip
    for arg, key, value, message in cases:
        config = _toy(arg)
        section, field = key.split(".")
        config[section][field] = value
        with pytest.raises(ValueError, match=message):
            builders.build(config)
    config = _toy("flow")
    config.sampling.clip_x0 = 1.0
    with pytest.raises(ValueError, match="clip_x0=1.0 applies to"):
        builders.build(config).sampler()
    config = _toy("edm")
    config.sampling.guidance_w = 1.0
    with pytest.raises(ValueError, match="has no guidance"):
        builders.build(config).sampler()
