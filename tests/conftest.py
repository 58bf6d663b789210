"""Shared fixtures.

`x64`: runs the test body with ``jax_enable_x64`` on (exactness tests); build schedules and
arrays *inside* the test so they pick up float64.
"""

import os

import jax
import pytest


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["float32", "float64"])
def precision(request):
    """Parameterizes a test over float32 and float64 (x64 on for the latter)."""
    with jax.enable_x64(request.param == "float64"):
        yield request.param


def pytest_configure(config):
    # Tests must never touch the network or the user's TFDS cache.
    os.environ.setdefault("TFDS_DATA_DIR", os.path.join(str(config.rootpath), ".pytest_cache", "tfds"))
