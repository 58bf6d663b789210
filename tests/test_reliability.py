"""The standing table of bad inputs and faults: what is done, what must be raised, what the message names.

Each `Case` row: ``setup(workdir)`` prepares files (optionally returning values for the message),
``action(workdir)`` does the bad thing, and the test asserts

- ``expected_exception`` is raised (None: the action must SUCCEED, e.g. a recovery) and its message
  contains ``message_substring`` (formatted with ``workdir`` and whatever ``setup`` returned; for a
  recovery it must appear in the log instead: the warning that says what was recovered from);
- where ``unchanged`` (the default for errors), every file under the workdir is byte-for-byte what it was
  before the action: a refused operation leaves the run's record alone.

To add a row (e.g. a CLI case), append a `Case` to `CASES`; the helpers below build small workdirs.
Everything runs on CPU in tmp_path, in well under a second per row once JAX has warmed up.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import os
import pickle
import re
import socket
import time
import zipfile
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest

from _processes import cpu_env

from diffax import data, workdir_lock
from diffax.checkpoint import Checkpointer
from diffax.checkpoint_integrity import CheckpointDamagedError
from diffax.workdir_lock import WorkdirLock, WorkdirLockedError

# Orbax leaves un-awaited read coroutines behind when TensorStore fails on a damaged file.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    action: Callable[[Path], Any]
    expected_exception: type[BaseException] | None
    message_substring: str
    setup: Callable[[Path], dict | None] | None = None
    unchanged: bool | None = None  # default: True for errors, False for recoveries

    def __str__(self) -> str:
        return self.name


# ------------------------------------------------------------------------------------------- checkpoints
N_W = 50_000


def _state(s: int) -> dict:
    rng = np.random.default_rng(s)
    return {"w": jnp.asarray(rng.standard_normal(N_W).astype(np.float32)), "b": jnp.arange(5.0) + s}


def _target() -> dict:
    return {"w": jnp.zeros(N_W), "b": jnp.zeros(5)}


def _ckpt_dir(wd: Path) -> Path:
    return wd / "checkpoints"


def _save(*steps: int):
    def setup(wd: Path) -> None:
        with Checkpointer(_ckpt_dir(wd), async_save=False) as c:
            for s in steps:
                c.save(s, _state(s), data_state={"position": s}, config={"seed": s})

    return setup


def _payload(step_dir: Path) -> Path:
    files = [Path(r) / f for r, _, fs in os.walk(step_dir / "state") for f in fs if os.path.basename(r) == "d"]
    return max(files, key=os.path.getsize)


def _damage(step: int, how: str, *steps: int):
    """setup: save ``steps`` (default just ``step``), then damage step ``step``'s files ``how``."""

    def setup(wd: Path) -> None:
        _save(*(steps or (step,)))(wd)
        sd = _ckpt_dir(wd) / str(step)
        if how == "flip":
            p = _payload(sd)
            raw = bytearray(p.read_bytes())
            raw[len(raw) // 2] ^= 0x10
            p.write_bytes(bytes(raw))
        elif how == "garbage":
            p = _payload(sd)
            p.write_bytes(np.random.default_rng(0).integers(0, 256, p.stat().st_size, dtype=np.uint8).tobytes())
        elif how == "truncate":
            p = _payload(sd)
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
        elif how == "delete":
            _payload(sd).unlink()
        elif how == "checksums":
            (sd / "checksums" / "metadata").write_bytes(b"\x00not json")
        elif how == "data":
            (sd / "data" / "metadata").write_text('{"position": ')
        elif how == "position":  # one digit, still valid JSON
            (sd / "data" / "metadata").write_text((sd / "data" / "metadata").read_text().replace(f": {step}", ": 7"))
        elif how == "config":
            (sd / "config" / "metadata").write_text('{"seed": ')
        else:
            raise ValueError(how)

    return setup


def _restore(step: int | None = None, target=_target):
    def action(wd: Path):
        with Checkpointer(_ckpt_dir(wd)) as c:
            return c.restore_latest_intact(target()) if step is None else c.restore(step, target())

    return action


def _verify(step: int):
    def action(wd: Path):
        with Checkpointer(_ckpt_dir(wd)) as c:
            return c.verify(step)

    return action


# -------------------------------------------------------------------------------------------------- lock
def _write_lock(**holder):
    def setup(wd: Path) -> dict:
        wd.mkdir(parents=True, exist_ok=True)
        (wd / ".lock").write_text(json.dumps(holder) if holder else "")
        return holder

    return setup


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _live_lock(wd: Path) -> dict:
    """A lock held by a live process of this host that is not us (our parent: alive while we run)."""
    pid = os.getppid()
    return _write_lock(host=socket.gethostname(), pid=pid, pid_start=workdir_lock.process_start(pid), started="t0")(wd)


def _aged(seconds: float, setup: Callable[[Path], dict | None]):
    """setup: ``setup``, then the lock file's modification time set ``seconds`` into the past (its holder's
    heartbeat stopped that long ago)."""

    def aged(wd: Path) -> dict | None:
        values = setup(wd)
        t = time.time() - seconds
        os.utime(wd / ".lock", (t, t))
        return values

    return aged


def _take_lock(wd: Path):
    with WorkdirLock(wd, process_index=0):
        pass


def _take_lock_with_os_error(func: str, err: int, sub: str = ""):
    def action(wd: Path):
        with mock.patch.object(workdir_lock.os, func, side_effect=OSError(err, os.strerror(err))):
            _take_lock(wd / sub if sub else wd)

    return action


# -------------------------------------------------------------------------------------------------- data
def _mnist_dir(labels_n: int = 4):
    """setup: a small MNIST-format dir; the test labels have ``labels_n`` entries (10000: published shape)."""

    def setup(wd: Path) -> None:
        wd.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for prefix, n in (("train", 6), ("t10k", labels_n)):
            images = rng.integers(0, 256, (min(n, 6), 28, 28), dtype=np.uint8)  # small: the labels are what's checked
            data.write_idx(str(wd / f"{prefix}-images-idx3-ubyte.gz"), images)
            data.write_idx(str(wd / f"{prefix}-labels-idx1-ubyte.gz"), rng.integers(0, 10, n).astype(np.uint8))

    return setup


def _then(first: Callable[[Path], Any], second: Callable[[Path], Any]):
    def setup(wd: Path):
        first(wd)
        return second(wd)

    return setup


def _truncate_gz(wd: Path) -> None:
    p = wd / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-20])


