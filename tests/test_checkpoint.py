"""Tests for diffax.checkpoint (with checkpoint_integrity, checkpoint_layout, checkpoint_files,
orbax_noise) and the loop's checkpointing: bitwise resume across processes, crash
during a save, keep-last-K, async saves vs. buffer donation, and no checkpoint of a non-finite state.

All runs are on CPU with a tiny MLP on gmm1d (T=50); the resume test runs `python -m diffax.main`
in fresh processes, as a preempted job would be restarted.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from _processes import cpu_env

from diffax.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config=" + os.path.join(REPO, "configs", "gmm1d.py"),
    "--config.model.hidden=16",
    "--config.model.num_layers=1",
    "--config.model.time_embed_dim=16",
    "--config.diffusion.num_timesteps=50",
    "--config.training.batch_size=32",
    "--config.training.checkpoint_every=5",
    "--config.training.log_every=5",
]


def _main(workdir, *flags, wait=True):
    cmd = [sys.executable, "-m", "diffax.main", f"--workdir={workdir}", *TINY, *flags]
    p = subprocess.Popen(cmd, cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return _finish(p) if wait else p


def _finish(p: subprocess.Popen) -> str:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out[-3000:]
    return out


def _load_state(workdir, step):
    """The saved TrainState as a dict of numpy arrays (no target needed)."""
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_resume_in_new_process_is_bitwise_identical(tmp_path):
    """20 steps straight == 10 steps, then a NEW process resuming to 20 (params, EMA, Adam, step).

    Saves every 5 steps, so the straight run also exercises async saves followed by donated steps.
    """
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    p_a = _main(straight, "--config.training.num_steps=20", wait=False)
    p_b = _main(resumed, "--config.training.num_steps=10", wait=False)
    _finish(p_a), _finish(p_b)
    out = _main(resumed, "--config.training.num_steps=20")
    assert "10/20" in out  # the second process started at step 10 (tqdm's initial position)

    a, b = _load_state(straight, 20), _load_state(resumed, 20)
    assert int(a["step"]) == int(b["step"]) == 20
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)  # bitwise
    # Non-vacuous: training moved the parameters between the resume point and the end.
    mid = _load_state(resumed, 10)
    assert any(not np.array_equal(x, y) for x, y in zip(_leaves(mid["params"]), _leaves(a["params"])))
    # keep-last-K through the loop: keep_checkpoints=3 of the saves at 5, 10, 15, 20.
    assert sorted(int(d) for d in os.listdir(straight / "checkpoints") if d.isdigit()) == [10, 15, 20]
    assert os.path.exists(straight / "checkpoints" / "config.json")


_CRASH_SCRIPT = r"""
import os, sys, time
import jax.numpy as jnp
from diffax.checkpoint import Checkpointer
c = Checkpointer(sys.argv[1], max_to_keep=3)
c.save(1, {"w": jnp.full((4_000_000,), 1.0)}, data_state={"epoch": 0, "position": 1})
c.wait()
c.save(2, {"w": jnp.full((4_000_000,), 2.0)}, data_state={"epoch": 0, "position": 2})  # async: returns at once
# Die once the save has started writing (its temporary directory exists) and before it is finalized; exiting
# right after save() could come before the background thread made the directory at all (not a torn save).
deadline = time.time() + 120
while time.time() < deadline:
    names = os.listdir(sys.argv[1])
    if "2" in names:
        os._exit(18)  # finalized before we saw it start: no torn save to test
    if any(n.startswith("2") and "tmp" in n for n in names):
        os._exit(17)  # killed mid-save: no finalize
    time.sleep(0.0005)
