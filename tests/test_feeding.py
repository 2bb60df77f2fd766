"""`jaxdiff.feeding.HostBatches`: a step's rows read on the host and placed by the target
sharding, the same rows as the jitted draw, each distinct shard read once, chunks prefetched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import sharding
from jaxdiff.feeding import HostBatches


class _Counting:
    def __init__(self, a):
        self.a, self.shape, self.reads = a, a.shape, []

    def __getitem__(self, rows):
        self.reads.append(np.asarray(rows).copy())
        return self.a[rows]


def _draw(key, n, b):
    return lambda step: jax.random.randint(jax.random.fold_in(key, step), (b,), 0, n)


@pytest.mark.parametrize("split", [True, False])
def test_batches_are_the_drawn_rows_placed_and_read_once(key, split):
    images = np.arange(40 * 3 * 2, dtype=np.float32).reshape(40, 3, 2)
    labels = np.arange(40, dtype=np.int32)
    mesh = sharding.data_mesh(8)
    target = NamedSharding(mesh, P(sharding.DATA_AXIS) if split else P())
    source = _Counting(images)
    feed = HostBatches((source, labels), _draw(key, 40, 16), (target, target), chunk=4)
    for step in (0, 3, 4, 9, 2):                     # within, across and back over chunks
        source.reads.clear()
        x, y = feed(step)
        want = np.asarray(_draw(key, 40, 16)(step))
        np.testing.assert_array_equal(feed.rows(step), want)
        np.testing.assert_array_equal(np.asarray(y), want)
        np.testing.assert_array_equal(np.asarray(x), images[want])
        assert x.sharding == target and y.sharding == target
        # split: 8 devices read 2 rows each; replicated: one read shared by the 8 devices
        assert [len(r) for r in source.reads] == ([2] * 8 if split else [16])


def test_multi_axis_rows_and_mismatched_targets(key):
    feed = HostBatches((np.arange(10),), lambda s: (jnp.arange(6) + s).reshape(2, 3) % 10,
                       (NamedSharding(sharding.data_mesh(1), P()),))
    (x,) = feed(7)
    np.testing.assert_array_equal(np.asarray(x), (np.arange(6) + 7).reshape(2, 3) % 10)
    with pytest.raises(ValueError, match="2 arrays but 1 target"):
        HostBatches((np.arange(3), np.arange(3)), lambda s: jnp.zeros(1, jnp.int32),
                    (NamedSharding(sharding.data_mesh(1), P()),))
