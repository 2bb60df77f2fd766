"""Test configuration: 8 fake CPU devices (set before JAX initialises) and a fresh key per test."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", int(os.environ["JAX_NUM_CPU_DEVICES"]))


@pytest.fixture
def key(request):
    """A fresh PRNG key per test, derived from the test's name (with its parameters) so failures
    reproduce, and a test keeps its randomness when its file moves."""
    import zlib

    return jax.random.key(zlib.crc32(request.node.name.encode()))
