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
import socket
import zipfile
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest

from _processes import cpu_env

from diffax import data, workdir_lock
from diffax.checkpoint import CheckpointDamagedError, Checkpointer
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
    return _write_lock(host=socket.gethostname(), pid=pid, pid_start=workdir_lock._process_start(pid), started="t0")(wd)


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
         "another host's, so this host cannot tell whether it is alive. Only one trainer may use a workdir. If that "
         "process is gone, delete {workdir}/.lock and retry",
         setup=_write_lock(host="other-host.example", pid=4242, started="t0", command="python -m diffax.main")),
    Case("lock: empty (unreadable) lock file", _take_lock, WorkdirLockedError,
         "is locked by an unreadable lock file (content ''): cannot tell whether its owner is alive",
         setup=_write_lock()),
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
    """configs/gmm1d.py shrunk to a 20-step run (checkpoints at 10 and 20), with dotted overrides."""
    from diffax.training import presets

    config = presets.load_config(REPO / "configs" / "gmm1d.py")
    config.model.hidden, config.model.num_layers = 16, 1
    config.training.num_steps, config.training.checkpoint_every, config.training.log_every = 20, 10, 5
    config.sampling.method, config.sampling.num_steps, config.sampling.num_samples = "ddim", 10, 16
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
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
        from diffax.training import builders

        config = _run_config(**overrides)
        exp = builders.build(config)
        return builders.build_sampler(config, exp.model, exp.schedule, exp.data.shape)

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
    for needle in ("bit flip", "garbage", "truncated", "second trainer", "stale lock", "read-only", "md5",
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


def test_sample_and_eval_may_change_a_fixed_variance(tmp_path):
    """sampling.* and a fixed variance (fixed_small -> fixed_large) are sampling choices: allowed; the
    samples differ from those of fixed_small (the variance is used)."""
    from diffax import main as main_lib

    _trained(tmp_path / "wd")
    a = main_lib.run(_run_config(sampling__method="ddpm"), str(tmp_path / "wd"), ["sample"])["samples"]
    b = main_lib.run(_run_config(sampling__method="ddpm", diffusion__var_type="fixed_large"), str(tmp_path / "wd"),
                     ["sample"])["samples"]  # fmt: skip
    assert a.shape == b.shape == (16, 1) and np.max(np.abs(a - b)) > 1e-3


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