os._exit(19)
"""


def test_crash_during_save_leaves_previous_checkpoint_restorable(tmp_path):
    d = tmp_path / "ckpt"
    p = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(d)], env=cpu_env(), capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert p.returncode == 17, p.stderr[-2000:]
    leftovers = [n for n in os.listdir(d) if n.startswith("2") and "tmp" in n]
    assert leftovers, f"expected an unfinalized temporary dir for step 2, found {os.listdir(d)}"
    with Checkpointer(d, max_to_keep=3) as c:
        assert c.latest_step() == 1 and c.all_steps() == [1]
        state, data_state = c.restore_latest({"w": jnp.zeros((4_000_000,))})
    np.testing.assert_array_equal(np.asarray(state["w"]), np.ones(4_000_000, np.float32))
    assert data_state == {"epoch": 0, "position": 1}
    assert not [n for n in os.listdir(d) if "tmp" in n]  # the new manager cleaned the torn save up


def test_keep_last_k_and_restore_values(tmp_path):
    target = {"w": jnp.zeros((3,)), "step": jnp.zeros((), jnp.int32)}
    with Checkpointer(tmp_path, max_to_keep=2, config={"seed": 3}) as c:
        for s in range(1, 5):
            assert c.save(s, {"w": jnp.full((3,), float(s)), "step": jnp.int32(s)}, data_state={"position": 10 * s})
        assert not c.save(4, {"w": jnp.full((3,), 99.0), "step": jnp.int32(4)}, data_state={"position": 0})
        c.wait()
        assert c.all_steps() == [3, 4] and c.latest_step() == 4
        state, ds = c.restore(3, target)
        np.testing.assert_array_equal(np.asarray(state["w"]), [3.0, 3.0, 3.0])
        assert ds == {"position": 30} and int(state["step"]) == 3
        state, ds = c.restore_latest(target)
        np.testing.assert_array_equal(np.asarray(state["w"]), [4.0, 4.0, 4.0])  # not the refused 99
        assert c.save(4, {"w": jnp.full((3,), 7.0), "step": jnp.int32(4)}, data_state={"position": 0}, force=True)
        c.wait()
        np.testing.assert_array_equal(np.asarray(c.restore(4, target)[0]["w"]), [7.0, 7.0, 7.0])
    with open(tmp_path / "config.json") as f:
        assert json.load(f) == {"seed": 3}
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path / "x", max_to_keep=0)


def test_async_save_is_immune_to_donation(tmp_path):
    """The training loop donates the state to the next step right after an async save; the saved
    values must be those at save time (on CPU Orbax's host copy can alias the device buffer)."""
    state = {"w": jnp.arange(1_000_000, dtype=jnp.float32)}
    bump = jax.jit(lambda s: jax.tree.map(lambda x: x * 2.0 + 1.0, s), donate_argnums=0)
    with Checkpointer(tmp_path, max_to_keep=2, async_save=True) as c:
        c.save(1, state, data_state={"position": 1})
        for _ in range(5):
            state = bump(state)  # overwrites the donated buffers in place
        c.wait()
        restored, _ = c.restore(1, {"w": jnp.zeros((1_000_000,))})
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(1_000_000, dtype=np.float32))


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from diffax.training import presets, train

    config = presets.load_config(os.path.join(REPO, "configs", "gmm1d.py"))
    config.model.hidden, config.model.num_layers, config.diffusion.num_timesteps = 16, 1, 50
    config.training.batch_size, config.training.num_steps = 32, 6
    config.training.checkpoint_every, config.training.log_every = 3, 3
    train.train_and_evaluate(config, str(tmp_path))
    good = _load_state(tmp_path, 6)

    config.training.num_steps = 30
    config.optim.lr, config.optim.warmup_steps = 1e30, 0  # Adam: each update ~ lr * sign(g)
    with pytest.raises(FloatingPointError, match=r"non-finite .*Last good checkpoint: step 6"):
        train.train_and_evaluate(config, str(tmp_path))
    with Checkpointer(tmp_path / "checkpoints") as c:
        assert c.latest_step() == 6  # nothing saved after the blow-up
    after = _load_state(tmp_path, 6)
    for x, y in zip(_leaves(good), _leaves(after)):
        np.testing.assert_array_equal(x, y)
        assert np.all(np.isfinite(x.astype(np.float64)))


@pytest.mark.slow
def test_importance_sampling_loss_history_is_checkpointed_and_resumes_bitwise(tmp_path):
    """diffusion.timestep_sampling='importance' through the loop: the loss history lives in
    TrainState.extra, is saved, and 8 straight steps == 4 + resume + 4 bitwise (params and history).
    With T = 8 and batch 32, 8 steps fill every t's 10-value history, so the last steps sample t
    non-uniformly. loss_type 'simple' with importance sampling is a clear error."""
    from diffax.training import presets, train
    from diffax.training.step import LOSS_HISTORY

    config = presets.load_config(os.path.join(REPO, "configs", "gmm1d.py"))
    config.model.hidden, config.model.num_layers, config.diffusion.num_timesteps = 16, 1, 8
    # DDPM's endpoints, explicitly (the T-scaled defaults need T >= 21); T = 8 leaves signal at x_T, allowed here.
    config.diffusion.beta_start, config.diffusion.beta_end, config.diffusion.max_terminal_alpha_bar = 1e-4, 0.02, 1.0
    config.diffusion.var_type, config.diffusion.loss_type = "learned_range", "hybrid"
    config.diffusion.timestep_sampling = "importance"
    config.training.batch_size, config.training.checkpoint_every, config.training.log_every = 32, 4, 4
    config.training.num_steps = 8
    train.train_and_evaluate(config, str(tmp_path / "straight"))
    config.training.num_steps = 4
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.training.num_steps = 8
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    a, b = _load_state(tmp_path / "straight", 8), _load_state(tmp_path / "resumed", 8)
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)
    counts = np.asarray(a["extra"][LOSS_HISTORY]["counts"])
    np.testing.assert_array_equal(counts, np.full(8, 10))  # full history: the sampler is warm
    assert np.all(np.asarray(a["extra"][LOSS_HISTORY]["values"]) > 0)

    config.diffusion.loss_type = "simple"
    with pytest.raises(ValueError, match="timestep_sampling='importance' needs a loss"):
        train.train_and_evaluate(config, str(tmp_path / "bad"))


