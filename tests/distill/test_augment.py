"""DSA augmentation (jaxdiff.distill.augment) against dd-common.md §4 semantics."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.distill import augment as dsa


# Jitted ops with traced parameters: one compilation per input shape keeps this file fast.
_crop = jax.jit(dsa.crop)
_rotate = jax.jit(dsa.rotate, static_argnames="align_corners")
_scale = jax.jit(dsa.scale, static_argnames="align_corners")
_aug = jax.jit(dsa.augment, static_argnames=("strategy", "params", "siamese"))


def _arange_image(n=1, h=4, w=5, c=1):
    return jnp.arange(n * h * w * c, dtype=jnp.float32).reshape(n, h, w, c) + 1.0


# ------------------------------------------------------------------ strategy and parameters


def test_params_defaults_and_hashable():
    p = dsa.DSAParams()
    assert (p.prob_flip, p.ratio_scale, p.ratio_rotate, p.ratio_crop_pad, p.ratio_cutout,
            p.brightness, p.saturation, p.contrast) == (0.5, 1.2, 15.0, 0.125, 0.5, 1.0, 2.0, 0.5)
    assert p.align_corners is True
    hash(p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.prob_flip = 0.1


def test_parse_strategy():
    assert dsa.parse_strategy(dsa.DEFAULT_STRATEGY) == (
        "color", "crop", "cutout", "flip", "scale", "rotate")
    assert dsa.parse_strategy(dsa.DIGITS_STRATEGY) == ("color", "crop", "cutout", "scale", "rotate")
    assert dsa.parse_strategy("") == () and dsa.parse_strategy("none") == ()
    with pytest.raises(ValueError, match="translate"):
        dsa.parse_strategy("color_translate")


def test_identity_strategies(key):
    x = jax.random.normal(key, (3, 8, 8, 3))
    for s in ("", "none"):
        np.testing.assert_array_equal(dsa.augment(key, x, strategy=s), x)


# ------------------------------------------------------------------ explicit ops, exact cases


def test_flip_exact():
    x = _arange_image(2, 2, 3, 1)
    out = dsa.flip(x, jnp.array([True, False]))
    np.testing.assert_array_equal(out[0, :, :, 0], [[3, 2, 1], [6, 5, 4]])
    np.testing.assert_array_equal(out[1], x[1])
    np.testing.assert_array_equal(dsa.flip(x, True)[1, :, :, 0], [[9, 8, 7], [12, 11, 10]])


def test_crop_is_integer_shift_with_zero_fill():
    x = _arange_image(1, 4, 5, 2)
    out = np.asarray(dsa.crop(x, 1, -2))
    xs = np.asarray(x)
    # out[h, w] = x[h + 1, w - 2] where that exists, else 0.
    np.testing.assert_array_equal(out[0, 0, 2], xs[0, 1, 0])
    np.testing.assert_array_equal(out[0, 2, 4], xs[0, 3, 2])
    assert np.all(out[0, :, :2] == 0) and np.all(out[0, 3, :] == 0)
    assert np.count_nonzero(out[..., 0]) == 3 * 3


def _reference_crop(x, th, tw):
    """DC's formulation: 1-pixel zero pad, clamp (index + t + 1) to [0, H + 1], gather."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = np.clip(np.arange(h) + th + 1, 0, h + 1)
    cols = np.clip(np.arange(w) + tw + 1, 0, w + 1)
    return xp[:, rows][:, :, cols]


def test_crop_matches_reference_padded_gather(key):
    x = np.asarray(jax.random.normal(key, (1, 8, 8, 3)))
    for th in range(-4, 5):
        for tw in (-4, -1, 0, 3):
            np.testing.assert_array_equal(_crop(x, th, tw), _reference_crop(x, th, tw))
    # Per-image shifts.
    xb = np.concatenate([x, x[:, ::-1]], 0)
    out = dsa.crop(xb, jnp.array([2, -3]), jnp.array([-1, 4]))
    np.testing.assert_array_equal(out[0], _reference_crop(xb[:1], 2, -1)[0])
    np.testing.assert_array_equal(out[1], _reference_crop(xb[1:], -3, 4)[0])


def test_cutout_geometry_clipped_and_shared_over_channels():
    x = jnp.ones((1, 32, 32, 3))
    out = np.asarray(dsa.cutout(x, 0, 5, 16))
    # rows 0-8 .. 0-8+15 = -8..7 -> 0..7; cols 5-8 .. 5+7 = -3..12 -> 0..12.
    zero = out == 0
    assert zero.sum() == 8 * 13 * 3
    assert zero[0, :8, :13].all() and not zero[0, 8:].any() and not zero[0, :, 13:].any()
    assert (zero[..., 0] == zero[..., 1]).all() and (zero[..., 0] == zero[..., 2]).all()
    # Interior square: exactly 16 x 16.
    assert (np.asarray(dsa.cutout(x, 16, 16, 16)) == 0).sum() == 16 * 16 * 3
    # 28 px: q = 14, centre 28 -> rows 21..34 -> 21..27.
    out28 = np.asarray(dsa.cutout(jnp.ones((1, 28, 28, 1)), 28, 14, 14))
    assert (out28 == 0).sum() == 7 * 14
    assert (out28[0, 21:, 7:21] == 0).all()


