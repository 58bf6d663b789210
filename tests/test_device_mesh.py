"""Data parallelism (`diffax.device_mesh`, `step.jit_train_step`: jit over a 'data' mesh) and multi-host start-up.

The equivalence tests run tests/_multihost_worker.py in fresh processes, because JAX reads
XLA_FLAGS (the number of fake CPU devices) and the distributed settings at start-up:
  * one process with 8 host devices: 2 steps on a 1-device mesh vs on the 8-device mesh;
  * two processes x 2 devices on 127.0.0.1 (gloo CPU collectives), each feeding half the batch;
    process 0 is configured by flags, process 1 by the DIFFAX_* environment variables.
All three are launched together (module fixture) with a timeout, so a hang fails instead of blocking.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _processes import cpu_env as _env, free_port as _free_port

from diffax.device_mesh import make_mesh, row_sharding, shard_batch
from diffax.training import distributed

WORKER = Path(__file__).with_name("_multihost_worker.py")
REPO = WORKER.parent.parent
TIMEOUT_S = 180

# Tolerances of two data-parallel layouts of the same float32 step. The all-reduce of the gradient
# sums per-device partial sums in a different order than one device does, so values differ by a few
# ulps of the summands (measured: <= 3e-7 of each leaf's scale). Parameters after 2 Adam steps
# (lr 1e-3) are compared with rtol 1e-5 and atol 1e-7 (1e-4 of one step's update); every leaf of the
# state (incl. Adam moments, whose small entries carry cancellation error) to 1e-5 of that leaf's
# largest magnitude; integers (step, Adam count, rng) exactly.
RTOL, ATOL, LEAF_REL = 1e-5, 1e-7, 1e-5


@pytest.fixture(scope="module")
def worker_outputs(tmp_path_factory):
    """Run the 8-device worker and the 2-process worker concurrently; return their .npz contents."""
    tmp = tmp_path_factory.mktemp("sharding")
    port = _free_port()
    cmd = [sys.executable, str(WORKER)]
    jobs = {"devices": subprocess.Popen(cmd + ["--mode", "devices", "--out", str(tmp / "devices.npz")],
                                        env=_env(8), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)}
    coordinator = f"127.0.0.1:{port}"
    for i in range(2):
        args, env = ["--mode", "multihost", "--out", str(tmp / f"multihost{i}.npz")], _env(2)
        if i == 0:  # process 0 from flags, process 1 from the environment
            args += ["--coordinator", coordinator, "--num_processes", "2", "--process_id", "0"]
        else:
            env.update({distributed.ENV_COORDINATOR: coordinator, distributed.ENV_NUM_PROCESSES: "2",
                        distributed.ENV_PROCESS_ID: "1"})  # fmt: skip
        jobs[f"multihost{i}"] = subprocess.Popen(cmd + args, env=env, cwd=REPO,
                                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    failures, deadline = [], time.monotonic() + TIMEOUT_S
    for name, proc in jobs.items():
        try:
            log, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in jobs.values():
                p.kill()
                p.wait()
            pytest.fail(f"worker {name} did not finish within {TIMEOUT_S} s (hang?)")
        if proc.returncode != 0:
            failures.append(f"{name} exited {proc.returncode}:\n{log.decode()[-3000:]}")
    if failures:
        pytest.fail("\n".join(failures))
    return {name: dict(np.load(tmp / f"{name}.npz")) for name in jobs}


def _assert_same_step(reference: dict, ref_prefix: str, other: dict, prefix: str) -> None:
    keys = sorted(k[len(prefix):] for k in other if k.startswith(prefix))
    assert keys == sorted(k[len(ref_prefix):] for k in reference if k.startswith(ref_prefix))
    assert any("params" in k for k in keys) and any("metrics" in k for k in keys)
    for k in keys:
        a, b = reference[ref_prefix + k], other[prefix + k]
        assert a.shape == b.shape and a.dtype == b.dtype, k
        if not np.issubdtype(a.dtype, np.floating):
            np.testing.assert_array_equal(b, a, err_msg=k)
            continue
        if "params" in k and "opt_state" not in k or "metrics" in k:
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=k)
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        np.testing.assert_allclose(b, a, rtol=0, atol=LEAF_REL * scale, err_msg=k)


@pytest.mark.slow
def test_eight_devices_equal_one_device(worker_outputs):
    out = worker_outputs["devices"]
    assert int(out["num_devices"]) == 8
    _assert_same_step(out, "one/", out, "all/")
    # Negative control: the two steps moved every parameter leaf by far more than the tolerance.
    for k in (k for k in out if k.startswith("init/params")):
        change = np.max(np.abs(out["one/state.params" + k[len("init/params"):]] - out[k]))
        assert change > 1000 * ATOL, k


@pytest.mark.slow
def test_two_processes_equal_one_process(worker_outputs):
    reference = worker_outputs["devices"]
    for i in range(2):
        out = worker_outputs[f"multihost{i}"]
        assert int(out["process_count"]) == 2 and int(out["num_devices"]) == 4
        _assert_same_step(reference, "one/", out, "multi/")


@pytest.mark.slow
def test_indivisible_global_batch_names_both_numbers(worker_outputs):
    message = str(worker_outputs["devices"]["error"])
    assert "global batch size 6" in message and "number of devices 8" in message


def test_shard_batch_single_process_roundtrip():
    mesh = make_mesh()
    n = 2 * mesh.devices.size
    batch = {"x": np.arange(2 * n, dtype=np.float32).reshape(n, 2), "y": np.arange(n, dtype=np.int32)}
    out = shard_batch(batch, mesh)
    for k, v in batch.items():
        assert out[k].sharding == row_sharding(mesh)
        np.testing.assert_array_equal(np.asarray(out[k]), v)  # exact: a copy


def test_shard_batch_rejects_inconsistent_leading_sizes():
    with pytest.raises(ValueError, match="leading"):
        shard_batch({"x": np.zeros((4, 2)), "y": np.zeros((3,))}, make_mesh())


def test_jit_over_mesh_sum_is_global():
    """A batch mean under jit over the 'data' mesh equals the plain mean (exact for integers in float32)."""
    mesh = make_mesh()
    x = np.arange(8 * mesh.devices.size, dtype=np.float32)
    got = jax.jit(jnp.mean, out_shardings=None)(shard_batch({"x": x}, mesh)["x"])
    assert float(got) == float(np.mean(x))


# ----------------------------------------------------------------------------- distributed.initialize


@pytest.fixture
def clean_env(monkeypatch):
    for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID,
              "SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):  # fmt: skip
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_initialize_single_process_is_a_no_op(clean_env):
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False
    assert jax.process_count() == 1


@pytest.mark.parametrize(
    "kwargs, env, match",
    [
        (dict(num_processes=2), {}, "missing"),
        ({}, {distributed.ENV_NUM_PROCESSES: "2", distributed.ENV_PROCESS_ID: "0"}, "coordinator_address"),
        (dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2), {}, r"process_id must be in \[0, 2\)"),
        (dict(num_processes=0), {}, "num_processes must be >= 1"),
        ({}, {distributed.ENV_NUM_PROCESSES: "two"}, "integer"),
    ],
)
def test_initialize_rejects_incomplete_settings(clean_env, kwargs, env, match):
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs)
