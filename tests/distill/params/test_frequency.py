"""FreD: DCT conventions against scipy, mask selection, decode semantics, learning-rate equivalence."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.fft

from jaxdiff.distill.params import (
    coefficient_scale,
    get_parameterisation,
    ortho_learning_rates,
    select_frequencies,
    select_real_images,
)
from jaxdiff.distill.params import dct


def _normal(shape, seed=0):
    """Test data from numpy (JAX's threefry costs ~1 s of XLA compile per new shape on CPU)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- DCT conventions
@pytest.mark.parametrize("n", [1, 4, 7, 32])
@pytest.mark.parametrize("norm", [None, "ortho"])
def test_dct_matrix_is_scipy_dct_of_identity(n, norm):
    ref = scipy.fft.dct(np.eye(n), type=2, norm=norm, axis=0)
    np.testing.assert_allclose(dct.dct_matrix(n, norm), ref, rtol=0, atol=1e-12 * n)
    # exact inverse, and for the unnormalised one the closed form D^T diag(1/2, 1, ..) / (2n)
    inv = dct.idct_matrix(n, norm)
    np.testing.assert_allclose(inv @ dct.dct_matrix(n, norm), np.eye(n), atol=1e-12 * n)
    np.testing.assert_allclose(inv, scipy.fft.idct(np.eye(n), type=2, norm=norm, axis=0), atol=1e-12)
    if norm is None:
        w = np.diag([0.5] + [1.0] * (n - 1))
        np.testing.assert_allclose(inv, ref.T @ w / (2 * n), atol=1e-15)


def test_unnormalised_is_row_scaled_orthonormal():
    n = 8
    s = dct.dct_scale(n)
    np.testing.assert_allclose(s[:2], [2 * np.sqrt(8), np.sqrt(16)])
    np.testing.assert_allclose(dct.dct_matrix(n), s[:, None] * dct.dct_matrix(n, "ortho"), atol=1e-12)


@pytest.mark.parametrize("norm", [None, "ortho"])
def test_dctn_matches_scipy_and_round_trips(key, norm):
    x = _normal((3, 8, 6, 2))  # NHWC, non-square on purpose
    got = dct.dctn(x, num_axes=2, first_axis=1, norm=norm)
    ref = scipy.fft.dctn(np.asarray(x, np.float64), type=2, norm=norm, axes=(1, 2))
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * scale)
    np.testing.assert_allclose(dct.idctn(got, 2, 1, norm), x, rtol=0, atol=2e-6)
    # 3-D (voxels): three passes
    v = _normal((2, 4, 5, 6, 1), 1)
    ref3 = scipy.fft.dctn(np.asarray(v, np.float64), type=2, norm=norm, axes=(1, 2, 3))
    np.testing.assert_allclose(dct.dctn(v, 3, 1, norm), ref3, atol=2e-6 * np.abs(ref3).max())
    np.testing.assert_allclose(dct.idctn(dct.dctn(v, 3, 1, norm), 3, 1, norm), v, atol=2e-6)


def test_unnormalised_dc_term_is_4_n2_mean(key):
    """fred.md §2.2: the unnormalised 2-D DC coefficient is 4 N^2 * mean."""
    x = np.random.default_rng(0).uniform(size=(1, 32, 32, 1)).astype(np.float32)
    f = dct.dctn(x, 2, 1, None)
    np.testing.assert_allclose(f[0, 0, 0, 0], 4 * 32**2 * np.mean(x, dtype=np.float64), rtol=1e-5)


def test_bad_norm():
    with pytest.raises(ValueError, match="unknown DCT norm 'forward'"):
        dct.dct_matrix(4, "forward")
    with pytest.raises(ValueError, match="unknown dct_norm 'backward'"):
        get_parameterisation("fred", ipc=1, k=4, dct_norm="backward")


