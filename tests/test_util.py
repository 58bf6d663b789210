"""Tests for diffax._util, the helpers the math modules share (each written once)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import _util, dpm_solver, interpolation, samplers, schedules


# --------------------------------------------------------------------------- checks


def test_check_choice_names_the_value_and_the_allowed_ones():
    assert _util.check_choice("spacing", "leading", ("leading", "trailing")) == "leading"  # allowed: returned
    with pytest.raises(ValueError, match=r"unknown spacing 'lead'; allowed: \['leading', 'trailing'\]"):
        _util.check_choice("spacing", "lead", ("leading", "trailing"))


def test_check_int_and_check_positive():
    assert _util.check_int("n", np.int64(3), 1) == 3 and type(_util.check_int("n", np.int64(3), 1)) is int
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ValueError, match=r"n must be an int >= 1, got"):
            _util.check_int("n", bad, 1)
    assert _util.check_int("t", 9, 0, 9) == 9
    with pytest.raises(ValueError, match=r"t must be an int in \[0, 9\], got 10"):
        _util.check_int("t", 10, 0, 9)
    _util.check_positive("eta", 0.0, allow_zero=True)
    _util.check_positive("eta", np.float32(0.5))
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, jnp.ones(2)):
        with pytest.raises(ValueError, match="eta must be a finite scalar > 0"):
            _util.check_positive("eta", bad)
    jax.jit(lambda v: _util.check_positive("eta", v) or v)(-1.0)  # traced: cannot be checked, passes


def test_check_timestep_range_concrete_and_traced():
    _util.check_timestep_range(np.array([0, 9]), 10)
    with pytest.raises(ValueError, match=r"\[-1, 10\].*\[0, 9\]"):
        _util.check_timestep_range(jnp.array([3, -1, 10, 10]), 10)
    jax.jit(lambda t: _util.check_timestep_range(t, 10) or t)(jnp.array([-1]))  # traced: passes


def test_batch_reductions_and_expand_to():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(_util.mean_flat(x), np.asarray(x).reshape(2, -1).mean(axis=1))
    np.testing.assert_array_equal(_util.sum_flat(x), np.asarray(x).reshape(2, -1).sum(axis=1))
    v = jnp.array([2.0, 3.0])
    assert _util.expand_to(v, 3).shape == (2, 1, 1)
    np.testing.assert_array_equal(_util.expand_to(v, 3) * x, np.asarray(v)[:, None, None] * np.asarray(x))


# --------------------------------------------------------------------------- timestep grids


def test_resolve_timesteps_every_source():
    T = 20
    np.testing.assert_array_equal(_util.resolve_timesteps(T, None, None, "leading"), np.arange(T))
    np.testing.assert_array_equal(
        _util.resolve_timesteps(T, 5, None, "trailing"), schedules.space_timesteps(T, 5, "trailing")
    )
    # An explicit subsequence is accepted in either order and returned ascending.
    np.testing.assert_array_equal(_util.resolve_timesteps(T, None, [15, 7, 0], "leading"), [0, 7, 15])
    np.testing.assert_array_equal(_util.resolve_timesteps(T, None, np.array([0, 7, 15]), "leading"), [0, 7, 15])
    with pytest.raises(ValueError, match="not both"):
        _util.resolve_timesteps(T, 5, [0, 1], "leading")
    with pytest.raises(ValueError, match=r"\[0, 19\], got \[0, 7, 3\]"):
        _util.resolve_timesteps(T, None, [0, 7, 3], "leading")
    with pytest.raises(ValueError, match=r"got \[0, 20\]"):
        _util.resolve_timesteps(T, None, [0, 20], "leading")
    with pytest.raises(ValueError, match="at least 2 entries"):
        _util.resolve_timesteps(T, None, [4], "leading", min_len=2)


def test_the_samplers_resolve_their_grids_through_the_one_helper():
    # DDIM, DDIM inversion and DPM-Solver (explicit timesteps) visit the same indices.
    T = 50
    s = schedules.linear(T, 1e-3, 0.2)
    given = np.array([40, 25, 10, 0])
    want = np.array([0, 10, 25, 40])
    np.testing.assert_array_equal(samplers.ddim_timesteps(s, timesteps=given), want)
    np.testing.assert_array_equal(dpm_solver.dpm_solver_timesteps(s, timesteps=given), want[::-1])
    np.testing.assert_array_equal(
        samplers.ddim_timesteps(s, 7, "linspace"), _util.resolve_timesteps(T, 7, None, "linspace")
    )
    assert not hasattr(interpolation, "_resolve_timesteps")  # the former copy is gone


def test_alphas_cumprod_on_grid(x64):
    s = schedules.cosine(30)
    ts = np.array([2, 9, 29])
    abar, abar_prev = _util.alphas_cumprod_on_grid(s, ts)
    acp = np.cumprod(1.0 - np.asarray(s.betas, np.float64))  # recomputed from the betas alone
    np.testing.assert_allclose(abar, acp[ts], rtol=1e-12)
    np.testing.assert_allclose(abar_prev, [1.0, acp[2], acp[9]], rtol=1e-12)


# --------------------------------------------------------------------------- sampler plumbing


def test_initial_x_draw_and_replacement():
    key = jax.random.key(3)
    np.testing.assert_array_equal(_util.initial_x(key, (4, 2), jnp.float32, None), jax.random.normal(key, (4, 2)))
    given = jnp.ones((4, 2))
    np.testing.assert_array_equal(_util.initial_x(None, (4, 2), jnp.float32, given), given)
    with pytest.raises(ValueError, match=r"x_init has shape \(3, 2\), expected shape \(4, 2\)"):
        _util.initial_x(key, (4, 2), jnp.float32, jnp.ones((3, 2)))


@pytest.mark.parametrize("return_trajectory", [False, True])
def test_scan_trajectory_matches_a_python_loop(return_trajectory):
    # A two-state carry (x, previous x) with the trajectory recording x only, as DPM-Solver uses it.
    xs = jnp.arange(1.0, 6.0)

    def step(carry, a):
        x, prev = carry
        return x * a - prev, x

    init = (jnp.asarray(1.0), jnp.asarray(0.0))
    got = _util.scan_trajectory(step, init, xs, return_trajectory, state=lambda c: c[0])
    carry, states = init, [init[0]]
    for a in np.asarray(xs):
        carry = step(carry, a)
        states.append(carry[0])
    if return_trajectory:
        np.testing.assert_allclose(got[0], carry[0], rtol=1e-6)
        np.testing.assert_allclose(got[1], np.asarray(states), rtol=1e-6)
        assert got[1].shape == (xs.shape[0] + 1,)
    else:
        np.testing.assert_allclose(got, carry[0], rtol=1e-6)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("data", [b"\x00\x01binary", "text \u00e9\n"])
def test_write_atomic_writes_and_replaces(tmp_path, data):
    path = tmp_path / "f.json"
    path.write_bytes(b"old")
    _util.write_atomic(path, data)
    want = data.encode("utf-8") if isinstance(data, str) else data
    assert path.read_bytes() == want
    assert sorted(os.listdir(tmp_path)) == ["f.json"]  # no temporary file left behind


def test_write_atomic_failure_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    path.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        _util.write_atomic(str(path), "new")
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.json"]


def test_write_atomic_fsyncs_the_file_then_the_directory(tmp_path, monkeypatch):
    """Durability: the data are fsynced before the rename and the directory after it (else a power loss
    may lose the rename, or keep it over an empty file). Checked by the inode each fsynced fd refers to."""
    path = tmp_path / "f.json"
    synced: list[tuple[int, bool]] = []  # (inode, whether path existed yet) per fsync call
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append((os.fstat(fd).st_ino, path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    _util.write_atomic(path, "new")
    assert path.read_text() == "new"
    # the file's inode (renamed, so now path's) before the rename; the directory's after it
    assert synced == [(os.stat(path).st_ino, False), (os.stat(tmp_path).st_ino, True)]


def test_write_atomic_raising_midway_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A write that fails after the temporary file exists (here its fsync) removes it and keeps the old file."""
    path = tmp_path / "f.json"
    path.write_bytes(b"old")

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        _util.write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.json"]


def test_npz_bytes_are_what_np_savez_writes(tmp_path):
    arrays = {"samples": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "labels": np.arange(2, dtype=np.int32)}
    np.savez(tmp_path / "a.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == _util.npz_bytes(**arrays)


def test_sha256_of_array_formulas():
    """Plain: sha256 of the C-order bytes (the checkpoint checksum, recomputable with hashlib alone); with
    the shape: of repr((shape, dtype)) then the bytes (the FID reference cache key: same bytes, another
    shape -> another digest). Both are pinned, since saved checkpoints and cached file names hold them."""
    import hashlib

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert _util.sha256_of_array(x) == hashlib.sha256(x.tobytes()).hexdigest()
    assert _util.sha256_of_array(x.T) == hashlib.sha256(np.ascontiguousarray(x.T).tobytes()).hexdigest()
    assert _util.sha256_of_array(x, with_shape=True) == hashlib.sha256(b"((2, 3), 'float32')" + x.tobytes()).hexdigest()
    assert _util.sha256_of_array(x.reshape(3, 2), with_shape=True) != _util.sha256_of_array(x, with_shape=True)
    assert _util.sha256_of_array(x.reshape(3, 2)) == _util.sha256_of_array(x)
