"""The one last-batch rule of every training loop (`jaxdiff.batching`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import batching


@pytest.mark.parametrize("n,b,steps,size", [(10, 4, 3, 4), (8, 4, 2, 4), (3, 256, 1, 3)])
def test_epoch_batches_pad_the_last_batch_with_weight_zero(key, n, b, steps, size):
    idx, w = batching.epoch_batches(key, n, b)
    assert idx.shape == w.shape == (steps, size) and idx.dtype == jnp.int32
    real = np.asarray(idx)[np.asarray(w) > 0]
    # every example exactly once, in the order of permutation(key, n)
    np.testing.assert_array_equal(real, np.asarray(jax.random.permutation(key, n)))
    pad = np.asarray(idx)[np.asarray(w) == 0]
    assert len(pad) == steps * size - n and np.all(pad == 0)


def test_drop_remainder_and_padded_test_batches(key):
    idx, w = batching.epoch_batches(key, 10, 4, drop_remainder=True)
    assert idx.shape == (2, 4) and np.all(np.asarray(w) == 1)
    x = jnp.arange(10)
    xb = batching.padded_batches(x, 4, fill=-1)
    np.testing.assert_array_equal(np.asarray(xb).ravel(), list(range(10)) + [-1, -1])
    assert batching.padded_batches(jnp.ones((5, 2, 3)), 8).shape == (1, 5, 2, 3)


def test_masked_mean_ignores_padding_and_all_zero_weights():
    v = jnp.array([1.0, 3.0, 100.0])
    assert float(batching.masked_mean(v, jnp.array([1.0, 1.0, 0.0]))) == 2.0
    assert float(batching.masked_mean(v, jnp.zeros(3))) == 0.0
    with pytest.raises(ValueError, match="n=0"):
        batching.num_batches(0, 4)