# --------------------------------------------------------------------------- mask selection
def _numpy_mask(images, k):
    """fred.md §2.4 with scipy: channel-mean unnormalised DCT, per-position variance, top-K."""
    imgs = np.asarray(images, np.float64)  # [C, n, H, W, Ch]
    coeffs = scipy.fft.dctn(imgs.mean(-1), type=2, norm=None, axes=(2, 3))
    c, n = coeffs.shape[:2]
    flat = coeffs.reshape(c, n, -1)
    score = flat.var(axis=1, ddof=1) if n > 1 else flat[:, 0] ** 2
    return np.argsort(-score, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("n_pc", [5, 1])
def test_mask_is_top_k_variance_of_channel_mean_dct(key, n_pc):
    imgs = _normal((3, n_pc, 8, 8, 3))
    got = np.asarray(select_frequencies(imgs, 10))
    np.testing.assert_array_equal(got, _numpy_mask(imgs, 10))


# --------------------------------------------------------------------------- the parameterisation
def _projection(img, positions, shape):
    """Real image projected onto the selected frequencies (orthonormal DCT, scipy)."""
    f = scipy.fft.dctn(np.asarray(img, np.float64), norm="ortho", axes=(0, 1))
    mask = np.zeros(shape[0] * shape[1])
    mask[np.asarray(positions)] = 1
    return scipy.fft.idctn(f * mask.reshape(shape[0], shape[1], 1), norm="ortho", axes=(0, 1))


@pytest.mark.parametrize("norm", [None, "ortho"])
def test_init_decode_is_projection_of_its_real_image(key, norm):
    """fred.md parity 3, 4: the mask of each class is that of its init images; an untrained
    instance decodes to its real image projected onto its class's K frequencies."""
    real = _normal((2, 9, 8, 8, 3))
    param = get_parameterisation("fred", ipc=1, k=16, dct_norm=norm)  # N_pc = 64/16 = 4
    params, static = param.init(key, real)
    assert params["coefficients"].shape == (8, 16, 3)
    assert param.storage_floats(params, static) == 8 * 16 * 3  # = C * budget = 2 * 192
    np.testing.assert_array_equal(param.labels(static), [0] * 4 + [1] * 4)
    init_imgs = select_real_images(key, real, 4)
    np.testing.assert_array_equal(
        static["positions"], _numpy_mask(init_imgs.reshape(2, 4, 8, 8, 3), 16)
    )
    out = param.decode(params, static)
    for i in range(8):
        ref = _projection(init_imgs[i], static["positions"][i // 4], (8, 8))
        np.testing.assert_allclose(out[i], ref, rtol=0, atol=1e-5)
    # not the image itself: K < H*W loses detail
    assert np.abs(np.asarray(out) - np.asarray(init_imgs)).max() > 0.1


@pytest.mark.parametrize("norm", [None, "ortho"])
def test_compact_decode_equals_dense_mask_decode(key, norm):
    """fred.md parity 5: scatter decode == reference's IDCT(mask * dense coefficients)."""
    real = _normal((2, 6, 8, 6, 1))  # grayscale, non-square
    param = get_parameterisation("fred", ipc=1, k=12, dct_norm=norm)  # N_pc = 4
    params, static = param.init(key, real)
    np.savez(io.BytesIO(), **static)  # every frozen value is one plain array (pipelines save it)
    # perturb the coefficients so we are not just testing the init
    params = {"coefficients": params["coefficients"] + _normal((8, 12, 1), 1)}
    dense = np.zeros((8, 8 * 6, 1))
    for i in range(8):
        dense[i, np.asarray(static["positions"][i // 4])] = np.asarray(params["coefficients"][i])
    dense_full = dense + _normal(dense.shape, 2) * (dense == 0)  # junk outside
    mask = (dense != 0).astype(np.float64)
    ref = scipy.fft.idctn((dense_full * mask).reshape(8, 8, 6, 1), type=2, norm=norm, axes=(1, 2))
    idx = jnp.array([7, 2, 2, 0])
    out = jax.jit(param.decode)(params, static, idx)
    np.testing.assert_allclose(out, ref[np.array([7, 2, 2, 0])], rtol=0, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_array_equal(out[1], out[2])


def test_masks_identical_across_norms_and_voxels(key):
    real = _normal((2, 5, 4, 4, 4, 1))  # 3-D volumes
    a = get_parameterisation("fred", ipc=1, k=16, dct_norm=None)  # N_pc = 64/16 = 4
    b = get_parameterisation("fred", ipc=1, k=16, dct_norm="ortho")
    (pa, sa), (pb, sb) = a.init(key, real), b.init(key, real)
    np.testing.assert_array_equal(sa["positions"], sb["positions"])
    # c_unnormalised = r * c_ortho, and both decode to the same volume
    np.testing.assert_allclose(pa["coefficients"], coefficient_scale(sa) * pb["coefficients"], rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(a.decode(pa, sa), b.decode(pb, sb), atol=1e-5)
    assert a.decode(pa, sa).shape == (8, 4, 4, 4, 1)


def test_fred_bad_inputs(key):
    with pytest.raises(ValueError, match="class 1 has 3 real images, but fred needs 4 distinct"):
        get_parameterisation("fred", ipc=1, k=16).init(key, [jnp.zeros((5, 8, 8, 3)), jnp.zeros((3, 8, 8, 3))])
    with pytest.raises(ValueError, match="cannot select k=65 coefficients per channel from a 8x8 image"):
        get_parameterisation("fred", ipc=1, k=65).init(key, jnp.zeros((2, 4, 8, 8, 3)))


# --------------------------------------------------------------------------- learning rates
def _train(param, params, static, target, opt, steps):
    def loss(p):
        return 0.5 * jnp.sum(jnp.square(param.decode(p, static) - target))

    @jax.jit
    def run(params):
        def step(carry, _):
            p, state = carry
            upd, state = opt.update(jax.grad(loss)(p), state, p)
            return (optax.apply_updates(p, upd), state), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return param.decode(p, static)

    return run(params)


def _elementwise(rates):
    """optax transform multiplying updates by -rates (a per-coefficient learning rate)."""
    return optax.stateless(lambda u, p: jax.tree.map(lambda x: -rates * x, u))


def _setup(key):
    real = _normal((2, 6, 8, 8, 3))
    target = _normal((8, 8, 8, 3), 7)
    un = get_parameterisation("fred", ipc=1, k=16, dct_norm=None)
    on = get_parameterisation("fred", ipc=1, k=16, dct_norm="ortho")
    return un, un.init(key, real), on, on.init(key, real), target


def test_sgd_lr_equivalence(key):
    """SGD(momentum 0.5) on unnormalised coefficients with lr == SGD on orthonormal ones with
    the per-coefficient rate lr / r^2; a single scalar rescale lr / (4 N^2) is not."""
    un, (pu, su), on, (po, so), target = _setup(key)
    lr, steps = 60.0, 4  # at 8 px, r^2 is 256 (k,l > 0) .. 1024 (0,0): effective rates 0.06..0.23
    img_u = _train(un, pu, su, target, optax.sgd(lr, momentum=0.5), steps)
    rates = ortho_learning_rates(lr, so, "sgd")
    # fred.md §4 at N = 8: lr / (2N)^2 = lr / 256 for k, l > 0, half on row/column 0, a
    # quarter at (0, 0)
    got = np.unique(np.round(lr / np.asarray(rates)).astype(int))
    assert set(got.tolist()) <= {256, 512, 1024} and 256 in got
    img_o = _train(on, po, so, target, optax.chain(optax.trace(decay=0.5), _elementwise(rates)), steps)
    start = un.decode(pu, su)
    moved = np.abs(np.asarray(img_u - start)).max()
    assert moved > 0.5  # the steps change the images a lot
    np.testing.assert_allclose(img_o, img_u, rtol=0, atol=1e-5 * moved)
    scalar = _train(on, po, so, target, optax.sgd(lr / (4 * 8**2), momentum=0.5), steps)
    assert np.abs(np.asarray(scalar - img_u)).max() > 0.01 * moved


def test_adam_lr_equivalence(key):
    """Adam is per-coordinate scale invariant (eps = 0): Adam(lr) on unnormalised coefficients
    == Adam on orthonormal ones with per-coefficient rate lr / r; the same scalar lr is not."""
    un, (pu, su), on, (po, so), target = _setup(key)
    lr, steps = 3.0, 4
    img_u = _train(un, pu, su, target, optax.adam(lr, eps=0.0), steps)
    rates = ortho_learning_rates(lr, so, "adam")
    img_o = _train(on, po, so, target, optax.chain(optax.scale_by_adam(eps=0.0), _elementwise(rates)), steps)
    moved = np.abs(np.asarray(img_u - un.decode(pu, su))).max()
    assert moved > 0.5
    np.testing.assert_allclose(img_o, img_u, rtol=0, atol=1e-4 * moved)
    same_lr = _train(on, po, so, target, optax.adam(lr, eps=0.0), steps)
    assert np.abs(np.asarray(same_lr - img_u)).max() > 0.5 * moved
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        ortho_learning_rates(lr, so, "rmsprop")


def test_spec_rate_factors_at_32px():
    """fred.md §4: ÷4096 for k, l > 0, ÷8192 on row/column 0, ÷16384 at (0, 0) for 32 px."""
    static = {
        "labels": jnp.zeros(1, jnp.int32),
        "positions": jnp.array([[0, 1, 32, 33, 32 * 32 - 1]], jnp.int32),  # (0,0) (0,1) (1,0) (1,1) (31,31)
        "idct_0": jnp.eye(32),
        "idct_1": jnp.eye(32),
    }
    r2 = np.square(np.asarray(coefficient_scale(static))[0, :, 0])
    np.testing.assert_allclose(r2, [16384, 8192, 8192, 4096, 4096], rtol=1e-6)
