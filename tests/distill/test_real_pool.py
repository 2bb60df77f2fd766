"""The real-image pool (`jaxdiff.distill.real_pool`): grouping by class, per-class draws without
replacement, normalisation, and the host-fed batches (the same images as the in-program draw,
each device's rows read once, shards placed on the mesh)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import sharding
from jaxdiff.data import class_indices
from jaxdiff.distill.params import get_parameterisation, select_real_images
from jaxdiff.distill.real_pool import NormalisedPool, make_real_pool, real_batches, sample_real


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
    assert pool.class_images().shape == (3, n, 2, 2, 1) and pool.per_class == n
    assert pool.source is images                                  # kept by reference
    for c in range(3):
        np.testing.assert_array_equal(pool.class_images()[c], images[idx[c][:n]])
    np.testing.assert_allclose(np.asarray(pool.normalised()),
                               (pool.class_images() / 255.0 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)


def test_sample_real_is_the_documented_draw(key):
    images, labels = _split()
    pool = make_real_pool(images, labels, 3, (0.5,), (0.25,))
    x = np.asarray(sample_real(jnp.asarray(pool.class_images()), pool.mean, pool.std, key, 4))
    keys = jax.random.split(key, 3)
    for c in range(3):
        pick = np.asarray(jax.random.permutation(keys[c], pool.per_class))[:4]
        assert len(set(pick.tolist())) == 4                      # without replacement
        np.testing.assert_allclose(x[c], (pool.class_images()[c][pick] / 255.0 - 0.5) / 0.25,
                                   rtol=1e-6, atol=1e-6)


def test_an_empty_class_is_named():
    images, labels = _split()
    with pytest.raises(ValueError, match=r"classes \[3\] have no training images"):
        make_real_pool(images, labels, 4, (0.5,), (0.25,))


class _CountingSource:
    """A split that records which rows are read (as a memmap would page them in)."""

    def __init__(self, images):
        self.images, self.read = images, []
        self.shape, self.dtype = images.shape, images.dtype

    def __getitem__(self, rows):
        self.read.extend(np.asarray(rows).reshape(-1).tolist())
        return self.images[rows]


def _two_keys(k):
    return jnp.stack([jax.random.fold_in(k, 1), jax.random.fold_in(k, 2)])


@pytest.mark.parametrize("devices", [1, 8])
def test_real_batches_are_the_in_program_draw_read_once_per_row(key, devices):
    images, labels = _split(n=64, classes=2)
    pool = make_real_pool(images, labels, 2, (0.5,), (0.25,))
    source = _CountingSource(images)
    pool = pool._replace(source=source)
    mesh = sharding.data_mesh(devices)
    target = NamedSharding(mesh, P(None, None, sharding.DATA_AXIS))
    feed = real_batches(pool, 8, key, _two_keys, target, chunk=3)
    class_images = jnp.asarray(images[pool.rows])
    for step in (0, 1, 2, 3, 7, 4):                       # across chunks, and back
        source.read.clear()
        (real,) = feed(step)
        assert real.shape == (2, 2, 8, 2, 2, 1) and real.dtype == np.uint8
        assert real.sharding == target
        assert len(source.read) == 2 * 2 * 8              # every row read once, all devices
        for r, k in enumerate(_two_keys(jax.random.fold_in(key, step))):
            want = sample_real(class_images, np.float32(0), np.float32(1 / 255), k, 8)
            np.testing.assert_array_equal(np.asarray(real[r]), np.asarray(want).round())
        if devices == 8:                                  # each device holds one image per class
            shard = real.addressable_shards[3]
            assert shard.data.shape == (2, 2, 1, 2, 2, 1) and shard.index[2] == slice(3, 4)


def test_real_batches_refuse_a_batch_larger_than_a_class(key):
    images, labels = _split()
    pool = make_real_pool(images, labels, 3, (0.5,), (0.25,))
    target = NamedSharding(sharding.data_mesh(1), P())
    with pytest.raises(ValueError, match=r"real batch of 9 images per class needs 1..7"):
        real_batches(pool, 9, key, _two_keys, target)


@pytest.mark.parametrize("name", ["pixel", "fred", "ddif"])
def test_init_from_a_pool_read_on_demand_reads_only_the_chosen_images(key, name):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (60, 8, 8, 1), dtype=np.uint8)
    labels = (np.arange(60) % 3).astype(np.int32)
    pool = make_real_pool(images, labels, 3, (0.5,), (0.25,))
    counting = pool._replace(source=_CountingSource(images))
    lazy = NormalisedPool(counting)
    picks = select_real_images(key, lazy, 2)
    assert len(counting.source.read) == 3 * 2                    # 2 images of each class
    np.testing.assert_array_equal(picks, select_real_images(key, pool.normalised(), 2))
    options = {"fred": dict(k=16, dct_norm="ortho"),
               "ddif": dict(warmup_steps=2, width=4, depth=2)}.get(name, {})
    param = get_parameterisation(name, ipc=1, **options)
    a, b = param.init(key, lazy), param.init(key, pool.normalised())
    jax.tree.map(np.testing.assert_array_equal, a, b)             # the same initial set
