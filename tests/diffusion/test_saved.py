"""Trained networks on disk (`jaxdiff.diffusion.saved`): denoiser and discriminator round trips,
clear errors for missing or unfinished runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.data import MODEL_SPACE
from jaxdiff.diffusion import saved
from jaxdiff.models.denoisers import build_denoiser, denoiser_spec


def test_denoiser_round_trip_and_errors(tmp_path):
    spec = denoiser_spec({"name": "mlp", "hidden": 8, "depth": 1, "emb_dim": 4}, (4, 4, 1), 3)
    spec.update(sigma_data=0.5, dataset="digits", image_size=4, data_scaling=MODEL_SPACE)
    _, params, rest = nnx.split(build_denoiser(spec, nnx.Rngs(1)), nnx.Param, ...)
    ema = jax.tree.map(lambda p: p + 1.0, params)
    saved.save_model(str(tmp_path), params, ema, rest, spec, step=7)
    m = saved.load_model(str(tmp_path))
    assert m.spec == {**spec, "step": 7} and m.num_classes == 3 and m.image_shape == (4, 4, 1)
    for a, b in zip(jax.tree.leaves(m.ema), jax.tree.leaves(ema)):
        np.testing.assert_array_equal(a, b)
    x = jnp.zeros((2, 4, 4, 1))
    assert m.make_denoise(m.state())(x, jnp.ones(2), jnp.array([0, 2])).shape == x.shape
    with pytest.raises(FileNotFoundError, match="does not exist"):
        saved.read_model_spec(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.json missing"):
        saved.read_model_spec(str(tmp_path / "empty"))


def test_discriminator_round_trip(tmp_path):
    spec = saved.discriminator_spec(extractor="none", width=4, depth=1, emb_dim=4, num_classes=0,
                                    image_shape=(4, 4, 1), dataset="digits", image_size=4)
    graphdef, params, frozen = nnx.split(saved.build_discriminator(spec, nnx.Rngs(0)),
                                         saved.D.head_filter, ...)
    saved.save_discriminator(str(tmp_path), params, frozen, spec, step=3)
    d = saved.load_discriminator(str(tmp_path))
    x = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))
    want = saved.TrainedDiscriminator(graphdef, params, frozen, spec)
    np.testing.assert_array_equal(d.make_logit(d.state())(x, jnp.ones(3)),
                                  want.make_logit(want.state())(x, jnp.ones(3)))
    with pytest.raises(ValueError, match="unknown extractor"):
        saved.discriminator_spec(extractor="resnet", width=4, depth=1, emb_dim=4, num_classes=0,
                                 image_shape=(4, 4, 1), dataset="digits", image_size=4)
    with pytest.raises(FileNotFoundError, match="discriminator.json"):
        saved.load_discriminator(str(tmp_path / "none"))