def test_color_formulas_hand_computed():
    px = jnp.array([1.0, 2.0, 6.0]).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(dsa.brightness(px, 0.25)[0, 0, 0], [1.25, 2.25, 6.25])
    # m = 3: (x - 3) * 0.5 + 3.
    np.testing.assert_allclose(dsa.saturation(px, 0.5)[0, 0, 0], [2.0, 2.5, 4.5])
    img = jnp.array([0.0, 4.0]).reshape(1, 1, 2, 1)
    # m = 2: (x - 2) * 1.5 + 2.
    np.testing.assert_allclose(dsa.contrast(img, 1.5)[0, 0, :, 0], [-1.0, 5.0])
    # Per-image factors; contrast's mean is over H, W and C of each image separately.
    two = jnp.array([[0.0, 4.0], [1.0, 3.0]]).reshape(2, 1, 2, 1)
    np.testing.assert_allclose(dsa.contrast(two, jnp.array([1.5, 0.0]))[..., 0, :, 0],
                               [[-1.0, 5.0], [2.0, 2.0]])
    # color = brightness -> saturation -> contrast.
    p = {"delta": jnp.array([0.1]), "saturation": jnp.array([1.7]), "contrast": jnp.array([0.6])}
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    expect = dsa.contrast(dsa.saturation(dsa.brightness(x, 0.1), 1.7), 0.6)
    np.testing.assert_allclose(dsa.apply_family("color", x, p), expect, rtol=1e-6)


def test_saturation_many_channels_uses_mean():
    x = jax.random.normal(jax.random.key(1), (2, 3, 3, 12))
    m = x.mean(-1, keepdims=True)
    np.testing.assert_allclose(dsa.saturation(x, 0.3), (x - m) * 0.3 + m, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ scale and rotate


@pytest.mark.parametrize("align", [True, False])
def test_scale_one_and_rotate_zero_are_identity(key, align):
    x = jax.random.normal(key, (3, 7, 9, 2))
    np.testing.assert_allclose(_scale(x, 1.0, 1.0, align_corners=align), x, atol=1e-5)
    np.testing.assert_allclose(_rotate(x, 0.0, align_corners=align), x, atol=1e-5)


def test_rotate_90_and_scale_2_exact():
    x = _arange_image(1, 5, 5, 1)
    # a = 90 deg: x_in = -y_out, y_in = x_out  =>  out[i, j] = x[j, 4 - i] (np.rot90).
    np.testing.assert_allclose(dsa.rotate(x, math.pi / 2)[0, :, :, 0],
                               np.rot90(np.asarray(x[0, :, :, 0])), atol=1e-5)
    # s = 2 about the centre (2, 2): out[i, j] = x[2i - 2, 2j - 2], zero outside.
    out = np.asarray(dsa.scale(x, 2.0, 2.0)[0, :, :, 0])
    xs = np.asarray(x[0, :, :, 0])
    expect = np.zeros((5, 5), np.float32)
    expect[1:4, 1:4] = xs[0::2, 0::2]
    np.testing.assert_allclose(out, expect, atol=1e-5)


def _reference_affine(x, theta, align):
    """PyTorch affine_grid + grid_sample(bilinear, zeros), written out pixel by pixel."""
    n, h, w, c = x.shape
    out = np.zeros_like(x)

    def norm(i, size):  # affine_grid's base coordinate of output pixel i
        if size == 1:
            return 0.0 if not align else -1.0
        v = -1.0 + 2.0 * i / (size - 1)
        return v if align else v * (size - 1) / size

    def unnorm(v, size):  # grid_sample's pixel coordinate
        return (v + 1) / 2 * (size - 1) if align else ((v + 1) * size - 1) / 2

    for b in range(n):
        t = theta[b]
        for i in range(h):
            for j in range(w):
                xn, yn = norm(j, w), norm(i, h)
                px = unnorm(t[0][0] * xn + t[0][1] * yn + t[0][2], w)
                py = unnorm(t[1][0] * xn + t[1][1] * yn + t[1][2], h)
                x0, y0 = math.floor(px), math.floor(py)
                for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                    for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                        if 0 <= yy < h and 0 <= xx < w:
                            out[b, i, j] += wy * wx * x[b, yy, xx]
    return out


@pytest.mark.parametrize("align", [True, False])
def test_rotate_and_scale_match_direct_bilinear(key, align):
    x = np.asarray(jax.random.normal(key, (2, 5, 7, 2)), np.float64)  # non-square: flag matters
    ang = np.array([0.3, -0.2])
    th_rot = [[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]] for a in ang]
    np.testing.assert_allclose(_rotate(jnp.float32(x), jnp.array(ang), align_corners=align),
                               _reference_affine(x, th_rot, align), atol=1e-5)
    sx, sy = np.array([1.15, 0.9]), np.array([0.85, 1.2])
    th_sc = [[[a, 0.0, 0.0], [0.0, b, 0.0]] for a, b in zip(sx, sy)]
    np.testing.assert_allclose(
        _scale(jnp.float32(x), jnp.array(sx), jnp.array(sy), align_corners=align),
        _reference_affine(x, th_sc, align), atol=1e-5)


