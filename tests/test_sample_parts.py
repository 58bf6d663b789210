"""Sampling through `python -m diffax.main --mode=sample` on every device and process, and its resume.

Sample i depends only on (seed, i) (`diffax.training.sample_parts`), so one trained class-conditional toy run
sampled in-process on 1 device (one chunk of 23) and on 8 forced CPU devices (chunks of 7, rounded up to 8)
gives the same samples.npz. The per-device batch differs between these runs, so float32 rounding may
differ: rtol 1e-5; labels are compared exactly. 2 processes (gloo) against 1 process on the same
checkpoint, with another per-device batch, is tests/test_main.py's 2-process test (rtol 1e-5, its
"portable" check), which also trains, kills and resumes in 2 processes.
A sampling run killed (kill -9) after some chunks and restarted ends with the samples of an
uninterrupted run, reusing the finished chunks. Each part holds the global indices of its samples, so a run
resumed on another device count or chunk size draws exactly the indices no part holds (issue 20's
reproduction: 124 samples in chunks of 60 on 1 device, resumed on 8 devices with chunks of 64), and a
damaged part is drawn again with a warning naming it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from _processes import cpu_env as _env
from _processes import free_port

from diffax import main as main_lib
from diffax.training import presets, sample_parts

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


def _parts(workdir: Path) -> list[Path]:
    return sorted((workdir / "samples").glob("part-*.npz"))


def _indices(workdir: Path) -> np.ndarray:
    """The global sample indices held by the parts of a workdir, concatenated in file-name order."""
    return np.concatenate([np.load(p)["indices"] for p in _parts(workdir)])


def _resume(workdir: Path, num_devices: int, **settings) -> subprocess.Popen:
    """`--mode=sample` on `num_devices` forced CPU devices (samples.npz of the earlier run deleted first)."""
    (workdir / "samples.npz").unlink(missing_ok=True)
    return subprocess.Popen(_cli(workdir, **settings), env=_env(num_devices), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip


@pytest.mark.slow
def test_one_device_and_eight_devices_give_the_same_samples(trained, tmp_path):
    """Also the resume across device counts in one workdir: the 8-device run's middle part (samples 8..15)
    deleted, the run resumed on 1 device in chunks of 5 draws exactly 8..15 (keeping the other parts
    byte for byte) and ends with the 1-device samples (rtol 1e-5, as above)."""
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
    # 8 devices drew 3 chunks of 8; the middle one is lost, the run resumes on 1 device in chunks of 5.
    parts = _parts(wd["eight"])
    assert len(parts) == 3
    kept = {p.name: p.read_bytes() for p in (parts[0], parts[2])}
    parts[1].unlink()
    (wd["eight"] / "samples.npz").unlink()
    main_lib.run(_config(**{"sampling.batch_size": 5}), str(wd["eight"]), ["sample"])
    got = np.load(wd["eight"] / "samples.npz")
    np.testing.assert_array_equal(got["labels"], ref["labels"])
    np.testing.assert_allclose(got["samples"], ref["samples"], rtol=1e-5, atol=1e-6)
    for name, raw in kept.items():
        assert (wd["eight"] / "samples" / name).read_bytes() == raw, f"{name} was drawn again"
    new = [np.load(p)["indices"] for p in _parts(wd["eight"]) if p.name not in kept]
    assert [list(i) for i in new] == [list(range(8, 13)), list(range(13, 16))]
    np.testing.assert_array_equal(np.sort(_indices(wd["eight"])), np.arange(23))


@pytest.mark.slow  # ~40 s: two 8-device processes
def test_sampling_resumed_on_another_device_count_draws_each_missing_sample_once(trained, tmp_path):
    """Issue 20's reproduction: 124 samples in chunks of 60 on 1 device (parts 0..59, 60..119, 120..123);
    samples.npz and the last part deleted; resumed on 8 forced devices (chunk 60 rounded up to 64). And the
    reverse with a third chunk size: 8 devices first (parts 0..63, 64..123), the first part deleted, resumed
    on 1 device in chunks of 50 (draws 0..49, 50..63). Both end with the uninterrupted 1-device samples:
    the reused samples bitwise, the redrawn ones within rtol 1e-5 / atol 1e-6 (another per-device batch:
    float rounding, see README), labels exactly i mod 3, and every index in exactly one part."""
    s = {"sampling.num_samples": 124, "sampling.batch_size": 60}
    reverse = _copy(trained, tmp_path / "reverse")
    first_on_eight = _resume(reverse, 8, **s)
    straight = _copy(trained, tmp_path / "straight")
    ref = main_lib.run(_config(**s), str(straight), ["sample"])["samples"]
    np.testing.assert_array_equal(np.load(straight / "samples.npz")["labels"], np.arange(124) % 3)
    on_one = shutil.copytree(straight, tmp_path / "on_one")
    _parts(on_one)[-1].unlink()  # samples 120..123
    on_eight = _resume(on_one, 8, **s)
    _wait({"8 devices first": first_on_eight})
    eight = np.load(reverse / "samples.npz")["samples"]
    _parts(reverse)[0].unlink()  # samples 0..63
    (reverse / "samples.npz").unlink()
    main_lib.run(_config(**{**s, "sampling.batch_size": 50}), str(reverse), ["sample"])
    _wait({"8 devices after 1": on_eight})
    for wd, first_run, reused in ((on_one, ref, slice(0, 120)), (reverse, eight, slice(64, 124))):
        got = np.load(wd / "samples.npz")
        np.testing.assert_array_equal(got["labels"], np.arange(124) % 3)
        np.testing.assert_allclose(got["samples"], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got["samples"][reused], first_run[reused])  # the kept parts, as saved
        np.testing.assert_array_equal(np.sort(_indices(wd)), np.arange(124))  # each index in one part


@pytest.mark.slow  # ~25 s: two processes
def test_sampling_resumed_in_two_processes_reuses_the_parts_of_one(trained, tmp_path):
    """Another process count: 23 samples in chunks of 10 in one process (parts 0..9, 10..19, 20..22), the
    middle part and samples.npz deleted, resumed as 2 processes (gloo, one CPU device each: every process
    reads the parts, they agree on the indices to reuse, process 0 writes): the samples of the 1-process
    run (rtol 1e-5 / atol 1e-6: 5 rows per device instead of 10), the other parts kept byte for byte, and
    one new part holding 10..19."""
    s = {"sampling.batch_size": 10}
    wd = _copy(trained, tmp_path / "wd")
    ref = main_lib.run(_config(**s), str(wd), ["sample"])["samples"]
    parts = _parts(wd)
    kept = {p.name: p.read_bytes() for p in (parts[0], parts[2])}
    parts[1].unlink()
    (wd / "samples.npz").unlink()
    port = free_port()
    jobs = {f"process {i}": subprocess.Popen(
        _cli(wd, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}", **s),
        env=_env(1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)}  # fmt: skip
    _wait(jobs)
    got = np.load(wd / "samples.npz")
    np.testing.assert_array_equal(got["labels"], np.arange(23) % 3)
    np.testing.assert_allclose(got["samples"], ref, rtol=1e-5, atol=1e-6)
    for name, raw in kept.items():
        assert (wd / "samples" / name).read_bytes() == raw, f"{name} was drawn again"
    np.testing.assert_array_equal(np.sort(_indices(wd)), np.arange(23))
    assert [list(np.load(p)["indices"]) for p in _parts(wd) if p.name not in kept] == [list(range(10, 20))]


@pytest.mark.slow
def test_damaged_parts_are_drawn_again_with_a_warning(trained, tmp_path):
    """A part with a flipped byte in its samples, a truncated part and an empty part: the restarted
    `--mode=sample` warns naming each file, draws their samples again (the same chunk size and device
    count: bitwise the uninterrupted run's) and leaves readable parts in their place."""
    s = {"sampling.batch_size": 5}
    wd = _copy(trained, tmp_path / "wd")
    ref = main_lib.run(_config(**s), str(wd), ["sample"])["samples"]
    parts = _parts(wd)
    assert len(parts) == 5
    raw = bytearray(parts[1].read_bytes())
    at = bytes(raw).find(ref[5].tobytes())  # the first sample of part 1 (samples 5..9)
    assert at > 0
    raw[at] ^= 0x01
    parts[1].write_bytes(bytes(raw))
    parts[2].write_bytes(parts[2].read_bytes()[: len(raw) // 2])
    parts[3].write_bytes(b"")
    job = _resume(wd, 1, **s)
    out, _ = job.communicate(timeout=480)
    log = out.decode()
    assert job.returncode == 0, log[-3000:]
    for p in parts[1:4]:
        assert f"sample part {p} cannot be used" in log, log[-3000:]
    assert log.count("cannot be used") == 3
    np.testing.assert_array_equal(np.load(wd / "samples.npz")["samples"], ref)
    np.testing.assert_array_equal(_indices(wd), np.arange(23))  # the damaged files were replaced


def test_a_part_with_any_byte_flipped_is_read_back_intact_or_refused(tmp_path, caplog):
    """Every single-byte change of a part file (each position, all bits flipped) either leaves its samples
    readable and unchanged (a byte the zip format does not use, e.g. a timestamp) or makes the part
    unusable with a warning; none raises."""
    x = np.arange(12, dtype=np.float32).reshape(6, 2) / 7
    sample_parts.write_part(str(tmp_path), "f" * 16, np.arange(3, 9), x)
    (path,) = tmp_path.glob("part-*.npz")
    assert path.name == f"part-{'f' * 16}-0000003-0000008.npz"
    raw = path.read_bytes()
    refused = 0
    for at in range(len(raw)):
        path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
        caplog.clear()
        have, rows = sample_parts.read_parts(str(tmp_path), "f" * 16, 9)
        if have.any():
            assert list(np.flatnonzero(have)) == list(range(3, 9)) and not caplog.records
            np.testing.assert_array_equal(rows[3:], x)
        else:
            assert rows is None and str(path) in caplog.text and "cannot be used" in caplog.text
            refused += 1
    assert refused > len(raw) // 2  # most bytes matter (the samples, indices and fingerprint all do)


def test_a_non_finite_chunk_raises_before_its_part_is_written(tmp_path):
    """Chunks of 3 of samples 0..9 where sample i >= 6 is NaN: FloatingPointError naming samples 6..8;
    only the parts of the finite chunks (0..2, 3..5) exist."""

    def sample_fn(params, key, indices):
        return jnp.where(indices[:, None] >= 6, jnp.nan, indices[:, None].astype(jnp.float32))

    with pytest.raises(FloatingPointError, match=r"3 non-finite values in samples 6\.\.8 \(not written\)"):
        sample_parts.draw_samples(sample_fn, None, jnp.zeros(2, jnp.uint32), 10, 3, parts_dir=str(tmp_path),
                                  fp="x", progress=False)  # fmt: skip
    assert [list(np.load(p)["indices"]) for p in sorted(tmp_path.glob("part-*.npz"))] == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.slow
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


@pytest.mark.slow
def test_parts_of_other_settings_or_damaged_parts_are_drawn_again(trained, tmp_path):
    """A part written under other sampler settings (another num_steps) or a torn part file is not reused."""
    wd = _copy(trained, tmp_path / "wd")
    a = main_lib.run(_config(**{"sampling.batch_size": 5}), str(wd), ["sample"])["samples"]
    parts_a = set(_parts(wd))
    b = main_lib.run(_config(**{"sampling.batch_size": 5, "sampling.num_steps": 5}), str(wd), ["sample"])["samples"]
    assert np.max(np.abs(a - b)) > 1e-3  # not the cached parts of the 10-step run
    parts_b = sorted(set(_parts(wd)) - parts_a)
    assert len(parts_a) == len(parts_b) == 5  # the parts of each setting, side by side
    parts_b[1].write_bytes(b"torn")
    c = main_lib.run(_config(**{"sampling.batch_size": 5, "sampling.num_steps": 5}), str(wd), ["sample"])["samples"]
    np.testing.assert_array_equal(b, c)
