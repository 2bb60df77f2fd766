"""Non-square, odd-sized and grayscale images through pixel, FreD and DDiF (plan -> init ->
decode) and the ConvNet evaluation protocol.

Conventions checked here: DDiF's grid maps pixel (i, j) of an H x W image to
(2 (i / (H - 1) - 0.5), 2 (j / (W - 1) - 0.5)), i.e. [-1, 1] on *each* axis; FreD's DCT runs
over H and W and its mask indexes the H * W positions row-major; the ConvNet pools both axes and
takes its default depth from min(H, W) (refusing when that is not 4 * 2^k).
"""

import jax
import numpy as np
import pytest
import scipy.fft
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff.distill.evaluate import train_and_test
from jaxdiff.distill.params import get_parameterisation, select_real_images
from jaxdiff.models.classifiers import classifier_factory, convnet_depth_for

from tests.helpers import numpy_siren

SHAPES = [(16, 12, 1), (12, 16, 3), (15, 15, 1), (9, 9, 3)]  # (H, W, C)
OPTIONS = {
    "pixel": dict(ipc=1),
    "fred": dict(ipc=1, k=16),
    "ddif": dict(ipc=1, depth=2, width=6, warmup_steps=0),
}


def _normal(shape, seed=0):
    """Test data from numpy (JAX's threefry costs ~1 s of XLA compile per new shape on CPU)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _numpy_grid(h: int, w: int) -> np.ndarray:
    """`[H, W, 2]` float64: (row, col) coordinates, each axis mapped to [-1, 1] on its own."""
    rows, cols = 2 * (np.arange(h) / (h - 1) - 0.5), 2 * (np.arange(w) / (w - 1) - 0.5)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1)


# XLA computes i / (S - 1) as i * fl(1 / (S - 1)), fused or not with the "- 0.5" depending on
# the size and the vectorisation, so its float32 grid is within 1.5 * 2^-23 of the exact value
# (one rounding of the reciprocal, relative 2^-24 of a product <= 1, and one of the result,
# doubled) but not always bitwise equal to one fixed float32 numpy formula. Where S - 1 is a
# power of two every step is exact, so any correct evaluation gives the same bits.
GRID_ATOL = 1.5 * 2.0**-23


def _check_grid(grid, h: int, w: int) -> None:
    grid, ref = np.asarray(grid), _numpy_grid(h, w)
    assert grid.shape == (h, w, 2) and grid.dtype == np.float32
    np.testing.assert_allclose(grid, ref, rtol=0, atol=GRID_ATOL)
    np.testing.assert_array_equal(grid[0, 0], [-1, -1])  # 2 (0 - 0.5) is exact; the last
    # point is 1 only up to that rounding (e.g. 1 + 2^-23 for S = 16, square or not)
    np.testing.assert_array_equal(grid[..., 0], np.broadcast_to(grid[:, :1, 0], (h, w)))  # rows
    np.testing.assert_array_equal(grid[..., 1], np.broadcast_to(grid[:1, :, 1], (h, w)))  # cols
    if (h - 1) & (h - 2) == 0 and (w - 1) & (w - 2) == 0:  # H - 1 and W - 1 powers of two
        np.testing.assert_array_equal(grid, ref.astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(OPTIONS))
def test_plan_init_decode_keeps_the_image_shape(key, name, shape):
    param = get_parameterisation(name, **OPTIONS[name])
    n_pc = param.plan(shape, 2).instances_per_class
    params, static = param.init(key, _normal((2, n_pc, *shape)))
    images = np.asarray(jax.jit(param.decode)(params, static))
    assert images.shape == (2 * n_pc, *shape)
    assert np.all(np.isfinite(images))
    np.testing.assert_array_equal(param.labels(static), [0] * n_pc + [1] * n_pc)
    if name == "ddif":  # the fields are evaluated on the per-axis [-1, 1] grid of H x W
        _check_grid(static["grid"], *shape[:2])
        ref = numpy_siren(jax.tree.map(lambda a: a[0], params), _numpy_grid(*shape[:2]), 30.0, 10.0)
        np.testing.assert_allclose(images[0], ref, rtol=0, atol=2e-6)


def test_ddif_fitted_on_a_non_square_grid(key):
    """17 x 9: (H - 1, W - 1) = (16, 8), so the grid equals the float64 formula bit for bit; the
    fitted fields are evaluated on it (decode == float64 numpy SIREN on the numpy grid) and
    their warm-up MSE is that of the decoded images against their targets."""
    shape = (17, 9, 3)
    param = get_parameterisation("ddif", ipc=1, depth=2, width=6, warmup_steps=10)
    n_pc = param.plan(shape, 2).instances_per_class
    real = _normal((2, n_pc + 1, *shape), seed=1)
    params, static = param.init(key, real)
    np.testing.assert_array_equal(static["grid"], _numpy_grid(17, 9).astype(np.float32))
    out = np.asarray(jax.jit(param.decode)(params, static))
    assert out.shape == (2 * n_pc, *shape)
    for i in (0, 2 * n_pc - 1):
        ref = numpy_siren(jax.tree.map(lambda a: a[i], params), _numpy_grid(17, 9), 30.0, 10.0)
        np.testing.assert_allclose(out[i], ref, rtol=0, atol=2e-6)
    targets = np.asarray(select_real_images(jax.random.split(key)[0], real, n_pc))
    np.testing.assert_allclose(
        static["warmup_mse"], np.mean((out - targets) ** 2, axis=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("shape,norm", [((16, 12, 1), None), ((12, 16, 3), "ortho"),
                                        ((9, 9, 3), None)], ids=["16x12x1", "12x16x3-ortho", "9x9x3"])
def test_fred_keeping_every_coefficient_round_trips(key, shape, norm):
    """K = H * W: the stored coefficients are scipy's dctn of the real image over (H, W), at the
    row-major positions of the mask, and decoding gives the image back."""
    h, w, c = shape
    real = _normal((2, 1, *shape), seed=2)  # one image per class: it is the one chosen
    param = get_parameterisation("fred", ipc=1, k=h * w, dct_norm=norm)
    assert param.plan(shape, 2).instances_per_class == 1
    params, static = param.init(key, real)
    positions = np.asarray(static["positions"])  # [C, H*W]
    assert sorted(positions[0]) == list(range(h * w))  # a permutation: every frequency kept
    for i in range(2):
        ref = scipy.fft.dctn(real[i, 0].astype(np.float64), type=2, norm=norm, axes=(0, 1))
        ref = ref.reshape(h * w, c)[positions[i]]
        scale = np.abs(ref).max()  # unnormalised: up to 4 H W times the pixels
        np.testing.assert_allclose(params["coefficients"][i], ref, rtol=0, atol=2e-6 * scale)
    # float32 matmuls over at most 16 terms of unit-scale pixels (measured: <= 1e-6)
    np.testing.assert_allclose(jax.jit(param.decode)(params, static), real[:, 0], rtol=0, atol=1e-5)


def test_refusals_name_the_shape():
    with pytest.raises(ValueError, match=r"k=200 .* from a 16x12 image \(192 frequency"):
        get_parameterisation("fred", ipc=1, k=200).plan((16, 12, 1), 2)
    with pytest.raises(ValueError, match=r"spatial shape \(1, 12\).*at least 2 points"):
        get_parameterisation("ddif", ipc=1, depth=2, width=6).plan((1, 12, 1), 2)
    with pytest.raises(ValueError, match=r"non-square image shape \(16, 12\).*pass depth= explicitly"):
        classifier_factory("convnet", (16, 12, 1), 10)
    with pytest.raises(ValueError, match=r"image size 15;.*pass depth= explicitly"):
        classifier_factory("convnet", (15, 15, 1), 10)
    assert [convnet_depth_for(s) for s in ((32, 16), (16, 64), (28, 28), 28, (16, 16))] == [2, 2, 3, 3, 2]


@pytest.mark.parametrize("shape,depth,features", [
    ((16, 12, 1), 2, (4, 3)), ((12, 16, 3), 2, (3, 4)), ((15, 15, 1), 2, (3, 3)), ((9, 9, 3), 2, (2, 2)),
    ((32, 16, 3), 0, (8, 4)),  # default depth from min(H, W) = 16
])
def test_convnet_pools_each_axis(shape, depth, features):
    make = classifier_factory("convnet", shape, 10, depth=depth, width=4)
    net = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    assert net.feature_shape == (*features, 4)
    x = jax.ShapeDtypeStruct((2, *shape), np.float32)
    assert jax.eval_shape(lambda x: make(nnx.Rngs(0))(x), x).shape == (2, 10)


def test_ddif_set_on_non_square_digits_trains_and_tests(key):
    """End to end on 16x12 digits: DDiF plan -> init (warm-up) -> decode -> evaluation."""
    train = jdata.load("digits", "train", image_size=(16, 12), cache=False)
    test = jdata.load("digits", "test", image_size=(16, 12), cache=False)
    x = np.asarray(jdata.to_model_space(train.images))
    real = np.stack([x[train.labels == c][:4] for c in range(10)])  # [10, 4, 16, 12, 1]
    param = get_parameterisation("ddif", ipc=1, depth=2, width=6, warmup_steps=20)
    params, static = param.init(key, real)
    images, labels = param.decode(params, static), param.labels(static)
    assert images.shape == (20, 16, 12, 1)  # 192 // 67 = 2 instances per class
    _check_grid(static["grid"], 16, 12)
    res = train_and_test(
        key, images, labels, np.asarray(jdata.to_model_space(test.images)), test.labels,
        make_model=classifier_factory("convnet", (16, 12, 1), 10, depth=2, width=8),
        num_runs=1, epochs=1, eval_epochs=(2,))  # E = 1: E + 1 = 2 epochs
    assert res.accuracy.shape == (1,) and res.accuracy_at.shape == (1, 1)
    assert np.all(np.isfinite(res.accuracy)) and 0.0 <= res.accuracy[0] <= 1.0
