"""Pixel transforms (`jaxdiff.data.transforms`): bilinear resize against hand values and
`jax.image.resize`, normalisation exact values and round trip, NumPy and jax arrays."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data
from jaxdiff.data.transforms import linear_weights


def test_resize_hand_computed():
    # Upsampling 2 -> 4 px, half-pixel centres: samples at -0.25, 0.25, 0.75, 1.25 (edges clamp).
    row = np.array([0, 255], np.uint8).reshape(1, 1, 2, 1)
    out = data.resize_bilinear(np.repeat(row, 2, axis=1), (2, 4))
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 64, 191, 255])  # 63.75 and 191.25 rounded
    # Downsampling 4 -> 2 is antialiased: triangle widened to 2 px, centre 0.5 weighs
    # (0.75, 0.75, 0.25, 0) / 1.75 -> (0*0.75 + 10*0.75 + 20*0.25) / 1.75 = 7.142857.
    w = linear_weights(4, 2)
    np.testing.assert_allclose(w @ np.array([0.0, 10, 20, 30]), [50 / 7, 30 - 50 / 7], atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


@pytest.mark.parametrize("src,dst",
                         [((8, 8), (32, 32)), ((32, 32), (20, 12)), ((28, 28), (32, 16))])
def test_resize_weights_match_jax_image_resize(src, dst):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, *src, 3))
    ours = np.einsum("oh,nhwc,pw->nopc", linear_weights(src[0], dst[0]), x,
                     linear_weights(src[1], dst[1]))
    ref = jax.image.resize(jnp.asarray(x, jnp.float32), (2, *dst, 3), "linear", antialias=True)
    np.testing.assert_allclose(ours, np.asarray(ref), atol=2e-3)


def test_normalize_exact_values_and_round_trip():
    info = data.with_stats(data.get_info("mnist"), (0.5, 0.25))
    x = np.array([0, 255, 51], np.uint8).reshape(1, 1, 3, 1)
    y = data.normalize(x, info)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(y.ravel(), [-2.0, 2.0, -1.2], atol=1e-6)  # 51/255 = 0.2
    np.testing.assert_allclose(data.denormalize(y, info).ravel(), [0.0, 1.0, 0.2], atol=1e-6)

    cifar = data.get_info("cifar10")
    imgs = np.random.default_rng(1).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    z = data.normalize(imgs, cifar)
    np.testing.assert_allclose(z[0, 0, 0], (imgs[0, 0, 0] / 255 - np.array(cifar.mean)) /
                               np.array(cifar.std), rtol=1e-5)
    np.testing.assert_allclose(data.denormalize(z, cifar) * 255, imgs, atol=1e-3)
    # stats= overrides the info's statistics.
    z_lc = data.normalize(imgs, cifar, stats="lcmat_cifar")
    np.testing.assert_allclose(z_lc, data.normalize(imgs, data.with_stats(cifar, "lcmat_cifar")))
    assert not np.allclose(z_lc, z)


def test_normalize_jax_arrays_and_display_clip():
    info = data.get_info("cifar10")
    imgs = np.random.default_rng(2).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    y = jax.jit(lambda a: data.normalize(a, info))(jnp.asarray(imgs))
    assert isinstance(y, jax.Array) and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), data.normalize(imgs, info), rtol=1e-6, atol=1e-6)
    # Denormalize does not clip (synthetic images leave [0, 1]); to_display does.
    far = np.full((1, 1, 1, 3), 10.0, np.float32)
    assert (data.denormalize(far, info) > 1).all()
    np.testing.assert_array_equal(data.to_display(far, info), 1.0)
    np.testing.assert_array_equal(data.to_display(-far, info), 0.0)
    with pytest.raises(TypeError, match="uint8"):
        data.normalize(imgs.astype(np.float32), info)
    with pytest.raises(ValueError, match="channels"):
        data.normalize(imgs[..., :1], info)
