"""Shared fixtures.

`x64`: runs the test body with ``jax_enable_x64`` on (exactness tests); build schedules and
arrays *inside* the test so they pick up float64.
"""

import os

# One thread per test process: the suite runs as `pytest -n 2` on 2 cores, so multi-threaded XLA (Eigen)
# and OpenBLAS only oversubscribe the cores (measured: 14 % less CPU time on test_interop + test_losses).
# Set before jax/numpy load (both read these at start-up); subprocesses inherit them; a user's own
# settings win. Numerics: the tests' bitwise and tolerance checks pass either way.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

# One persistent XLA compilation cache per test run, shared by both xdist workers and every subprocess the
# tests start (`python -m diffax.main` runs, 8-device and 2-process workers): the same program (a tiny
# model's train step, sampler, init) is compiled once per run instead of once per process. A hit loads the
# executable XLA compiled for the identical program and options, so results are unchanged. The controller
# creates the directory (workers and subprocesses inherit the variable) and removes it at the end; a
# user's own JAX_COMPILATION_CACHE_DIR wins.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    import tempfile

    _OWN_CACHE = tempfile.mkdtemp(prefix="diffax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["float32", "float64"])
def precision(request):
    """Parameterizes a test over float32 and float64 (x64 on for the latter)."""
    with jax.enable_x64(request.param == "float64"):
        yield request.param


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_configure(config):
    # Tests must never touch the network or the user's TFDS cache.
    os.environ.setdefault("TFDS_DATA_DIR", os.path.join(str(config.rootpath), ".pytest_cache", "tfds"))