# ------------------------------------------------------------------------------------- integrity & config
from diffax.checkpoint_integrity import CHECKSUM_ALGORITHM, CheckpointDamagedError, tree_checksums  # noqa: E402

# Orbax leaves un-awaited read coroutines behind when TensorStore fails on a damaged file; Python reports
# them at some later garbage collection, in whichever test runs then.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

N_W = 50_000  # float32 payload big enough that Orbax writes it as its own data chunk


def _state(s: int) -> dict:
    """A distinct state per step: random weights (incompressible), a small float table, an int counter."""
    rng = np.random.default_rng(s)
    return {
        "w": jnp.asarray(rng.standard_normal(N_W).astype(np.float32)),
        "b": {"x": jnp.arange(7.0) + s, "step": jnp.int32(s)},
    }


def _target() -> dict:
    return jax.tree.map(jnp.zeros_like, _state(0))


def _save_steps(d, steps=(1, 2, 3), **kwargs) -> dict:
    with Checkpointer(d, max_to_keep=5, **kwargs) as c:
        for s in steps:
            assert c.save(s, _state(s), data_state={"position": 10 * s})
    return {s: _state(s) for s in steps}


def _payload_file(step_dir) -> str:
    """The largest array data file Orbax wrote for the step's state (OCDBT keeps chunks under .../d/)."""
    files = [
        os.path.join(root, f)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        for f in names
        if os.path.basename(root) == "d"
    ]
    assert files, f"no OCDBT data files under {step_dir}/state (has Orbax changed its layout?)"
    return max(files, key=os.path.getsize)