def _not_gzip(wd: Path) -> None:
    (wd / "train-images-idx3-ubyte.gz").write_bytes(b"\x00\x00\x08\x03" + bytes(100))


def _npz_file(content: Callable[[Path], None]):
    def setup(wd: Path) -> None:
        wd.mkdir(parents=True, exist_ok=True)
        content(wd / "d.npz")

    return setup


def _good_npz(p: Path) -> None:
    with open(p, "wb") as f:  # np.savez would append .npz to a name without it; here it has one
        np.savez(f, images=np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8))


def _damaged_member_npz(p: Path) -> None:
    _good_npz(p)
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("images.npy")
    raw[info.header_offset + 30 + len(info.filename) + info.file_size // 2] ^= 0xFF  # inside the stored data
    p.write_bytes(bytes(raw))


def _load_npz(wd: Path):
    return data.load_array("npz", path=str(wd / "d.npz"))


CASES: list[Case] = [
    # --- checkpoints
    Case("checkpoint: bit flip in the only step -> no intact checkpoint", _restore(), ValueError,
         "no intact checkpoint in {workdir}/checkpoints: every step is damaged (step 1: w: checksum",
         setup=_damage(1, "flip")),
    Case("checkpoint: bit flip, restore that step", _restore(2), CheckpointDamagedError,
         "checkpoint 2 in {workdir}/checkpoints is damaged (w: checksum", setup=_damage(2, "flip", 1, 2)),
    Case("checkpoint: garbage array file", _restore(1), CheckpointDamagedError,
         "checkpoint 1 in {workdir}/checkpoints is damaged (unreadable: ", setup=_damage(1, "garbage")),
    Case("checkpoint: truncated array file", _restore(1), CheckpointDamagedError,
         "checkpoint 1 in {workdir}/checkpoints is damaged (unreadable: ", setup=_damage(1, "truncate")),
    Case("checkpoint: deleted array file", _restore(1), CheckpointDamagedError,
         "checkpoint 1 in {workdir}/checkpoints is damaged (unreadable: ", setup=_damage(1, "delete")),
    Case("checkpoint: garbage checksum record", _restore(1), CheckpointDamagedError,
         "is damaged (checksum record unreadable: JSONDecodeError", setup=_damage(1, "checksums")),
    Case("checkpoint: torn data-position file", _restore(1), CheckpointDamagedError,
         "checkpoint 1 in {workdir}/checkpoints is damaged (unreadable: JSONDecodeError", setup=_damage(1, "data")),
    Case("checkpoint: changed digit in the data position", _restore(1), CheckpointDamagedError,
         "checkpoint 1 in {workdir}/checkpoints is damaged (data position: checksum sha256",
         setup=_damage(1, "position")),
    Case("checkpoint: latest step's config unreadable -> falls back (recovery)", _restore(), None,
         "checkpoint 2 is damaged (config unreadable: JSONDecodeError", setup=_damage(2, "config", 1, 2)),
    Case("checkpoint: verify a damaged step", _verify(1), CheckpointDamagedError,
         "checkpoint 1 in {workdir}/checkpoints is damaged (w: checksum", setup=_damage(1, "flip")),
    Case("checkpoint: restore into a model of another shape",
         _restore(target=lambda: {"w": jnp.zeros(3), "b": jnp.zeros(5)}),
         ValueError, "does not match the target state (was the model, optimizer or data shape changed since it was "
         "saved?): w: saved shape (50000,), target (3,)", setup=_save(1)),
    Case("checkpoint: restore a step that does not exist", _restore(7), ValueError,
         "no finalized checkpoint 7 in {workdir}/checkpoints; available steps: [1]", setup=_save(1)),
    Case("checkpoint: latest damaged, older intact -> falls back (recovery)", _restore(), None,
         "checkpoint 2 is damaged (w: checksum", setup=_damage(2, "flip", 1, 2)),
    # --- workdir lock
    Case("lock: a second trainer while a live one holds it", _take_lock, WorkdirLockedError,
         "is locked by host '{host}' pid {pid} (started t0", setup=_live_lock),
    Case("lock: held by another host", _take_lock, WorkdirLockedError,
         "is locked by host 'other-host.example' pid 4242 (started t0, command 'python -m diffax.main'): it is "
         "another host's, last refreshed 0 s ago; it becomes stale (taken over by the next trainer) after 600 s "
         "without a refresh (training.lock_stale_after_s). Only one trainer may use a workdir. If that process is "
         "gone, delete {workdir}/.lock and retry",
         setup=_write_lock(host="other-host.example", pid=4242, started="t0", command="python -m diffax.main")),
    Case("lock: another host's, refreshed 590 s ago (not yet stale)", _take_lock, WorkdirLockedError,
         "it is another host's, last refreshed 590 s ago; it becomes stale (taken over by the next trainer) after "
         "600 s", setup=_aged(590, _write_lock(host="other-host.example", pid=4242, started="t0"))),
    Case("lock: stale lock of another host, not refreshed for 610 s (recovery: taken over)", _take_lock, None,
         "taking over the stale lock {workdir}/.lock of pid 4242 on host 'other-host.example' (started t0, command "
         "'python -m diffax.main'): not refreshed for 610 s (stale after 600 s)",
         setup=_aged(610, _write_lock(host="other-host.example", pid=4242, started="t0", command="python -m diffax.main"))),
    Case("lock: a live trainer of this host whose lock is an hour old is still refused", _take_lock,
         WorkdirLockedError, "pid {pid} (started t0, command ''): that process is still running",
         setup=_aged(3600, _live_lock)),
    Case("lock: empty (unreadable) lock file", _take_lock, WorkdirLockedError,
         "is locked by an unreadable lock file (content ''): cannot tell whether its owner is alive, last "
         "refreshed ", setup=_write_lock()),  # (its age: after ~0.5 s of re-reads)
    Case("lock: stale empty (unreadable) lock file (recovery: taken over)", _take_lock, None,
         "taking over the stale lock {workdir}/.lock of an unreadable lock file (content ''): not refreshed for 70",
         setup=_aged(700, _write_lock())),
    Case("lock: stale lock of a dead process on this host (recovery: taken over)", _take_lock, None,
         "taking over the stale lock {workdir}/.lock of pid {pid}",
         setup=lambda wd: _write_lock(host=socket.gethostname(), pid=_dead_pid(), started="t0")(wd)),
    Case("lock: read-only workdir", _take_lock_with_os_error("open", errno.EROFS), PermissionError,
         "cannot write to {workdir} (read-only?): Read-only file system", setup=lambda wd: wd.mkdir(parents=True)),
    Case("lock: workdir cannot be created", _take_lock_with_os_error("makedirs", errno.EACCES, "run"), PermissionError,
         "cannot write to {workdir}/run (read-only?): Permission denied", setup=lambda wd: wd.mkdir(parents=True)),
    # --- data files
    Case("data: truncated MNIST .gz", lambda wd: data.load_array("mnist_local", path=str(wd)), ValueError,
         "{workdir}/train-images-idx3-ubyte.gz: damaged or truncated gzip file (EOFError",
         setup=_then(_mnist_dir(), _truncate_gz)),
    Case("data: MNIST .gz that is not gzip", lambda wd: data.load_array("mnist_local", path=str(wd)), ValueError,
         "{workdir}/train-images-idx3-ubyte.gz: damaged or truncated gzip file (BadGzipFile",
         setup=_then(_mnist_dir(), _not_gzip)),
    Case("data: MNIST file of the published shape with the wrong md5",
         lambda wd: data.load_array("mnist_local", split="test", path=str(wd)), ValueError,
         "{workdir}/t10k-labels-idx1-ubyte.gz: md5 of the decompressed bytes is ", setup=_mnist_dir(10000)),
    Case("data: .npz that is a pickle", _load_npz, ValueError,
         "{workdir}/d.npz: not an .npz file (not a zip archive (truncated?)); expected an .npz written by numpy.savez",
         setup=_npz_file(lambda p: p.write_bytes(pickle.dumps({"images": [1, 2]})))),
    Case("data: .npy saved as .npz", _load_npz, ValueError,
         "{workdir}/d.npz: not an .npz file (a single .npy array, not an .npz archive)",
         setup=_npz_file(lambda p: np.save(open(p, "wb"), np.zeros((2, 4, 4), np.uint8)))),
    Case("data: truncated .npz", _load_npz, ValueError, "{workdir}/d.npz: not an .npz file",
         setup=_npz_file(lambda p: (_good_npz(p), p.write_bytes(p.read_bytes()[:500])))),
    Case("data: .npz with a damaged member", _load_npz, ValueError,
         "{workdir}/d.npz: damaged or unreadable .npz (BadZipFile: Bad CRC-32", setup=_npz_file(_damaged_member_npz)),
    Case("data: .npz without 'images' (shape query)", lambda wd: data.data_shape("npz", path=str(wd / "d.npz")),
         ValueError, "{workdir}/d.npz: no key 'images' (keys: ['x'])",
         setup=_npz_file(lambda p: np.savez(open(p, "wb"), x=np.zeros(3)))),
    Case("data: gzip-compressed pickle as .npz (shape query)",
         lambda wd: data.data_shape("npz", path=str(wd / "d.npz")),
         ValueError, "{workdir}/d.npz: not an .npz file",
         setup=_npz_file(lambda p: p.write_bytes(gzip.compress(pickle.dumps([1]))))),
]  # fmt: skip


# ------------------------------------------------------------------------ the run layer and the entry point
REPO = Path(__file__).resolve().parent.parent


def _run_config(**overrides):
    """configs/gmm1d.py shrunk to a 20-step run (checkpoints at 10 and 20), with overrides section__field=value
    (or a top-level key, e.g. seed=1)."""
    from diffax.training import presets

    config = presets.load_config(REPO / "configs" / "gmm1d.py")
    config.model.hidden, config.model.num_layers = 16, 1
    config.training.num_steps, config.training.checkpoint_every, config.training.log_every = 20, 10, 5
    config.sampling.method, config.sampling.num_steps, config.sampling.num_samples = "ddim", 10, 16
    for key, value in overrides.items():
        if "__" in key:
            section, field = key.split("__")
            config[section][field] = value
        else:
            config[key] = value
    return config


_TRAINED: dict[str, Path] = {}


def _trained(wd: Path) -> None:
    """setup: a copy of a trained 20-step gmm1d run (trained once per session)."""
    import shutil
    import tempfile

    from diffax import main as main_lib

    if "run" not in _TRAINED:
        src = Path(tempfile.mkdtemp(prefix="diffax-reliability-")) / "run"
        main_lib.run(_run_config(), str(src), ["train"])
        _TRAINED["run"] = src
    shutil.copytree(_TRAINED["run"], wd)


def _trained_then_damaged(wd: Path) -> None:
    """setup: a trained run whose latest checkpoint (step 20) has garbage in every array data file (a single
    flipped byte may land in padding of Orbax's layout, which differs between runs)."""
    _trained(wd)
    rng = np.random.default_rng(0)
    for root, _, files in os.walk(_ckpt_dir(wd) / "20" / "state"):
        if os.path.basename(root) == "d":
            for f in files:
                p = Path(root) / f
                p.write_bytes(rng.integers(0, 256, p.stat().st_size, dtype=np.uint8).tobytes())


def _main(modes: str, **overrides):
    def action(wd: Path):
        from diffax import main as main_lib

        return main_lib.run(_run_config(**overrides), str(wd), modes.split(","))

    return action


def _build(**overrides):
    def action(wd: Path):
        from diffax.training import builders, sampler_builders

        config = _run_config(**overrides)
        exp = builders.build(config)
        return sampler_builders.build_sampler(config, exp.model, exp.schedule, exp.data.shape)

    return action


def _q_sample_at(t: int):
    def action(wd: Path):
        from diffax import diffusion, schedules

        s = schedules.linear(1000)
        return diffusion.q_sample(s, jnp.zeros((1, 2)), jnp.array([t]), jnp.zeros((1, 2)))

    return action


def _space(T: int, n: int, spacing: str):
    def action(wd: Path):
        from diffax import schedules

        return schedules.space_timesteps(T, n, spacing)

    return action


RUN_CASES: list[Case] = [
    Case("resume with another schedule", _main("train", diffusion__schedule="cosine"), ValueError,
         "diffusion.schedule: run 'linear' vs now 'cosine'", setup=_trained),
    Case("resume with another mean_type", _main("train", diffusion__mean_type="x0"), ValueError,
         "diffusion.mean_type: run 'eps' vs now 'x0'", setup=_trained),
    Case("resume with another model size", _main("train", model__hidden=32, training__num_steps=30), ValueError,
         "model.hidden: run 16 vs now 32", setup=_trained),
    Case("resume with another seed (the toy training set is drawn from it)",
         _main("train", seed=1, training__num_steps=30), ValueError, "seed: run 0 vs now 1", setup=_trained),
    Case("resume with another training.batch_size (the data position counts its batches)",
         _main("train", training__batch_size=100, training__num_steps=30), ValueError,
         "training.batch_size: run 200 vs now 100", setup=_trained),
    Case("train: importance sampling with 'hybrid' and a fixed variance (L_t = 0: t stays uniform)",
         _main("train", diffusion__timestep_sampling="importance", diffusion__loss_type="hybrid"), ValueError,
         "got loss_type='hybrid' with the fixed var_type='fixed_small', whose L_t term is omitted (L_t = 0)"),
    Case("train: importance sampling with 'rescaled_mse' and a fixed variance",
         _main("train", diffusion__timestep_sampling="importance", diffusion__loss_type="rescaled_mse",
               diffusion__var_type="fixed_large"), ValueError, "loss_type='rescaled_mse' with the fixed var_type="),
    Case("sample with another T", _main("sample", diffusion__num_timesteps=500), ValueError,
         "diffusion.num_timesteps: run 1000 vs now 500", setup=_trained),
    Case("sample with another schedule", _main("sample", diffusion__schedule="cosine"), ValueError,
         "diffusion.schedule: run 'linear' vs now 'cosine'", setup=_trained),
    Case("eval with a learned variance on a fixed-variance run", _main("eval", diffusion__var_type="learned_range"),
         ValueError, "diffusion.var_type: run 'fixed_small' vs now 'learned_range'", setup=_trained),
    Case("sample without a run", _main("sample"), FileNotFoundError, "train first"),
    Case("sample: sampling.clip_x0 = 0", _main("sample", sampling__clip_x0=0.0), ValueError,
         "sampling.clip_x0 must be None (no clipping) or a finite number > 0, got 0.0", setup=_trained),
    Case("sample: sampling.batch_size < 0", _main("sample", sampling__batch_size=-1), ValueError,
         "sampling.batch_size must be an int >= 0, got -1", setup=_trained),
    Case("sample: sampling.num_samples = 0", _main("sample", sampling__num_samples=0), ValueError,
         "sampling.num_samples must be an int >= 1, got 0", setup=_trained),
    Case("train: optim.lr = inf", _main("train", optim__lr=float("inf")), ValueError,
         "optim.lr must be a finite number > 0, got inf"),
    Case("train: training.lock_stale_after_s = 0", _main("train", training__lock_stale_after_s=0.0), ValueError,
         "training.lock_stale_after_s must be a finite number of seconds > 0, got 0.0"),
    Case("sample: classifier-free guidance on an unconditional model", _main("sample", sampling__guidance_w=1.0),
         ValueError, "sampling.guidance_w=1.0 needs a class-conditional model", setup=_trained),
    Case("sampler: classifier-free guidance on a model trained with p_uncond = 0",
         _build(model__num_classes=2, sampling__guidance_w=1.0), ValueError,
         "with p_uncond=0.0 its null label was never trained"),
    Case("sample: classifier_scale without a classifier workdir", _main("sample", sampling__classifier_scale=1.0),
         ValueError, "needs sampling.classifier_workdir", setup=_trained),
    Case("sample: latest checkpoint damaged -> samples from the previous one (recovery)", _main("sample"), None,
         "checkpoint 20 is damaged", setup=_trained_then_damaged),
    Case("schedule: T = 100 with DDPM's unscaled betas (x_T far from N(0, I))",
         _build(diffusion__num_timesteps=100, diffusion__beta_start=1e-4, diffusion__beta_end=0.02), ValueError,
         "alpha-bar_(T-1) = 0.36"),
    Case("schedule: 'leading' spacing of 600 of 1000 steps", _space(1000, 600, "leading"), ValueError, "linspace"),
    Case("q_sample at t = -1", _q_sample_at(-1), ValueError, "-1"),
    Case("q_sample at t = T", _q_sample_at(1000), ValueError, "1000"),
]  # fmt: skip
CASES += RUN_CASES

def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_table(case: Case, tmp_path: Path, caplog):
    wd = tmp_path / "wd"
    values = (case.setup(wd) if case.setup else None) or {}
    expected = case.message_substring.format(**{"workdir": wd, "host": socket.gethostname(), **values})
    before = _snapshot(wd) if wd.exists() else {}
    if case.expected_exception is None:
        with caplog.at_level("WARNING"):
            case.action(wd)
        assert expected in caplog.text, f"expected a warning containing {expected!r}, got {caplog.text!r}"
    else:
        with pytest.raises(case.expected_exception) as e:
            case.action(wd)
        assert expected in str(e.value), f"message {str(e.value)!r} does not contain {expected!r}"
        assert "\n" not in str(e.value), "one line, please"
    unchanged = case.expected_exception is not None if case.unchanged is None else case.unchanged
    if unchanged:
        assert (_snapshot(wd) if wd.exists() else {}) == before, "a refused operation changed files in the workdir"


def test_table_has_the_required_rows():
    """The table has at least 30 rows, and the areas it must cover stay covered as rows are added or renamed."""
    assert len(CASES) >= 30, len(CASES)
    names = " | ".join(c.name for c in CASES)
    for needle in ("bit flip", "garbage", "truncated", "second trainer", "stale lock", "stale lock of another host",
                   "read-only", "md5",
                   "not gzip", "pickle", "resume with another", "sample with another", "clip_x0", "p_uncond = 0",
                   "t = -1", "lr = inf", "batch_size < 0"):  # fmt: skip
        assert needle in names, needle


# --------------------------------------------------------------------------- lock behaviour beyond the table
_HOLD = r"""
import sys, time
from diffax.workdir_lock import WorkdirLock
with WorkdirLock(sys.argv[1], process_index=0):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_trainer_process_is_refused_and_kill_9_leaves_a_stale_lock_that_is_taken_over(tmp_path, caplog):
    import signal
    import subprocess
    import sys

    env = cpu_env()
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLockedError, match=rf"pid {p.pid} .*that process is still running") as e:
            _take_lock(tmp_path)
        assert e.value.holder["pid"] == p.pid and e.value.holder["host"] == socket.gethostname()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    assert (tmp_path / ".lock").exists()  # kill -9: no cleanup ran
    with caplog.at_level("WARNING"), WorkdirLock(tmp_path, process_index=0) as lock:
        assert lock.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock {tmp_path}/.lock of pid {p.pid}" in caplog.text
    assert not (tmp_path / ".lock").exists()


def test_lock_is_released_on_exception_and_only_process_0_takes_it(tmp_path):
    with pytest.raises(KeyError):
        with WorkdirLock(tmp_path, process_index=0):
            assert (tmp_path / ".lock").exists()
            raise KeyError("boom")
    assert not (tmp_path / ".lock").exists()
    with WorkdirLock(tmp_path, process_index=1) as lock:
        assert not lock.held and not (tmp_path / ".lock").exists()
    with WorkdirLock(tmp_path, process_index=0):  # and it can be taken again
        with pytest.raises(WorkdirLockedError, match="this process already holds it"):
            _take_lock(tmp_path)


def test_lock_of_a_reused_pid_is_stale(tmp_path, caplog):
    """Same host, the pid is alive but started at another time than the holder: a reused pid, stale."""
    _write_lock(host=socket.gethostname(), pid=os.getppid(), pid_start="1", started="t0")(tmp_path)
    with caplog.at_level("WARNING"):
        _take_lock(tmp_path)
    assert "a reused pid" in caplog.text


def test_release_never_removes_a_lock_someone_else_holds(tmp_path):
    lock = WorkdirLock(tmp_path, process_index=0).acquire()
    (tmp_path / ".lock").write_text(json.dumps({"host": "h", "pid": 1}))  # e.g. taken over after a long stall
    lock.release()
    assert json.loads((tmp_path / ".lock").read_text()) == {"host": "h", "pid": 1}


def _heartbeats() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("diffax-lock-heartbeat")]


def _age(path: Path) -> float:
    return time.time() - os.stat(path).st_mtime


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.01)
    return condition()


def test_heartbeat_refreshes_the_lock_while_held_and_stops_on_release(tmp_path, caplog):
    """The holder's thread sets the lock file's mtime to now every heartbeat_s (here 0.05 s): an mtime set
    1000 s back is fresh again (< 5 s old) within 10 s; a heartbeat of 1000 s leaves it old (negative control).
    After release no heartbeat thread is left and a file at the path is no longer touched. A holder whose
    lock was taken over stops beating (never keeps the new holder's file fresh) and says so."""
    path = tmp_path / ".lock"
    assert WorkdirLock(tmp_path, process_index=0).heartbeat_s == 30.0
    assert WorkdirLock(tmp_path, process_index=0, stale_after_s=40).heartbeat_s == 10.0
    for bad in ({"stale_after_s": 0}, {"stale_after_s": float("nan")}, {"heartbeat_s": -1.0}):
        with pytest.raises(ValueError, match="must be a finite number of seconds > 0"):
            WorkdirLock(tmp_path, process_index=0, **bad)
    assert _heartbeats() == []

    def set_old():
        t = time.time() - 1000
        os.utime(path, (t, t))

    with WorkdirLock(tmp_path, process_index=0, heartbeat_s=1000.0):  # negative control: no beat within 0.3 s
        set_old()
        time.sleep(0.3)
        assert _age(path) > 999
    lock = WorkdirLock(tmp_path, process_index=0, heartbeat_s=0.05).acquire()
    try:
        assert len(_heartbeats()) == 1
        set_old()
        assert _wait_for(lambda: _age(path) < 5), _age(path)
    finally:
        lock.release()
    assert _heartbeats() == [] and not path.exists()
    path.write_text("{}")
    set_old()
    time.sleep(0.3)
    assert _age(path) > 999  # nothing refreshes it any more
    path.unlink()

    with caplog.at_level("WARNING"):
        lock = WorkdirLock(tmp_path, process_index=0, heartbeat_s=0.05).acquire()
        try:
            path.unlink()  # taken over as stale by another trainer, which wrote its own lock
            path.write_text(json.dumps({"host": "other-host.example", "pid": 1}))
            set_old()
            assert _wait_for(lambda: not _heartbeats())
            assert _age(path) > 999  # the old holder did not refresh the new holder's file
        finally:
            lock.release()
    assert f"the lock {path} is no longer this trainer's" in caplog.text
    assert json.loads(path.read_text()) == {"host": "other-host.example", "pid": 1}


def test_takeover_puts_back_a_lock_whose_holder_refreshed_it_meanwhile(tmp_path):
    """Judged stale by its age, but the holder's heartbeat lands between that judgement and the move:
    the lock is put back as it was and the taker is refused (only the holder's file is left)."""
    _aged(700, _write_lock(host="other-host.example", pid=4242, started="t0"))(tmp_path)
    before = (tmp_path / ".lock").read_bytes()
    rename = os.rename

    def heartbeat_then_rename(src, dst):
        os.utime(src)
        rename(src, dst)

    with mock.patch.object(workdir_lock.os, "rename", side_effect=heartbeat_then_rename):
        with pytest.raises(WorkdirLockedError, match="it was just taken or refreshed by another trainer"):
            _take_lock(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".lock"] and (tmp_path / ".lock").read_bytes() == before
    assert _age(tmp_path / ".lock") < 60


def _cli_train(wd: Path, num_steps: int, *overrides: str) -> "subprocess.CompletedProcess":
    """``python -m diffax.main --mode=train`` on configs/gmm1d.py shrunk as `_run_config` does."""
    import subprocess
    import sys

    args = ["--config.model.hidden=16", "--config.model.num_layers=1", f"--config.training.num_steps={num_steps}",
            "--config.training.checkpoint_every=10", "--config.training.log_every=5", *overrides]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "diffax.main", f"--config={REPO / 'configs' / 'gmm1d.py'}",
                           f"--workdir={wd}", "--mode=train", *args], cwd=REPO, env=cpu_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip


_OTHER_HOST = {"host": "other-host.example", "pid": 4242, "pid_start": "77", "started": "2026-12-01T08:00:00+00:00",
               "command": "python -m diffax.main --mode=train"}  # fmt: skip


@pytest.mark.slow
def test_cli_train_takes_over_the_stale_lock_of_another_host(tmp_path):
    """Preempted on host A, restarted on host B: A's lock, not refreshed for an hour (> the 600 s default of
    training.lock_stale_after_s), is taken over with a warning naming A's holder, and training completes."""
    wd = tmp_path / "wd"
    _aged(3600, _write_lock(**_OTHER_HOST))(wd)
    proc = _cli_train(wd, 20)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(
        rf"taking over the stale lock {re.escape(str(wd))}/\.lock of pid 4242 on host 'other-host\.example' "
        r"\(started 2026-12-01T08:00:00\+00:00, command 'python -m diffax\.main --mode=train'\): not refreshed "
        r"for 36\d\d s \(stale after 600 s\)", proc.stderr), proc.stderr[-3000:]  # fmt: skip
    assert sorted(os.listdir(_ckpt_dir(wd)), key=str) == sorted(["10", "20", "config.json"], key=str)
    assert [json.loads(r)["step"] for r in (wd / "metrics.jsonl").read_text().splitlines()] == [5, 10, 15, 20]
    assert not (wd / ".lock").exists()  # released at the end


@pytest.mark.slow
def test_cli_trainer_whose_lock_was_taken_over_stops_before_its_next_save(tmp_path):
    """A trainer that was judged stale (its heartbeat stalled past training.lock_stale_after_s) and whose lock
    another host's trainer took over must not write the workdir again: once a finished checkpoint exists we put
    another host's lock in place of its own (as a takeover does), and the trainer stops with one line naming the
    new holder, before its next save. Checks: exit status 1, no checkpoint started after the takeover (the old code
    trains on to step 2000, saving every 10 steps), the other host's lock left untouched. Control: the
    same run without the takeover trains to the end (steps 10..N saved)."""
    import subprocess
    import sys

    wd = tmp_path / "wd"
    args = ["--config.model.hidden=16", "--config.model.num_layers=1", "--config.training.num_steps=2000",
            "--config.training.checkpoint_every=10", "--config.training.log_every=5"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "diffax.main", f"--config={REPO / 'configs' / 'gmm1d.py'}",
                             f"--workdir={wd}", "--mode=train", *args], cwd=REPO, env=cpu_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (_ckpt_dir(wd) / "10").is_dir() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        tmp = wd / ".lock.other"
        tmp.write_text(json.dumps(_OTHER_HOST))
        os.replace(tmp, wd / ".lock")  # the other host's trainer took the lock over
        steps_at_takeover = {int(n) for n in os.listdir(_ckpt_dir(wd)) if n.isdigit()}
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1 and re.fullmatch(
        rf"diffax: error: WorkdirLockedError: this trainer no longer holds {re.escape(str(wd))}/\.lock: it was taken "
        r"over by host 'other-host\.example' pid 4242 .*stopping before the next save so that two trainers never "
        r"write one workdir", last), err[-3000:]  # fmt: skip
    steps = {int(n) for n in os.listdir(_ckpt_dir(wd)) if n.isdigit()}
    # A save already started before the takeover may still finalise; no save starts after it.
    assert max(steps) <= max(steps_at_takeover) + 10 < 2000, (steps, steps_at_takeover)
    assert json.loads((wd / ".lock").read_text()) == _OTHER_HOST  # not removed: it is the other trainer's
    control = _cli_train(tmp_path / "control", 20)
    assert control.returncode == 0 and {"10", "20"} <= set(os.listdir(_ckpt_dir(tmp_path / "control")))


@pytest.mark.slow
def test_cli_train_refuses_a_fresh_lock_of_another_host_until_it_is_stale(tmp_path):
    """Another host's lock refreshed 30 s ago: refused with one line naming the holder and after how long it
    would be stale, and no byte (nor the lock's mtime) in the workdir changes. With
    training.lock_stale_after_s=20 the same lock is stale: taken over, and the run trains on to step 30."""
    wd = tmp_path / "wd"
    _trained(wd)
    _aged(30, _write_lock(**_OTHER_HOST))(wd)
    before, mtime = _snapshot(wd), os.stat(wd / ".lock").st_mtime_ns
    proc = _cli_train(wd, 30)
    last = proc.stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"diffax: error: WorkdirLockedError: workdir {re.escape(str(wd))} is locked by host 'other-host\.example' "
        r"pid 4242 \(started 2026-12-01T08:00:00\+00:00, command 'python -m diffax\.main --mode=train'\): it is "
        r"another host's, last refreshed (\d+) s ago; it becomes stale \(taken over by the next trainer\) after 600 s "
        r"without a refresh \(training\.lock_stale_after_s\)\. Only one trainer may use a workdir\. If that process "
        rf"is gone, delete {re.escape(str(wd))}/\.lock and retry\.", last)  # fmt: skip
    assert proc.returncode == 1 and match and 30 <= int(match[1]) < 600, proc.stderr[-3000:]  # 30 s + start-up
    assert _snapshot(wd) == before and os.stat(wd / ".lock").st_mtime_ns == mtime
    proc = _cli_train(wd, 30, "--config.training.lock_stale_after_s=20")
    assert proc.returncode == 0 and re.search(r"not refreshed for \d+ s \(stale after 20 s\)", proc.stderr), proc.stderr
    assert "30" in os.listdir(_ckpt_dir(wd)) and not (wd / ".lock").exists()


