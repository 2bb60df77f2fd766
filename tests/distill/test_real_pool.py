"""The real-image pool (`jaxdiff.distill.real_pool`): grouping by class, per-class draws without
replacement, normalisation."""

import jax
import numpy as np
import pytest

from jaxdiff.data import class_indices
from jaxdiff.distill.real_pool import make_real_pool, sample_real


def _split(n=23, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 2, 2, 1), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % classes).astype(np.int32)
    return images, labels


def test_pool_groups_by_class_cut_to_the_smallest(key):
    images, labels = _split()
    pool = make_real_pool(images, labels, 3, (0.5,), (0.25,))
    idx = class_indices(labels, 3)
    n = min(len(i) for i in idx)
    assert pool.images.shape == (3, n, 2, 2, 1) and pool.per_class == n
    for c in range(3):
        np.testing.assert_array_equal(np.asarray(pool.images[c]), images[idx[c][:n]])
    np.testing.assert_allclose(np.asarray(pool.normalised()),
                               (np.asarray(pool.images) / 255.0 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)


def test_sample_real_is_the_documented_draw(key):
    images, labels = _split()
    pool = make_real_pool(images, labels, 3, (0.5,), (0.25,))
    x = np.asarray(sample_real(pool.images, pool.mean, pool.std, key, 4))
    keys = jax.random.split(key, 3)
    for c in range(3):
        pick = np.asarray(jax.random.permutation(keys[c], pool.per_class))[:4]
        assert len(set(pick.tolist())) == 4                      # without replacement
        np.testing.assert_allclose(x[c], (np.asarray(pool.images[c])[pick] / 255.0 - 0.5) / 0.25,
                                   rtol=1e-6, atol=1e-6)


def test_an_empty_class_is_named():
    images, labels = _split()
    with pytest.raises(ValueError, match=r"classes \[3\] have no training images"):
        make_real_pool(images, labels, 4, (0.5,), (0.25,))