def _corrupt(step_dir, mode: str) -> str:
    path = _payload_file(step_dir)
    raw = bytearray(open(path, "rb").read())
    assert len(raw) > 4 * N_W // 2, f"{path} ({len(raw)} bytes) is not the weights' payload"
    if mode == "flip":
        raw[len(raw) // 2] ^= 0x10  # one bit, inside the weights' chunk
    elif mode == "garbage":
        raw[64:-64] = np.random.default_rng(0).integers(0, 256, len(raw) - 128, dtype=np.uint8).tobytes()
    elif mode == "truncate":
        del raw[len(raw) // 2 :]
    else:
        raise ValueError(mode)
    with open(path, "wb") as f:
        f.write(bytes(raw))
    return path


def _tree_snapshot(d) -> dict:
    """{relative path: file bytes} of everything under ``d`` (to assert that nothing was changed)."""
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_leaves(a), _leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_checksums_are_sha256_of_the_array_bytes():
    """Each record entry is sha256 of the value's C-order bytes (recomputable with numpy + hashlib alone),
    with shape and dtype, for every dtype family and nesting; one flipped bit changes it (control)."""
    import hashlib

    rng = np.random.default_rng(0)
    tree = {
        "f32": jnp.asarray(rng.standard_normal((5, 7)).astype(np.float32)),
        "nested": [jnp.asarray(rng.standard_normal(9), jnp.bfloat16), {"i8": rng.integers(-128, 127, 11).astype(np.int8)}],
        "u32": jnp.asarray(rng.integers(0, 2**32, 6, dtype=np.uint32)),
        "bool": jnp.asarray(rng.random(13) < 0.5),
        "scalar": jnp.int32(-3),
        "transposed": jnp.asarray(rng.standard_normal((3, 4)).astype(np.float32)).T,
    }
    got = tree_checksums(tree)
    assert sorted(got) == ["bool", "f32", "nested/0", "nested/1/i8", "scalar", "transposed", "u32"]
    flat = {"f32": tree["f32"], "nested/0": tree["nested"][0], "nested/1/i8": tree["nested"][1]["i8"],
            "u32": tree["u32"], "bool": tree["bool"], "scalar": tree["scalar"], "transposed": tree["transposed"]}  # fmt: skip
    for k, x in flat.items():
        x = np.asarray(x)
        expected = {"shape": list(x.shape), "dtype": str(x.dtype), "sha256": hashlib.sha256(x.tobytes()).hexdigest()}
        assert got[k] == expected, k
    with jax.enable_x64(True):
        f64 = rng.standard_normal(4)
        assert tree_checksums({"f64": jnp.asarray(f64)})["f64"]["sha256"] == hashlib.sha256(f64.tobytes()).hexdigest()
    flipped = np.asarray(tree["f32"]).copy()
    flipped.reshape(-1).view(np.uint32)[17] ^= np.uint32(1 << 30)
    assert tree_checksums({"f32": flipped})["f32"]["sha256"] != got["f32"]["sha256"]


def test_checksums_are_saved_with_each_step_and_restore_verifies(tmp_path):
    states = _save_steps(tmp_path, steps=(1, 2))
    with Checkpointer(tmp_path) as c:
        record = c.read_checksums(2)
        # Every item of the step: the arrays, the data position's canonical JSON (no config was given), the step.
        position = hashlib.sha256(b'{"position":20}').hexdigest()
        assert record == {"algorithm": CHECKSUM_ALGORITHM, "step": 2, "arrays": tree_checksums(states[2]),
                          "items": {"data": position}}  # fmt: skip
        assert c.verify(2) and c.verify(1)
        state, ds = c.restore(2, _target())
        _assert_tree_equal(state, states[2])
        assert ds == {"position": 20}


@pytest.mark.parametrize("mode", ["flip", "garbage", "truncate"])
def test_damaged_latest_checkpoint_falls_back_to_previous_intact_step(tmp_path, caplog, mode):
    states = _save_steps(tmp_path)
    _corrupt(tmp_path / "3", mode)
    with Checkpointer(tmp_path, max_to_keep=5) as c:
        if mode == "flip":
            # Control: Orbax alone reads the flipped chunk without complaint, into DIFFERENT numbers —
            # only the checksum tells.
            unchecked, _ = c.restore(3, _target(), verify=False)
            assert not np.array_equal(np.asarray(unchecked["w"]), np.asarray(states[3]["w"]))
            np.testing.assert_array_equal(np.asarray(unchecked["b"]["x"]), np.asarray(states[3]["b"]["x"]))
        with pytest.raises(CheckpointDamagedError) as e:
            c.restore(3, _target())
        assert e.value.step == 3 and str(tmp_path) in str(e.value)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 700, msg  # one readable line, not Orbax's spec dump
        if mode == "flip":
            assert e.value.array == "w" and "checksum sha256" in msg
        with pytest.raises(CheckpointDamagedError):
            c.verify(3)
        assert c.verify(2)

        with caplog.at_level("WARNING", logger="diffax.checkpoint"):
            state, data_state, step = c.restore_latest_intact(_target())
        assert step == 2 and data_state == {"position": 20}
        _assert_tree_equal(state, states[2])  # exactly the saved state of step 2
        assert "checkpoint 3 is damaged (" in caplog.text and "falling back to step 2" in caplog.text
        # The damaged step is moved aside, so training from step 2 can save step 3 again.
        assert c.all_steps() == [1, 2]
        (moved,) = os.listdir(tmp_path / "damaged")
        assert moved.startswith("3-") and os.path.isdir(tmp_path / "damaged" / moved / "state")
        assert c.save(3, _state(33), data_state={"position": 33})
        c.wait()
        _assert_tree_equal(c.restore(3, _target())[0], _state(33))
    with Checkpointer(tmp_path) as c:  # a fresh manager ignores damaged/
        assert c.all_steps() == [1, 2, 3]


def test_every_checkpoint_damaged_is_one_clear_error_and_changes_nothing(tmp_path):
    _save_steps(tmp_path, steps=(1, 2))
    _corrupt(tmp_path / "1", "flip")
    _corrupt(tmp_path / "2", "garbage")
    before = _tree_snapshot(tmp_path)
    with Checkpointer(tmp_path) as c:
        with pytest.raises(ValueError, match=r"no intact checkpoint") as e:
            c.restore_latest_intact(_target())
    msg = str(e.value)
    assert "step 2: unreadable" in msg and "step 1: w: checksum" in msg, msg
    assert _tree_snapshot(tmp_path) == before


def test_target_mismatch_is_not_reported_as_damage(tmp_path):
    _save_steps(tmp_path, steps=(1,))
    with Checkpointer(tmp_path) as c:
        bad = {"w": jnp.zeros(N_W + 1), "b": {"x": jnp.zeros(7), "step": jnp.int32(0)}}
        expected = r"does not match the target state.*w: saved shape \(50000,\), target \(50001,\)"
        with pytest.raises(ValueError, match=expected) as e:
            c.restore_latest_intact(bad)
        assert not isinstance(e.value, CheckpointDamagedError)
        with pytest.raises(ValueError, match=r"saved but not in the target: \['b/step'\]"):
            c.restore(1, {"w": jnp.zeros(N_W), "b": {"x": jnp.zeros(7)}})
        with pytest.raises(ValueError, match=r"no finalized checkpoint 7 .*available steps: \[1\]"):
            c.restore(7, _target())


def test_restore_casts_to_the_target_dtype_after_verifying(tmp_path):
    states = _save_steps(tmp_path, steps=(1,))
    target = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.bfloat16) if x.dtype == jnp.float32 else x, _target())
    with Checkpointer(tmp_path) as c:
        state, _ = c.restore(1, target)
    assert state["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(states[1]["w"].astype(jnp.bfloat16)))


def test_older_checkpoint_without_checksums_or_config_still_restores(tmp_path):
    """A step written by the previous format (state + data only) restores unverified; verify() says so."""
    state = _state(1)
    m = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True))
    m.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"position": 1})))
    m.wait_until_finished()
    m.close()
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"old": True}, f)
    with Checkpointer(tmp_path) as c:
        assert c.read_checksums(1) is None and c.verify(1) is False
        restored, ds = c.restore(1, _target())
        _assert_tree_equal(restored, state)
        assert c.read_config(1) == {"old": True} and c.read_config() == {"old": True}
        with pytest.raises(ValueError, match=r"does not match the target state.*w: saved shape"):
            c.restore(1, {"w": jnp.zeros(3), "b": {"x": jnp.zeros(7), "step": jnp.int32(0)}})


