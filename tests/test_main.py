"""End-to-end tests of the entry point (`diffax.main`) and the run layer (`diffax.training.train` / `evaluate`).

- gmm1d: a short training run, then `sample` and `eval`; the samples must match the seed mixture.
- MNIST with a tiny UNet under `tfds.testing.mock_data`: tests/test_image_eval.py (train, sample, eval).
- CLI errors: bad --mode, a --workdir that is a file, no --workdir, sampling an empty workdir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from _processes import cpu_env, free_port

from diffax import data
from diffax import main as main_lib
from diffax.evaluation import metrics, toys
from diffax.training import evaluate, presets


def w1(a, b) -> float:
    """W1 of two 1-D samples in float64 (`diffax.evaluation.metrics.wasserstein_1d` under x64)."""
    with jax.enable_x64(True):
        return float(metrics.wasserstein_1d(np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str):
    return presets.load_config(os.path.join(REPO, "configs", f"{name}.py"))


@pytest.mark.slow
def test_gmm1d_train_sample_eval_matches_mixture(tmp_path):
    """configs/gmm1d.py as shipped (3000 steps on 800 points, T=1000, 2000 DDPM samples).

    Bound: W1(samples, truth) <= 2.5 x the MEAN W1 of 2000 fresh data points to the truth (20 draws;
    "truth" = 20000 points). The model sees only 800 points, whose own W1 to the truth is ~2x that
    mean, so 2.5x is an honest bar for a good fit (measured: 1.6x). Mode weights: 0.5 +- 0.05 (the
    sampling std of a weight from 2000 samples is 0.011, of the 800 training points 0.018).
    The W1 bound (0.12) catches a width error of ~30% or a shift of ~0.12; negative controls: samples
    shrunk by 0.6 about each mode, shifted by 0.2, or all in one mode, fail.
    """
    config = _config("gmm1d")
    workdir = str(tmp_path)
    out = main_lib.run(config, workdir, ["train", "sample", "eval"])
    x = np.load(tmp_path / "samples.npy")
    assert x.shape == (2000, 1) and np.array_equal(x, out["samples"])
    for f in ("samples.png", "loss.png", "metrics.jsonl", "eval.json"):
        assert os.path.getsize(tmp_path / f) > 0, f
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))

    truth = data.toy("gmm1d", 20_000, seed=12345)[0]
    baseline = np.mean([w1(data.toy("gmm1d", 2000, seed=100 + i)[0], truth) for i in range(20)])
    mix = data.toy_mixture("gmm1d")

    def passes(s):
        w = toys.density_mode_weights(s, mix)
        return w1(s, truth) <= 2.5 * baseline and np.all(np.abs(w - 0.5) <= 0.05)

    assert passes(x), (w1(x, truth) / baseline, toys.density_mode_weights(x, mix))
    centre = np.where(x < 0, -2.0, 2.0)
    assert not passes(centre + 0.6 * (x - centre))  # too narrow
    assert not passes(x + 0.2)  # shifted
    assert not passes(np.abs(x))  # one mode only

    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["metric"] == "w1" and ev["checkpoint_step"] == 3000 and ev["num_samples"] == 2000
    heldout = data.toy("gmm1d", 2000, seed=config.seed + evaluate.HELDOUT_SEED_OFFSET)[0]
    assert ev["w1_samples_vs_heldout"] == pytest.approx(w1(x, heldout), rel=1e-12)
    assert ev["density_mode_weights"] == pytest.approx(toys.density_mode_weights(x, mix).tolist())
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(100, 3001, 100))


def test_wasserstein_1d_matches_closed_form():
    # W1 between point masses: |a - b|; between U{0,1} samples and their shift by c: c.
    assert w1(np.array([0.0]), np.array([3.0])) == pytest.approx(3.0)
    a = np.linspace(0, 1, 101)
    assert w1(a, a + 0.25) == pytest.approx(0.25, abs=1e-12)
    # unequal sizes: {0, 1} vs {0.5}: each half of the mass moves 0.5.
    assert w1(np.array([0.0, 1.0]), np.array([0.5])) == pytest.approx(0.5)
    # Sliced W1 of a cloud and its shift by v (|v| = 1): the mean over directions u of |<v, u>|, whose
    # expectation is 2/pi; the std of |cos| is sqrt(1/2 - 4/pi^2) = 0.31, so with 4096 directions the
    # standard error is 0.0048 (0.75%) and rel=0.04 is 5 sigma.
    pts = np.random.default_rng(0).standard_normal((500, 2))
    with jax.enable_x64(True):
        sw = float(metrics.sliced_wasserstein(pts, pts + np.array([1.0, 0.0]), key=jax.random.PRNGKey(0),
                                              num_projections=4096))
    assert sw == pytest.approx(2 / np.pi, rel=0.04)


def test_parse_modes_and_workdir_errors(tmp_path):
    assert main_lib.parse_modes("train,sample, eval") == ["train", "sample", "eval"]
    for bad in ("", "trian", "train,,bogus"):
        with pytest.raises(ValueError, match="--mode must be one of"):
            main_lib.parse_modes(bad)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        main_lib.check_workdir(str(tmp_path / "f"))
    with pytest.raises(ValueError, match="--workdir is required"):
        main_lib.check_workdir(None)
    assert main_lib.check_workdir(str(tmp_path / "new")) == str(tmp_path / "new")


def test_sample_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluate.sample(_config("gmm1d"), str(tmp_path))


def test_cli_rejects_bad_mode_and_unknown_key(tmp_path):
    env = cpu_env()
    base = [sys.executable, "-m", "diffax.main", f"--workdir={tmp_path}", "--config=configs/gmm1d.py"]
    p = subprocess.run(base + ["--mode=trian"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "--mode must be one of" in p.stderr and "'trian'" in p.stderr
    p = subprocess.run(base + ["--config.training.num_stepz=3"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode != 0 and "num_stepz" in p.stderr
    assert not os.listdir(tmp_path)  # nothing was written


# --- Two processes through the entry point -----------------------------------------------------------------------

_MP_OVERRIDES = {"model.num_classes": 3, "model.hidden": 32, "model.num_layers": 2, "training.batch_size": 64,
                 "training.checkpoint_every": 10, "training.log_every": 10, "optim.warmup_steps": 5,
                 "optim.decay_steps": 100, "sampling.method": "ddim", "sampling.num_steps": 10,
                 "sampling.num_samples": 23, "sampling.batch_size": 10, "eval.num_reference": 500}  # fmt: skip


def _mp_cli(workdir, mode: str, num_steps: int, process_id: int, port: int) -> list[str]:
    overrides = [f"--config.{k}={v}" for k, v in {**_MP_OVERRIDES, "training.num_steps": num_steps}.items()]
    return [sys.executable, "-m", "diffax.main", "--config=configs/toy2d.py:gmm2d", f"--workdir={workdir}",
            f"--mode={mode}", *overrides, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
            f"--process_id={process_id}"]  # fmt: skip


def _two_processes(workdir, mode: str, num_steps: int) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(_mp_cli(workdir, mode, num_steps, i, port), cwd=REPO, env=cpu_env(1),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]  # fmt: skip


def _final_steps(workdir) -> list[int]:
    ckpt = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) if os.path.isdir(ckpt) else []


@pytest.mark.slow
def test_two_processes_train_kill_resume_sample_eval_match_one_process(tmp_path):
    """`python -m diffax.main` as 2 processes (gloo on 127.0.0.1, one CPU device each; toy2d:gmm2d, a
    class-conditional MLP, global batch 64 = 32 per process): train with a checkpoint every 10 steps, kill -9
    BOTH processes once a checkpoint is final, resume to (that step + 20) with --mode=train,sample,eval.
    Compared with ONE process trained straight to the same step and sampled/evaluated the same way:
      - every array of the final TrainState (params, EMA, Adam moments, step): rtol 1e-5, atol 1e-7 (the
        2-process gradient is a cross-process mean of two half-batch means: float32 reduction order only);
      - samples.npz: labels equal; samples rtol 1e-4, atol 1e-5 (10 DDIM steps of a network whose weights
        agree to 1e-5);
      - eval.json: the same checkpoint step and sample count, every distance within 1e-4 absolute.
    The 2-process checkpoint also restores and samples in one process (rtol 1e-5). Controls: both processes
    of the first run end by SIGKILL (neither had finished), and the 1-process run's parameters one
    checkpoint earlier differ from the final ones by far more than the tolerance."""
    import signal
    import time

    import orbax.checkpoint as ocp

    mp, one = tmp_path / "two_processes", tmp_path / "one_process"
    jobs = _two_processes(mp, "train", 100_000)
    deadline = time.time() + 400
    while time.time() < deadline and not _final_steps(mp) and all(j.poll() is None for j in jobs):
        time.sleep(0.01)
    for j in jobs:
        j.send_signal(signal.SIGKILL)
    outs = [j.communicate(timeout=60)[0].decode()[-2000:] for j in jobs]
    assert all(j.returncode == -signal.SIGKILL for j in jobs), outs  # killed mid-run, not finished or crashed
    killed_at = _final_steps(mp)
    assert killed_at, outs
    target = killed_at[-1] + 20

    jobs = _two_processes(mp, "train,sample,eval", target)
    config = presets.load_config(os.path.join(REPO, "configs", "toy2d.py:gmm2d"))
    for key, value in {**_MP_OVERRIDES, "training.num_steps": target}.items():
        section, field = key.split(".")
        config[section][field] = value
    main_lib.run(config, str(one), ["train", "sample", "eval"])  # 1 process, straight, while the 2 run
    for j in jobs:
        out, _ = j.communicate(timeout=480)
        assert j.returncode == 0, out.decode()[-3000:]

    def state(workdir, step, like=None):
        path = os.path.join(workdir, "checkpoints", str(step), "state")
        if like is None:
            return ocp.StandardCheckpointer().restore(path)
        one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # saved over 2 processes' devices
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=one_device),
                              like)  # fmt: skip
        return ocp.StandardCheckpointer().restore(path, target)

    a = state(one, target)
    b = state(mp, target, like=a)
    assert int(a["step"]) == int(b["step"]) == target
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    earlier = state(one, target - 10)["params"]
    moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                zip(jax.tree.leaves(earlier), jax.tree.leaves(a["params"])))  # fmt: skip
    assert moved > 1e-3, moved  # 10 steps move the weights far beyond the tolerance

    ref, got = np.load(one / "samples.npz"), np.load(mp / "samples.npz")
    np.testing.assert_array_equal(got["labels"], np.arange(23) % 3)
    np.testing.assert_array_equal(got["labels"], ref["labels"])
    np.testing.assert_allclose(got["samples"], ref["samples"], rtol=1e-4, atol=1e-5)

    # The 2-process checkpoint restores in ONE process (another topology) and samples the same: no cached
    # parts (removed), a per-device batch of 10 instead of 5, so float32 rounding only: rtol 1e-5.
    import shutil

    portable = tmp_path / "portable"
    shutil.copytree(mp, portable)
    shutil.rmtree(portable / "samples")
    (portable / "samples.npz").unlink()
    main_lib.run(config, str(portable), ["sample"])
    np.testing.assert_allclose(np.load(portable / "samples.npz")["samples"], got["samples"], rtol=1e-5, atol=1e-6)

    ev_ref, ev = (json.loads((d / "eval.json").read_text()) for d in (one, mp))
    assert ev["checkpoint_step"] == ev_ref["checkpoint_step"] == target and ev["num_samples"] == 23
    assert set(ev) == set(ev_ref)
    for k, v in ev_ref.items():
        if isinstance(v, float):
            assert ev[k] == pytest.approx(v, abs=1e-4), k
    # Only process 0 wrote the run's log: one metrics row per 10 steps, the resumed rows after the kill's.
    steps = [json.loads(line)["step"] for line in (mp / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, target + 1, 10)), steps
