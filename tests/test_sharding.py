"""Device meshes and placement (`jaxdiff.sharding`)."""

import jax
import numpy as np
import pytest

from jaxdiff import sharding


# ---------------------------------------------------------------- meshes
def test_data_mesh_and_uneven_batch_is_refused():
    assert jax.device_count() == 8
    mesh = sharding.data_mesh()
    x = sharding.shard_batch(np.arange(16.0).reshape(16, 1), mesh)
    assert len(x.addressable_shards) == 8 and x.addressable_shards[0].data.shape == (2, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        sharding.shard_batch(np.zeros((12, 1)), mesh)
    with pytest.raises(ValueError, match="devices"):
        sharding.data_mesh(9)
