"""Tests for diffax.checkpoint and the loop's checkpointing: bitwise resume across processes, crash
during a save, keep-last-K, async saves vs. buffer donation, and no checkpoint of a non-finite state.

All runs are on CPU with a tiny MLP on gmm1d (T=50); the resume test runs `python -m diffax.main`
in fresh processes, as a preempted job would be restarted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
from diffax.checkpoint import CHECKSUM_ALGORITHM, CheckpointDamagedError, tree_checksums  # noqa: E402

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
        assert record == {"algorithm": CHECKSUM_ALGORITHM, "arrays": tree_checksums(states[2])}
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

    from diffax import checkpoint

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(getattr(u.object, "__qualname__", repr(u.object))))
    monkeypatch.setattr(checkpoint, "_unraisable_filter_installed", False)
    checkpoint._silence_abandoned_orbax_reads()

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

    for name in (checkpoint._ORBAX_READ_COROUTINE, "someone_elses_coroutine"):
        coro = abandoned(name)
        del coro
        gc.collect()
    assert seen == ["someone_elses_coroutine"]