@pytest.mark.slow
def test_cli_resume_after_a_torn_metrics_row(tmp_path):
    """A process killed while appending a metrics row leaves a torn last line (rows are appended, not written
    atomically). Resuming must not fail on it: the row is dropped with a warning naming the file and line, and
    metrics.jsonl then holds exactly one parseable row per logged step (5, 10, ..., 30)."""
    wd = tmp_path / "wd"
    _trained(wd)
    with open(wd / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "loss": 0.1')  # torn mid-row, no newline
    proc = _cli_train(wd, 30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"metrics\.jsonl line 5 is not a metrics row \(torn by a crash\?\): skipped", proc.stderr)
    rows = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]


@pytest.mark.slow
def test_cli_metrics_rows_after_a_resume_say_how_many_steps_they_average(tmp_path):
    """log_every=10, a run stopped at step 15 (its checkpoint) and resumed to 30: rows (step, steps_averaged)
    are (10, 10), (15, 5), (20, 5), (30, 10) exactly. The resumed row 20 is the mean of exactly steps 16-20:
    its loss equals row 20 of an uninterrupted run logging every 5 steps (resumption is bitwise; rel 1e-6
    allows float32 rounding of the mean only), and differs from that run's mean over steps 11-20."""
    wd, ref = tmp_path / "wd", tmp_path / "ref"
    every = ("--config.training.log_every=10", "--config.training.checkpoint_every=15")
    for num_steps in (15, 30):
        proc = _cli_train(wd, num_steps, *every)
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(r) for r in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["steps_averaged"]) for r in rows] == [(10, 10), (15, 5), (20, 5), (30, 10)], rows
    proc = _cli_train(ref, 30)  # uninterrupted, log_every=5
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_step = {r["step"]: r for r in map(json.loads, (ref / "metrics.jsonl").read_text().splitlines())}
    assert {r["steps_averaged"] for r in by_step.values()} == {5}
    resumed_20 = next(r for r in rows if r["step"] == 20)["loss"]
    assert resumed_20 == pytest.approx(by_step[20]["loss"], rel=1e-6)
    assert resumed_20 != pytest.approx((by_step[15]["loss"] + by_step[20]["loss"]) / 2, rel=1e-6)


