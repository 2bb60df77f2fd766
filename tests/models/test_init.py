"""`jaxdiff.models.init`: PyTorch-default initialisation ranges (dd-common.md §3.2)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff import models
from jaxdiff.models import ConvNet


def test_pytorch_init_ranges(key):
    model = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=10, image_size=32)
    layers = [(b.conv.kernel[...], b.conv.bias[...]) for b in model.blocks]
    layers.append((model.classifier.kernel[...], model.classifier.bias[...]))
    fan_ins = [27, 1152, 1152, 2048]
    for (k, b), fan_in in zip(layers, fan_ins):
        bound = 1.0 / math.sqrt(fan_in)
        for t in (k, b):
            a = np.abs(np.asarray(t))
            assert a.max() <= bound
            # Uniform on [-bound, bound]: the extreme |value| of n draws is close to the bound.
            assert a.max() >= bound * (1 - 5.0 / t.size) - 1e-7 if t.size > 100 else \
                a.max() >= 0.5 * bound
        if k.size > 10_000:  # moments of U(-b, b): mean 0, std b / sqrt(3)
            assert abs(float(k.mean())) < 0.01 * bound
            assert float(k.std()) == pytest.approx(bound / math.sqrt(3), rel=0.01)
    for b in model.blocks:
        np.testing.assert_array_equal(b.norm.scale[...], 1.0)
        np.testing.assert_array_equal(b.norm.bias[...], 0.0)


def test_init_helpers_bounds(key):
    k = models.torch_kernel_init()(key, (3, 3, 16, 8), jnp.float32)
    assert float(jnp.abs(k).max()) <= 1 / 12 and float(jnp.abs(k).max()) > 0.99 / 12
    b = models.torch_bias_init(144)(key, (20000,), jnp.float32)
    assert float(jnp.abs(b).max()) <= 1 / 12 and float(jnp.abs(b).max()) > 0.999 / 12
    lin = models.linear(50, 7, rngs=nnx.Rngs(key))
    assert float(jnp.abs(lin.bias[...]).max()) <= 1 / math.sqrt(50)
    assert float(jnp.abs(lin.bias[...]).max()) > 0  # not Flax's zero bias
