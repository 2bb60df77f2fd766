"""`jaxdiff.models.mlp`: forward pass and embedding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.models import MLP


def test_mlp_forward_and_embed(key):
    mlp = MLP(nnx.Rngs(key), in_features=4 * 4 * 2, out_features=3, hidden=(8, 6))
    x = jax.random.normal(key, (5, 4, 4, 2))
    h = x.reshape(5, -1)
    for layer in mlp.hidden:
        h = jax.nn.relu(h @ layer.kernel[...] + layer.bias[...])
    np.testing.assert_allclose(mlp.embed(x), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mlp(x), h @ mlp.classifier.kernel[...] + mlp.classifier.bias[...],
                               rtol=1e-5, atol=1e-6)
    assert mlp.feature_dim == 6
    with pytest.raises(ValueError, match="features"):
        mlp(jnp.ones((2, 3)))
