"""Per-sample keys (`jaxdiff.random`)."""

import jax
import numpy as np

from jaxdiff import random as jrandom


# ---------------------------------------------------------------- keys
def test_sample_keys_are_fold_in_and_offset_consistent(key):
    ks = jrandom.sample_keys(key, 6)
    for i in range(6):
        assert np.array_equal(jax.random.key_data(ks[i]), jax.random.key_data(jax.random.fold_in(key, i)))
    tail = jrandom.sample_keys(key, 3, offset=3)
    assert np.array_equal(jax.random.key_data(tail), jax.random.key_data(ks[3:]))