def test_align_corners_matters_only_for_non_square(key):
    sq = jax.random.normal(key, (1, 8, 8, 1))
    np.testing.assert_allclose(_rotate(sq, 0.2, align_corners=True),
                               _rotate(sq, 0.2, align_corners=False), atol=1e-5)
    rect = jax.random.normal(key, (1, 6, 10, 1))
    diff = jnp.abs(_rotate(rect, 0.2, align_corners=True) - _rotate(rect, 0.2, align_corners=False))
    assert float(diff.max()) > 1e-2


def test_augment_honours_align_corners_param(key):
    x = jax.random.normal(key, (4, 6, 10, 1))
    k = jax.random.key(3)
    for align in (True, False):
        p = dsa.DSAParams(align_corners=align)
        drawn = dsa.sample_params(jax.random.split(k)[1], "rotate", 4, (6, 10), p)
        np.testing.assert_allclose(
            _aug(k, x, strategy="rotate", params=p),
            _rotate(x, drawn["angle"], align_corners=align),
            atol=1e-5)  # the same formula, fused differently by XLA


# ------------------------------------------------------------------ random draws


def test_sample_params_ranges(key):
    n = 4000
    p = {f: dsa.sample_params(jax.random.fold_in(key, i), f, n, (32, 32))
         for i, f in enumerate(dsa.FAMILIES)}
    c = p["color"]
    assert -0.5 <= c["delta"].min() and c["delta"].max() < 0.5
    assert 0.0 <= c["saturation"].min() and c["saturation"].max() < 2.0
    assert 0.5 <= c["contrast"].min() and c["contrast"].max() < 1.5
    # Three independent draws.
    assert abs(np.corrcoef(c["delta"], c["saturation"])[0, 1]) < 0.1
    for k in ("shift_h", "shift_w"):
        assert set(np.unique(p["crop"][k]).tolist()) == set(range(-4, 5))
    for k in ("center_h", "center_w"):  # q = 16 is even: centres 0..32 inclusive
        assert set(np.unique(p["cutout"][k]).tolist()) == set(range(0, 33))
    assert abs(float(p["flip"]["do_flip"].mean()) - 0.5) < 0.05
    for k in ("sx", "sy"):
        assert 1 / 1.2 <= p["scale"][k].min() and p["scale"][k].max() <= 1.2
    assert abs(np.corrcoef(p["scale"]["sx"], p["scale"]["sy"])[0, 1]) < 0.1
    ang = np.asarray(p["rotate"]["angle"])
    assert -math.radians(15) <= ang.min() and ang.max() <= math.radians(15)
    assert ang.max() > math.radians(14.5) and ang.min() < -math.radians(14.5)


def test_sample_params_28px_and_shift_sizes(key):
    cut = dsa.sample_params(key, "cutout", 3000, (28, 28))
    assert set(np.unique(cut["center_h"]).tolist()) == set(range(0, 29))  # q = 14
    crop = dsa.sample_params(key, "crop", 3000, (128, 128))
    assert crop["shift_h"].min() == -16 and crop["shift_h"].max() == 16


def test_cutout_family_masks(key):
    x = jnp.ones((64, 32, 32, 3))
    out = np.asarray(dsa.augment(key, x, strategy="cutout"))
    for img in out:
        zero = img == 0
        assert (zero[..., :1] == zero).all()  # same mask on every channel
        rows = np.where(zero[..., 0].any(1))[0]
        cols = np.where(zero[..., 0].any(0))[0]
        assert len(rows) <= 16 and len(cols) <= 16
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # a rectangle
        if 0 < rows.min() and rows.max() < 31:
            assert len(rows) == 16


def test_family_choice_is_uniform():
    # On a constant image flip is the identity and cutout always zeroes pixels.
    x = jnp.ones((1, 8, 8, 1))
    keys = jax.random.split(jax.random.key(0), 400)
    one = lambda k: dsa.augment(k, x, strategy="flip_cutout", siamese=True)  # noqa: E731
    outs = jax.jit(jax.vmap(one))(keys)
    frac = float(jnp.mean(jnp.any(outs == 0, axis=(1, 2, 3, 4))))
    assert 0.4 < frac < 0.6