def test_config_is_saved_with_each_step_and_config_json_only_after_a_final_save(tmp_path):
    cfg = {"optim": {"lr": 1e-3}, "seed": 0, "name": "a"}
    with Checkpointer(tmp_path, config=cfg) as c:
        assert c.restore_latest(_target()) is None and c.restore_latest_intact(_target()) is None
        assert not os.path.exists(tmp_path / "config.json")  # opening a run writes nothing
        assert c.read_config() is None
        c.save(1, _state(1), data_state={"position": 1})  # async: still in flight
        assert not os.path.exists(tmp_path / "config.json")  # never before a checkpoint trained with it is final
        c.wait()
        with open(tmp_path / "config.json") as f:
            assert json.load(f) == cfg
        c.save(2, _state(2), data_state={"position": 2}, config={**cfg, "seed": 1})  # per-save override
        c.save(3, _state(3), data_state={"position": 3}, config={"lr": np.float32(0.5)})
        c.wait()
        assert c.read_config(1) == cfg and c.read_config(2) == {**cfg, "seed": 1}
        assert c.read_config() == c.read_config(3) == {"lr": 0.5}
    with open(tmp_path / "config.json") as f:
        assert json.load(f) == {"lr": 0.5}  # follows the newest finalized step
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        Checkpointer(tmp_path / "x", config={"f": object()})


_KILL_SCRIPT = r"""
import sys
import jax.numpy as jnp
from diffax.checkpoint import Checkpointer
c = Checkpointer(sys.argv[1], max_to_keep=2)
s = 0
while True:
    s += 1
    c.save(s, {"w": jnp.full((2_000_000,), float(s)), "i": jnp.int32(s)}, data_state={"position": s})
    if s == 2:
        c.wait()
        print("saved", flush=True)
"""


def test_kill_9_during_saves_leaves_the_newest_final_step_intact(tmp_path):
    """SIGKILL at an arbitrary moment of back-to-back async saves: the newest finalized step verifies and
    holds exactly its values (and the unfinalized one is ignored)."""
    import signal
    import time

    d = tmp_path / "ckpt"
    p = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(d)], env=cpu_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "saved"
        time.sleep(0.7)  # several more saves start and finish; the kill lands in one
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    with Checkpointer(d, max_to_keep=2) as c:
        step = c.latest_step()
        assert step is not None and step >= 2
        assert c.verify(step)
        state, data_state, got = c.restore_latest_intact({"w": jnp.zeros((2_000_000,)), "i": jnp.int32(0)})
    assert got == step and data_state == {"position": step} and int(state["i"]) == step
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full(2_000_000, float(step), np.float32))