# ------------------------------------------------------------------ run-layer behaviour beyond the table
def test_resume_drops_metric_rows_of_lost_work_and_says_when_nothing_is_left(tmp_path, capsys):
    """A crash after logging steps 15 and 20 but before checkpoint 20 was final: the resumed run re-logs
    them, and metrics.jsonl holds each step exactly once. A run already at training.num_steps says so."""
    import shutil

    from diffax import main as main_lib

    _trained(tmp_path / "wd")
    wd = tmp_path / "wd"
    shutil.rmtree(_ckpt_dir(wd) / "20")  # the save of step 20 never finished
    main_lib.run(_run_config(), str(wd), ["train"])
    steps = [json.loads(line)["step"] for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20], steps
    capsys.readouterr()
    main_lib.run(_run_config(training__num_steps=10), str(wd), ["train"])
    assert "at step 20 >= training.num_steps=10: nothing to train" in capsys.readouterr().out


def _library_samples(wd: Path, var_type: str, seed: int) -> np.ndarray:
    """The run's restored EMA parameters sampled by `samplers.ddpm` itself (10 'leading' steps of 1000, the
    given fixed variance, x0 clipped to [-3, 3]), sample i from fold_in(stream_key(seed, 'sample'), i) as the
    CLI draws it."""
    import jax

    from diffax import samplers, schedules
    from diffax.training import builders, restore

    exp = builders.build(_run_config(sampling__method="ddpm", sampling__clip_x0=3.0))
    params = restore.restore_params(exp, str(wd)).params
    steps = schedules.space_timesteps(1000, 10, "leading")

    @jax.jit
    def one(key):
        model_fn = lambda x, t: exp.model.apply({"params": params}, x, t, train=False)  # noqa: E731
        return samplers.ddpm(model_fn, exp.schedule, key, (1, 1), var_type=var_type, clip_x0=3.0,
                             timesteps=steps)[0]  # fmt: skip

    key = restore.stream_key(seed, "sample")
    return np.stack([np.asarray(one(jax.random.fold_in(key, i))) for i in range(16)])