def test_digits_strategy_never_flips():
    x = _arange_image(1, 8, 8, 1)
    keys = jax.random.split(jax.random.key(1), 96)
    outs = jax.jit(jax.vmap(lambda k: dsa.augment(k, x, strategy=dsa.DIGITS_STRATEGY,
                                                  siamese=True)))(keys)
    flipped = x[:, :, ::-1]
    assert not bool(jnp.any(jnp.all(jnp.isclose(outs, flipped[None]), axis=(1, 2, 3, 4))))


# ------------------------------------------------------------------ siamese vs per-sample


def _siamese_pair(strategy):
    """(augment(real + syn), augment(syn)) with one key, as one jitted program."""
    def run(k, real, syn):
        f = lambda x: dsa.augment(k, x, strategy=strategy, siamese=True)  # noqa: E731
        return f(jnp.concatenate([real, syn])), f(syn)
    return jax.jit(jax.vmap(run, in_axes=(0, None, 0)))


def _check_siamese(strategy, key, n_keys):
    img = jax.random.normal(key, (1, 16, 16, 3))
    real = jnp.tile(img, (5, 1, 1, 1))  # 5 copies of one image
    syn = jax.random.normal(jax.random.fold_in(key, 2), (n_keys, 3, 16, 16, 3))
    keys = jax.random.split(jax.random.fold_in(key, 1), n_keys)
    both, s = _siamese_pair(strategy)(keys, real, syn)
    # Every image of a batch gets the same transform ...
    np.testing.assert_array_equal(both[:, :5], jnp.broadcast_to(both[:, :1], both[:, :5].shape))
    # ... and a synthetic batch (3) augmented on its own with the same key gets the identical
    # transform as inside the bigger batch (ops act per image, so only the draws could differ).
    np.testing.assert_allclose(both[:, 5:], s, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", dsa.FAMILIES)
def test_siamese_same_transform_for_all_images_and_batches(key, family):
    _check_siamese(family, key, 3)


def test_siamese_full_strategy_vmapped_over_keys(key):
    # As the DM/DC losses call it: vmapped over per-class keys (lax.switch becomes a select).
    _check_siamese(dsa.DEFAULT_STRATEGY, key, 12)


@pytest.mark.parametrize("family", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_per_sample_draws_differ_across_images(key, family):
    img = jax.random.normal(key, (1, 16, 16, 3))
    out = np.asarray(_aug(key, jnp.tile(img, (16, 1, 1, 1)), strategy=family, siamese=False))
    distinct = len({o.tobytes() for o in out})
    assert distinct >= (2 if family == "flip" else 8)


def test_augment_preserves_dtype_and_shape(key):
    x = jax.random.normal(key, (4, 8, 8, 3)).astype(jnp.bfloat16)
    # lax.switch requires every branch (family) to return the same dtype and shape.
    y = _aug(key, x, strategy=dsa.DEFAULT_STRATEGY)
    assert y.dtype == jnp.bfloat16 and y.shape == x.shape


# ------------------------------------------------------------------ gradients


def test_flip_and_crop_gradients_exact(key):
    x = jax.random.normal(key, (2, 6, 6, 2))
    w = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    g = jax.grad(lambda x: jnp.sum(w * dsa.flip(x, jnp.array([True, False]))))(x)
    np.testing.assert_array_equal(g, dsa.flip(w, jnp.array([True, False])))
    # Transpose of a zero-fill shift by t is the zero-fill shift by -t.
    g = jax.grad(lambda x: jnp.sum(w * dsa.crop(x, 2, -1)))(x)
    np.testing.assert_array_equal(g, dsa.crop(w, -2, 1))


@pytest.mark.parametrize("siamese", [False, True])
def test_augment_gradient_matches_linearisation(key, siamese):
    """Every DSA op is affine in the images, so <grad, v> = <w, f(x + v) - f(x)> exactly."""
    x = jax.random.normal(key, (4, 12, 12, 3))
    w = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    v = jax.random.normal(jax.random.fold_in(key, 2), x.shape)

    @jax.jit
    def both_sides(k):
        f = lambda x: dsa.augment(k, x, siamese=siamese)  # noqa: E731
        g = jax.grad(lambda x: jnp.sum(w * f(x)))(x)
        return jnp.vdot(g, v), jnp.vdot(w, f(x + v) - f(x))

    # 24 keys: every family is chosen several times (6 families, uniform choice).
    for i in range(24):
        lhs, rhs = both_sides(jax.random.fold_in(key, 10 + i))
        assert float(lhs) == pytest.approx(float(rhs), rel=1e-4, abs=1e-3)
