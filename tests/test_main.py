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

from diffax import data, metrics
from diffax import main as main_lib
from diffax.evaluation import toys
from diffax.training import evaluate, presets


def w1(a, b) -> float:
    """W1 of two 1-D samples in float64 (`diffax.evaluation.metrics.wasserstein_1d` under x64)."""
    with jax.enable_x64(True):
        return float(metrics.wasserstein_1d(np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str):
    return presets.load_config(os.path.join(REPO, "configs", f"{name}.py"))


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
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = [sys.executable, "-m", "diffax.main", f"--workdir={tmp_path}", "--config=configs/gmm1d.py"]
    p = subprocess.run(base + ["--mode=trian"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "--mode must be one of" in p.stderr and "'trian'" in p.stderr
    p = subprocess.run(base + ["--config.training.num_stepz=3"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode != 0 and "num_stepz" in p.stderr
    assert not os.listdir(tmp_path)  # nothing was written