@pytest.mark.slow
def test_sample_and_eval_may_change_a_fixed_variance(tmp_path):
    """sampling.*, the seed and a fixed variance (fixed_small -> fixed_large) are sampling choices: allowed, and
    the ones asked for are used: `--mode=sample` with fixed_large (sigma_t^2 = beta_t) equals `samplers.ddpm`
    with var_type='fixed_large' on the restored parameters, sample by sample, to 1e-5 of the largest |sample|
    (the CLI vmaps the 16 single-sample chains, the reference runs them one by one: float32 rounding only;
    measured 1.6e-7 of it), while fixed_small (sigma_t^2 = beta-tilde_t) differs from it by more than 1e-3 of
    it (negative control; measured 0.45). Likewise another seed is allowed and draws exactly its own samples
    (resuming with it is refused: the table's 'resume with another seed')."""
    from diffax import main as main_lib

    wd = tmp_path / "wd"
    _trained(wd)
    ddpm = dict(sampling__method="ddpm", sampling__clip_x0=3.0)  # clipped: the 20-step model's x0 is far off
    small = main_lib.run(_run_config(**ddpm), str(wd), ["sample"])["samples"]
    large = main_lib.run(_run_config(**ddpm, diffusion__var_type="fixed_large"), str(wd),
                         ["sample", "eval"])["samples"]  # fmt: skip
    seed1 = main_lib.run(_run_config(**ddpm, seed=1), str(wd), ["sample", "eval"])["samples"]
    assert small.shape == large.shape == seed1.shape == (16, 1)
    want_large = _library_samples(wd, "fixed_large", 0)
    scale = float(np.max(np.abs(want_large)))
    np.testing.assert_allclose(large, want_large, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(small, _library_samples(wd, "fixed_small", 0), rtol=0, atol=1e-5 * scale)
    assert np.max(np.abs(small - want_large)) > 1e-3 * scale  # the variance matters at this tolerance
    np.testing.assert_allclose(seed1, _library_samples(wd, "fixed_small", 1), rtol=0, atol=1e-5 * scale)
    assert np.max(np.abs(seed1 - small)) > 1e-3 * scale


@pytest.mark.parametrize("config_arg, expected", [
    ("configs/does_not_exist.py", "No such file or directory"),
    ("{bad}", "SyntaxError: invalid syntax"),
    ("configs/gmm1d.py --config.training.num_stepz=3", 'Did you mean "num_steps"'),
])  # fmt: skip
def test_cli_config_errors_are_one_last_line(config_arg, expected, tmp_path):
    """A missing config file, a syntax error in it and an unknown key: exit status 1 and the LAST line of
    stderr is one 'diffax: error: ...' naming the problem (no traceback)."""
    import subprocess
    import sys

    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    args = config_arg.format(bad=bad).split()
    proc = subprocess.run([sys.executable, "-m", "diffax.main", f"--config={args[0]}", *args[1:],
                           f"--workdir={tmp_path / 'wd'}", "--mode=sample"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("diffax: error: bad --config:") and expected in last, proc.stderr
    assert "Traceback" not in proc.stderr


def test_compute_dtype_may_change_but_the_architecture_may_not():
    """`restore.check_compatible` (pure, no run): a bf16-trained run may be resumed, sampled or evaluated in
    float32 and back (model.dtype only sets activations; parameters are float32 either way), while a
    one-key architecture change beside it is still named and refused."""
    from diffax.training import presets, restore

    saved = presets.load_config(str(REPO / "configs" / "default.py")).to_dict()
    saved["model"]["dtype"] = "bfloat16"
    now = presets.load_config(str(REPO / "configs" / "default.py")).to_dict()
    now["model"]["dtype"] = "float32"
    for purpose in ("resume", "sample", "eval"):
        restore.check_compatible(saved, now, purpose=purpose)  # no error
    now["model"]["hidden"] = saved["model"]["hidden"] + 1
    with pytest.raises(ValueError, match=r"model\.hidden: run"):
        restore.check_compatible(saved, now, purpose="resume")
