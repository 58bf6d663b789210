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


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env


def _main(workdir, *flags, wait=True):
    cmd = [sys.executable, "-m", "diffax.main", f"--workdir={workdir}", *TINY, *flags]
    p = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
import os, sys
import jax.numpy as jnp
from diffax.checkpoint import Checkpointer
c = Checkpointer(sys.argv[1], max_to_keep=3)
c.save(1, {"w": jnp.full((4_000_000,), 1.0)}, data_state={"epoch": 0, "position": 1})
c.wait()
c.save(2, {"w": jnp.full((4_000_000,), 2.0)}, data_state={"epoch": 0, "position": 2})  # async: returns at once
os._exit(17)  # killed mid-save: no finalize
"""


def test_crash_during_save_leaves_previous_checkpoint_restorable(tmp_path):
    d = tmp_path / "ckpt"
    p = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(d)], env=_env(), capture_output=True, text=True,
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
    import importlib.util

    from diffax.training import loop

    spec = importlib.util.spec_from_file_location("gmm1d_cfg", os.path.join(REPO, "configs", "gmm1d.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    config.model.hidden, config.model.num_layers, config.diffusion.num_timesteps = 16, 1, 50
    config.training.batch_size, config.training.num_steps = 32, 6
    config.training.checkpoint_every, config.training.log_every = 3, 3
    loop.train_and_evaluate(config, str(tmp_path))
    good = _load_state(tmp_path, 6)

    config.training.num_steps = 30
    config.optim.lr, config.optim.warmup_steps = 1e30, 0  # Adam: each update ~ lr * sign(g)
    with pytest.raises(FloatingPointError, match=r"non-finite .*Last good checkpoint: step 6"):
        loop.train_and_evaluate(config, str(tmp_path))
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
    import importlib.util

    from diffax.training import loop
    from diffax.training.step import LOSS_HISTORY

    spec = importlib.util.spec_from_file_location("gmm1d_cfg", os.path.join(REPO, "configs", "gmm1d.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    config.model.hidden, config.model.num_layers, config.diffusion.num_timesteps = 16, 1, 8
    config.diffusion.var_type, config.diffusion.loss_type = "learned_range", "hybrid"
    config.diffusion.timestep_sampling = "importance"
    config.training.batch_size, config.training.checkpoint_every, config.training.log_every = 32, 4, 4
    config.training.num_steps = 8
    loop.train_and_evaluate(config, str(tmp_path / "straight"))
    config.training.num_steps = 4
    loop.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.training.num_steps = 8
    loop.train_and_evaluate(config, str(tmp_path / "resumed"))
    a, b = _load_state(tmp_path / "straight", 8), _load_state(tmp_path / "resumed", 8)
    for x, y in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(x, y)
    counts = np.asarray(a["extra"][LOSS_HISTORY]["counts"])
    np.testing.assert_array_equal(counts, np.full(8, 10))  # full history: the sampler is warm
    assert np.all(np.asarray(a["extra"][LOSS_HISTORY]["values"]) > 0)

    config.diffusion.loss_type = "simple"
    with pytest.raises(ValueError, match="timestep_sampling='importance' needs a loss"):
        loop.train_and_evaluate(config, str(tmp_path / "bad"))