def test_abandoned_orbax_read_reports_are_dropped_and_others_kept(monkeypatch):
    """After a damaged restore, Orbax's abandoned read coroutines (GeneratorExit turned into an Exception
    carrying a TensorStore spec) are not printed at garbage collection; any other unraisable still is."""
    import gc
    import types

    from diffax import orbax_noise

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(getattr(u.object, "__qualname__", repr(u.object))))
    orbax_noise.silence_abandoned_orbax_reads()  # wraps the recording hook above (monkeypatch restores it)

    def abandoned(name):
        async def read():  # what Orbax's reader does: `except BaseException as e: raise Exception(...) from e`
            try:
                await types.coroutine(lambda: (yield))()
            except BaseException as e:
                raise Exception("Encountered error while reading array index: ...") from e

        read.__qualname__ = read.__name__ = name
        coro = read()
        coro.send(None)  # suspended at the await, then dropped
        return coro

    for name in (orbax_noise.ORBAX_READ_COROUTINE, "someone_elses_coroutine"):
        coro = abandoned(name)
        del coro
        gc.collect()
    assert seen == ["someone_elses_coroutine"]


def test_unretrieved_tensorstore_read_futures_are_not_logged_and_others_are(caplog):
    """After a damaged restore, the futures of TensorStore reads nobody awaits any more are garbage collected
    and asyncio would log "Future exception was never retrieved" with the whole spec (seen in CI after a
    damaged-checkpoint test): that record is dropped, the same record for any other exception is kept."""
    import asyncio
    import gc

    from diffax import orbax_noise

    orbax_noise.silence_abandoned_orbax_reads()
    loop = asyncio.new_event_loop()
    try:
        for text in ("DATA_LOSS: Error reading ... [tensorstore_spec='{\"driver\":\"zarr\"}']", "someone else's error"):
            future = loop.create_future()
            future.set_exception(ValueError(text))
            with caplog.at_level("ERROR", logger="asyncio"):
                del future
                gc.collect()
    finally:
        loop.close()
    logged = [str(r.exc_info[1]) for r in caplog.records if r.name == "asyncio"]
    assert logged == ["someone else's error"], logged


# ------------------------------------------------------------------ readers, item digests, read-only, noise
READ = ["--config.sampling.num_samples=32"]  # readers: a few samples are enough


@pytest.fixture(scope="module")
def trained10(tmp_path_factory):
    """A 10-step tiny run through main (checkpoints 5 and 10); tests work on copies of it."""
    wd = tmp_path_factory.mktemp("trained10") / "run"
    _main(wd, "--config.training.num_steps=10")
    return wd


@pytest.fixture(scope="module")
def straight20(tmp_path_factory):
    """The state of an uninterrupted 20-step run: what every resume must reproduce bitwise."""
    wd = tmp_path_factory.mktemp("straight20") / "run"
    _main(wd, "--config.training.num_steps=20")
    return _load_state(wd, 20)


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _files_and_dirs(d) -> dict:
    """{relative path: (kind, size, mtime_ns, sha256 of the content)} of every file and directory under ``d``."""
    out = {}
    for root, dirs, names in os.walk(d):
        for n in dirs + names:
            p = os.path.join(root, n)
            st = os.lstat(p)
            digest = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else None
            out[os.path.relpath(p, d)] = ("dir" if os.path.isdir(p) else "file", st.st_size, st.st_mtime_ns, digest)
    st = os.lstat(d)
    out["."] = ("dir", st.st_size, st.st_mtime_ns, None)
    return out


def _plant_in_flight_save(ckpt_dir, step: int) -> None:
    """What a live trainer's save looks like on disk before Orbax finalizes it (this Orbax version names it
    ``<step>.orbax-checkpoint-tmp``): a temporary directory with partly written items."""
    tmp = os.path.join(ckpt_dir, f"{step}.orbax-checkpoint-tmp")
    os.makedirs(os.path.join(tmp, "state", "d"))
    with open(os.path.join(tmp, "state", "d", "chunk"), "wb") as f:
        f.write(os.urandom(4096))
    assert ocp.path.step.TMP_DIR_SUFFIX in os.path.basename(tmp)  # Orbax's own marker of unfinalized steps


