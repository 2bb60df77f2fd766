"""The MLP denoiser network (`jaxdiff.models.mlp_denoiser`): shapes, the null label, errors."""


import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.models.mlp_denoiser import MLPDenoiser

from tests.helpers import perturbed


def test_mlp_denoiser_shapes_null_label_and_errors(key):
    m = MLPDenoiser(3, hidden=16, depth=2, num_classes=4, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(m, nnx.Param, ...)
    m = nnx.merge(graphdef, perturbed(params, key), rest)  # non-zero output layer
    x, c = jax.random.normal(key, (5, 3)), jnp.linspace(-1, 1, 5)
    assert m(x, c).shape == (5, 3)
    # no labels = the null class (index num_classes), used by classifier-free guidance
    np.testing.assert_array_equal(m(x, c), m(x, c, jnp.full(5, m.null_label)))
    assert not np.allclose(m(x, c, jnp.zeros(5, jnp.int32)), m(x, c))
    with pytest.raises(ValueError, match="shape"):
        m(jnp.ones((5, 2)), jnp.zeros(5))
    u = MLPDenoiser(3, hidden=16, depth=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unconditional"):
        u(jnp.ones((5, 3)), jnp.zeros(5), jnp.zeros(5, jnp.int32))
