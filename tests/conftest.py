"""Test configuration: 8 fake CPU devices (set before JAX initialises) and a fresh key per test."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests are tiny programs, so compiling dominates: compile without XLA:CPU's LLVM backend
# optimisation (the suite takes ~30 % less time). Both sides of every comparison use the same
# flags; `JAXDIFF_TEST_OPTIMIZED=1` keeps XLA's defaults. Spawned processes get the flags
# through `TEST_XLA_EXTRA` (see `helpers.start_cli`).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if os.environ.get("JAXDIFF_TEST_OPTIMIZED") != "1":
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    os.environ["TEST_XLA_EXTRA"] = f"{os.environ.get('TEST_XLA_EXTRA', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", int(os.environ["JAX_NUM_CPU_DEVICES"]))


@pytest.fixture
def key(request):
    """A fresh PRNG key per test, derived from the test's name (with its parameters) so failures
    reproduce, and a test keeps its randomness when its file moves."""
    import zlib

    return jax.random.key(zlib.crc32(request.node.name.encode()))


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """Processes a test started with `helpers.start_cli` die with the test, even when it fails
    half-way (a run left going slows every test after it)."""
    yield
    from tests.helpers import kill_started

    kill_started()
