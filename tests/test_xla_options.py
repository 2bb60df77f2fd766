"""`jaxdiff.xla_options`: the memory-optimised XLA:CPU scheduler for jaxdiff's CPU programs.

It must reach the compiler (a different schedule, smaller temporaries), change no result
(the evaluation protocol is bitwise the same with XLA's default scheduler), and yield to the
user's own choice."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff import models, xla_options
from jaxdiff.distill import evaluate
from jaxdiff.distill.evaluate import train_and_test

_MEMORY = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def test_setting_and_user_flags(monkeypatch):
    monkeypatch.delenv(xla_options.ENV_VAR, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    assert xla_options.cpu_compiler_options() == _MEMORY      # this jaxlib accepts it
    assert xla_options.compiler_options_for(jax.devices("cpu")) == _MEMORY
    monkeypatch.setenv(xla_options.ENV_VAR, " XLA ")
    assert xla_options.cpu_compiler_options() == {}
    assert xla_options.compiler_options_for(jax.devices("cpu")) is None
    monkeypatch.setenv(xla_options.ENV_VAR, "memory")
    for flag in ("--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT",
                 "--xla_cpu_enable_concurrency_optimized_scheduler=true"):
        monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {flag}")
        assert xla_options.cpu_compiler_options() == {}        # the user's scheduler wins
    monkeypatch.setenv(xla_options.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="JAXDIFF_XLA_CPU_SCHEDULER='fastest'.*'memory'"):
        xla_options.cpu_compiler_options()


class _FakeDevice:
    platform = "gpu"


def test_not_for_accelerators():
    assert xla_options.compiler_options_for([_FakeDevice()]) is None
    assert xla_options.compiler_options_for([jax.devices("cpu")[0], _FakeDevice()]) is None


def test_option_reaches_the_compiler():
    """A small ConvNet train step: the memory-optimised schedule needs fewer temporary bytes
    (the option is applied, not silently dropped)."""
    make = functools.partial(models.ConvNet, in_channels=1, num_classes=3, image_size=8,
                             depth=2, width=8)
    model = make(rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.trace(decay=0.9)
    x, y = jnp.ones((16, 8, 8, 1)), jnp.arange(16) % 3
    step = evaluate._train_step(graphdef, tx, None, x, y, jnp.ones(16))

    def temp_bytes(options):
        fn = jax.jit(lambda s: step(s, jnp.arange(16), jax.random.key(0), 0.1),
                     compiler_options=options)
        compiled = fn.lower((params, rest, tx.init(params))).compile()
        return compiled.memory_analysis().temp_size_in_bytes
    assert temp_bytes(_MEMORY) < temp_bytes(None)


def test_evaluation_bitwise_equal_under_both_schedulers(monkeypatch):
    rs = np.random.RandomState(0)
    x = rs.randn(20, 4, 4, 1).astype(np.float32)
    xt = rs.randn(9, 4, 4, 1).astype(np.float32)
    y, yt = np.arange(20) % 3, np.arange(9) % 3
    kw = dict(make_model=functools.partial(models.ConvNet, in_channels=1, num_classes=3,
                                            image_size=4, depth=1, width=8),
              epochs=2, lr=0.05, batch_size=8, test_batch_size=5, num_runs=2,
              devices=jax.devices()[:1])
    out = {}
    for scheduler in ("memory", "xla"):
        monkeypatch.setenv(xla_options.ENV_VAR, scheduler)
        out[scheduler] = train_and_test(jax.random.key(3), x, y, xt, yt, **kw)
    for field in ("accuracy", "accuracy_at", "train_loss"):
        np.testing.assert_array_equal(getattr(out["memory"], field), getattr(out["xla"], field))
    assert len(set(out["memory"].train_loss.tolist())) == 2