@pytest.mark.slow
def test_sample_and_eval_never_touch_a_running_trainers_checkpoints(trained10, tmp_path):
    """Item 2: `--mode=sample` and `--mode=eval` on a run whose trainer is saving step 15 (an in-flight
    temporary directory) leave every file and directory under checkpoints/ as it was (paths, sizes, mtimes,
    content), and use the newest FINISHED step, 10."""
    wd = _copy(trained10, tmp_path / "run")
    ckpt_dir = wd / "checkpoints"
    _plant_in_flight_save(ckpt_dir, 15)
    before = _files_and_dirs(ckpt_dir)
    _main(wd, "--mode=sample", *READ)
    assert _files_and_dirs(ckpt_dir) == before
    _main(wd, "--mode=eval", *READ)
    assert _files_and_dirs(ckpt_dir) == before
    with open(wd / "eval.json") as f:
        assert json.load(f)["checkpoint_step"] == 10
    x = np.load(wd / "samples.npz")["samples"]
    assert x.shape == (32, 1) and np.all(np.isfinite(x))


@pytest.mark.slow  # 100 s on a loaded 2-core machine (a trainer saving 150 times, readers one after another)
def test_live_trainer_keeps_every_checkpoint_while_readers_sample(tmp_path):
    """Item 2, live: a trainer saving every 2 steps while `--mode=sample` runs again and again on its workdir;
    the trainer finishes, its last checkpoints are all there and verify, and no reader failed."""
    wd = tmp_path / "run"
    n = 300
    trainer = _main(wd, f"--config.training.num_steps={n}", "--config.training.checkpoint_every=2", wait=False)
    while not os.path.isdir(wd / "checkpoints" / "2"):  # the first save is final: readers have a run to read
        assert trainer.poll() is None, trainer.communicate()[0][-3000:]
        time.sleep(0.2)
    runs = 0
    while trainer.poll() is None:  # one reader after another, for as long as the trainer runs
        _main(wd, "--mode=sample", *READ)
        runs += int(trainer.poll() is None)
    out = _finish(trainer)
    assert runs >= 1, runs  # a reader really ran from start to end while the trainer saved
    with Checkpointer(wd / "checkpoints", read_only=True) as c:
        assert c.all_steps() == [n - 4, n - 2, n], out[-2000:]
        assert all(c.verify(s) for s in c.all_steps())
    assert not [p for p in os.listdir(wd / "checkpoints") if "tmp" in p]


def _change_data_position(step_dir) -> None:
    """One digit of the data position: {"position": 10} -> {"position": 11} (still valid JSON)."""
    path = os.path.join(step_dir, "data", "metadata")
    text = open(path).read()
    assert '"position": 10' in text, text
    with open(path, "w") as f:
        f.write(text.replace('"position": 10', '"position": 11'))


def _garble_config(step_dir) -> None:
    path = os.path.join(step_dir, "config", "metadata")
    with open(path, "w") as f:
        f.write('{"model": {"hidden": 1')  # torn JSON


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_change_data_position, _garble_config], ids=["data_position", "config"])
def test_damaged_data_position_or_config_falls_back_and_resumes_bitwise(trained10, straight20, tmp_path, damage):
    """Item 5: a changed digit in step 10's data position, or its config made unreadable, is damage like an
    array's: a reader skips step 10 (changing no file); `--mode=train` to 20 resumes from step 5 with the
    warning, moves step 10 to damaged/, and ends bitwise equal to an uninterrupted 20-step run."""
    wd = _copy(trained10, tmp_path / "run")
    damage(wd / "checkpoints" / "10")
    before = _files_and_dirs(wd / "checkpoints")
    out = _main(wd, "--mode=eval", *READ)
    assert "checkpoint 10 is damaged" in out and "falling back to step 5" in out, out[-3000:]
    assert _files_and_dirs(wd / "checkpoints") == before
    with open(wd / "eval.json") as f:
        assert json.load(f)["checkpoint_step"] == 5

    out = _main(wd, "--config.training.num_steps=20")
    assert "checkpoint 10 is damaged" in out and "falling back to step 5" in out, out[-3000:]
    assert "5/20" in out  # resumed at step 5
    assert [d.split("-")[0] for d in os.listdir(wd / "checkpoints" / "damaged")] == ["10"]
    _assert_tree_equal(_load_state(wd, 20), straight20)


