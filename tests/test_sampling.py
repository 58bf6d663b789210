"""Sampling through `python -m diffax.main --mode=sample` on every device and process, and its resume.

Sample i depends only on (seed, i) (`diffax.training.sampling`), so one trained class-conditional toy run
sampled in-process on 1 device (one chunk of 23) and on 8 forced CPU devices (chunks of 7, rounded up to 8)
gives the same samples.npz. The per-device batch differs between these runs, so float32 rounding may
differ: rtol 1e-5; labels are compared exactly. 2 processes (gloo) against 1 process on the same
checkpoint, with another per-device batch, is tests/test_main.py's 2-process test (rtol 1e-5, its
"portable" check), which also trains, kills and resumes in 2 processes.
A sampling run killed (kill -9) after some chunks and restarted ends with the samples of an
uninterrupted run, reusing the finished chunks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _processes import cpu_env as _env

from diffax import main as main_lib
from diffax.training import presets

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = {"model.num_classes": 3, "model.hidden": 32, "model.num_layers": 2, "training.num_steps": 20,
             "training.checkpoint_every": 20, "sampling.method": "ddim", "sampling.num_steps": 10,
             "sampling.num_samples": 23}  # fmt: skip


def _config(**extra):
    config = presets.load_config(REPO / "configs" / "toy2d.py:gmm2d")
    for key, value in {**OVERRIDES, **extra}.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def _cli(workdir: Path, *flags: str, **extra) -> list[str]:
    overrides = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]
    return [sys.executable, "-m", "diffax.main", "--config=configs/toy2d.py:gmm2d", f"--workdir={workdir}",
            "--mode=sample", *overrides, *flags]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("run") / "trained"
    main_lib.run(_config(), str(workdir), ["train"])
    return workdir


def _copy(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained, dest)
    return dest


def _wait(jobs: dict) -> None:
    for name, job in jobs.items():
        out, _ = job.communicate(timeout=480)
        assert job.returncode == 0, f"{name} failed:\n{out.decode()[-3000:]}"


def test_one_device_and_eight_devices_give_the_same_samples(trained, tmp_path):
    wd = {name: _copy(trained, tmp_path / name) for name in ("one", "eight")}
    job = subprocess.Popen(_cli(wd["eight"], **{"sampling.batch_size": 7}), env=_env(8), cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    main_lib.run(_config(), str(wd["one"]), ["sample"])
    _wait({"eight": job})
    ref = np.load(wd["one"] / "samples.npz")
    assert ref["samples"].shape == (23, 2) and ref["samples"].dtype == np.float32
    np.testing.assert_array_equal(ref["labels"], np.arange(23) % 3)
    np.testing.assert_array_equal(np.load(wd["one"] / "samples.npy"), ref["samples"])
    got = np.load(wd["eight"] / "samples.npz")
    np.testing.assert_array_equal(got["labels"], ref["labels"])
    np.testing.assert_allclose(got["samples"], ref["samples"], rtol=1e-5, atol=1e-6)
    # 8 devices drew 3 chunks of 8: the parts are there.
    assert sorted(os.listdir(wd["eight"] / "samples")) == [f"part-{j:05d}.npz" for j in range(3)]


def test_killed_sampling_run_resumes_from_its_finished_chunks(trained, tmp_path):
    """kill -9 of `--mode=sample` (chunks of 1 sample x 1000 ancestral steps: 60 parts) once >= 2 parts exist;
    the restart keeps those parts (byte-identical files) and the final samples.npz equals an uninterrupted
    run's exactly (same chunk size and device count: the same program computes every chunk)."""
    settings = {"sampling.batch_size": 1, "sampling.method": "ddpm", "sampling.num_steps": 1000,
                "sampling.num_samples": 60}  # many short chunks: the kill lands mid-run even on a slow machine
    straight, killed = _copy(trained, tmp_path / "straight"), _copy(trained, tmp_path / "killed")
    job = subprocess.Popen(_cli(killed, **settings), env=_env(1), cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    parts = killed / "samples"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("part-*.npz")) if parts.exists() else []) < 2:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    kept = {p.name: p.read_bytes() for p in parts.glob("part-*.npz")}
    assert 2 <= len(kept) < 60, sorted(kept)
    assert not (killed / "samples.npz").exists()
    main_lib.run(_config(**settings), str(killed), ["sample"])
    main_lib.run(_config(**settings), str(straight), ["sample"])
    for name, raw in kept.items():
        assert (parts / name).read_bytes() == raw, f"{name} was drawn again"
    np.testing.assert_array_equal(np.load(killed / "samples.npz")["samples"], np.load(straight / "samples.npz")["samples"])


def test_parts_of_other_settings_or_damaged_parts_are_drawn_again(trained, tmp_path):
    """A part written under other sampler settings (another num_steps) or a torn part file is not reused."""
    wd = _copy(trained, tmp_path / "wd")
    a = main_lib.run(_config(**{"sampling.batch_size": 5}), str(wd), ["sample"])["samples"]
    b = main_lib.run(_config(**{"sampling.batch_size": 5, "sampling.num_steps": 5}), str(wd), ["sample"])["samples"]
    assert np.max(np.abs(a - b)) > 1e-3  # not the cached parts of the 10-step run
    (wd / "samples" / "part-00001.npz").write_bytes(b"torn")
    c = main_lib.run(_config(**{"sampling.batch_size": 5, "sampling.num_steps": 5}), str(wd), ["sample"])["samples"]
    np.testing.assert_array_equal(b, c)