@pytest.mark.slow
def test_unreadable_config_of_every_step_still_stops_with_one_line(trained10, tmp_path):
    """Control for the fallback: when no step has an intact config and state the trainer refuses (no guess)."""
    wd = _copy(trained10, tmp_path / "run")
    _garble_config(wd / "checkpoints" / "10")
    _garble_config(wd / "checkpoints" / "5")
    cmd = [sys.executable, "-m", "diffax.main", f"--workdir={wd}", *TINY, "--config.training.num_steps=20"]
    p = subprocess.run(cmd, cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("diffax: error: ValueError: no intact checkpoint in") and "config" in last, last


def _can_mount_read_only() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_read_only(), reason="needs unshare -rm (user + mount namespaces)")
def test_read_only_checkpoints_dir_is_one_line_and_writes_nothing(trained10, tmp_path):
    """Item 12: resuming a run whose checkpoints/ is read-only stops at once with one line naming the
    directory, writes no metrics row (none without its checkpoint) and no file; sampling it still works.

    The directory is made read-only by a read-only bind mount in a private user + mount namespace (real
    EROFS, as on a read-only filesystem): the tests run as root, for whom chmod does not stop writes."""
    wd = _copy(trained10, tmp_path / "run")
    ckpt_dir = wd / "checkpoints"
    before, metrics = _files_and_dirs(wd), open(wd / "metrics.jsonl").read()

    def in_read_only_mount(*flags):
        main = " ".join([sys.executable, "-m", "diffax.main", f"--workdir={wd}", *TINY, *flags])
        script = f"mount --bind {ckpt_dir} {ckpt_dir} && mount -o remount,bind,ro {ckpt_dir} && exec {main}"
        return subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=cpu_env(), capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    p = in_read_only_mount("--config.training.num_steps=20")
    assert p.returncode == 1, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    expected = f"diffax: error: PermissionError: cannot write to {ckpt_dir} (read-only?): Read-only file system"
    assert lines == [expected], p.stderr[-3000:]
    assert open(wd / "metrics.jsonl").read() == metrics
    after = _files_and_dirs(wd)
    after.pop("."), before.pop(".")  # the workdir's own mtime: the trainer took (and freed) its .lock there
    assert after == before  # but every file and directory in it is as it was
    p = in_read_only_mount("--mode=sample", *READ)
    assert p.returncode == 0, p.stderr[-3000:]
    assert np.load(wd / "samples.npz")["samples"].shape == (32, 1)


@pytest.mark.slow
def test_damaged_manifest_falls_back_without_tracebacks(trained10, tmp_path):
    """Item 13: a damaged Orbax manifest in step 10 -> sampling falls back to step 5 with the one warning;
    the reads Orbax abandoned print no "RuntimeError: Event loop is closed" tracebacks."""
    wd = _copy(trained10, tmp_path / "run")
    path = wd / "checkpoints" / "10" / "state" / "manifest.ocdbt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    p = subprocess.run([sys.executable, "-m", "diffax.main", f"--workdir={wd}", *TINY, "--mode=eval", *READ],
                       cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "checkpoint 10 is damaged" in p.stderr and "falling back to step 5" in p.stderr
    assert "Traceback" not in p.stderr and "Event loop is closed" not in p.stderr, p.stderr[-3000:]
    with open(wd / "eval.json") as f:
        assert json.load(f)["checkpoint_step"] == 5


def test_a_step_deleted_while_a_reader_lists_the_steps_is_listed_again(tmp_path, monkeypatch):
    """Item 2, the moment CI caught: a reader opens the run while the trainer's keep-last-K deletes the oldest
    step between Orbax listing the step directories and reading that step's mtime. The step is gone, not
    damaged: the reader lists again and reads the newest step (was: FileNotFoundError of checkpoints/1).
    Orbax reads a step's mtime when its _CHECKPOINT_METADATA is missing, as it is in this race, so the test
    removes that file and deletes the directory at the exact moment Orbax stats it."""
    import shutil

    from etils import epath

    d = tmp_path / "ckpt"
    saved = _save_steps(d, steps=(1, 2, 3))
    os.remove(d / "1" / "_CHECKPOINT_METADATA")
    path_type = type(epath.Path(str(d)))
    real_stat = path_type.stat
    deleted = []

    def stat_as_the_trainer_deletes(self, *args, **kwargs):
        if os.fspath(self) == str(d / "1") and not deleted:
            shutil.rmtree(d / "1")  # the trainer's keep-last-K, just now
            deleted.append(1)
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(path_type, "stat", stat_as_the_trainer_deletes)
    with Checkpointer(d, read_only=True) as c:
        assert deleted == [1]
        assert c.all_steps() == [2, 3]
        state, data_state, step = c.restore_latest_intact(_target())
    assert step == 3 and data_state == {"position": 30}
    _assert_tree_equal(state, saved[3])
