"""Pixel parameterisation and the shared init helpers (distinct real images, labels, gather)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.distill.params import (
    class_sorted_labels,
    get_parameterisation,
    select_real_images,
    take_instances,
)


def _real(classes=3, n=7, shape=(4, 5, 3)):
    # numpy data: JAX's threefry costs ~1 s of XLA compile per new shape on CPU
    return np.random.default_rng(0).standard_normal((classes, n, *shape)).astype(np.float32)


def _match_rows(chosen, pool):
    """Index in `pool` of each image of `chosen` (exact match), -1 if absent."""
    c = np.asarray(chosen).reshape(len(chosen), -1)
    p = np.asarray(pool).reshape(len(pool), -1)
    eq = (c[:, None, :] == p[None, :, :]).all(-1)
    return np.where(eq.any(1), eq.argmax(1), -1)


def test_select_real_images_distinct_per_class_and_deterministic(key):
    real = _real()
    picks = select_real_images(key, real, 4)
    assert picks.shape == (12, 4, 5, 3)
    for c in range(3):
        idx = _match_rows(picks[4 * c : 4 * c + 4], real[c])
        assert (idx >= 0).all() and len(set(idx.tolist())) == 4  # real images of class c, distinct
        # the references' rule: the first N_pc of a permutation drawn for this class
        perm = jax.random.permutation(jax.random.fold_in(key, c), 7)[:4]
        np.testing.assert_array_equal(idx, np.asarray(perm))
    np.testing.assert_array_equal(picks, select_real_images(key, real, 4))
    assert not np.array_equal(picks, select_real_images(jax.random.fold_in(key, 1), real, 4))
    # a ragged list of classes gives the same choice for the classes it shares
    ragged = [real[0], real[1], real[2][:5]]
    ragged_picks = select_real_images(key, ragged, 4)
    np.testing.assert_array_equal(ragged_picks[:8], picks[:8])
    assert (_match_rows(ragged_picks[8:], real[2][:5]) >= 0).all()


def test_too_few_real_images(key):
    real = _real(n=3)
    with pytest.raises(ValueError, match="class 0 has 3 real images, but pixel needs 4 distinct"):
        get_parameterisation("pixel", ipc=4).init(key, real)


def test_pixel_real_init_decode_labels_storage(key):
    real = _real()
    param = get_parameterisation("pixel", ipc=2)
    params, static = param.init(key, real)
    np.testing.assert_array_equal(params["images"], select_real_images(key, real, 2))
    np.testing.assert_array_equal(param.labels(static), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(param.decode(params, static), params["images"])
    idx = jnp.array([5, 0, 3])
    out = jax.jit(param.decode)(params, static, idx)
    np.testing.assert_array_equal(out, params["images"][np.array([5, 0, 3])])
    np.testing.assert_array_equal(param.labels(static, idx), [2, 0, 1])
    # storage = every pixel = exactly the budget, ipc * C * prod(shape)
    assert param.storage_floats(params, static) == 2 * 3 * 4 * 5 * 3
    assert param.plan((4, 5, 3), 3).total_floats == param.storage_floats(params, static)


def test_pixel_noise_init_is_per_instance_standard_normal(key):
    real = _real(shape=(6, 6, 1))  # grayscale
    params, static = get_parameterisation("pixel", ipc=3, init="noise").init(key, real)
    imgs = params["images"]
    assert imgs.shape == (9, 6, 6, 1)
    for i in (0, 4, 8):  # instance i is drawn from fold_in(key, i): independent of N
        np.testing.assert_array_equal(imgs[i], jax.random.normal(jax.random.fold_in(key, i), (6, 6, 1)))
    np.testing.assert_array_equal(static["labels"], class_sorted_labels(3, 3))


def test_take_instances_gathers_every_leaf():
    tree = {"a": jnp.arange(10).reshape(5, 2), "b": jnp.arange(5)}
    out = take_instances(tree, jnp.array([4, 1]))
    np.testing.assert_array_equal(out["a"], [[8, 9], [2, 3]])
    np.testing.assert_array_equal(out["b"], [4, 1])
    assert take_instances(tree, None) is tree


def test_bad_pixel_inputs(key):
    with pytest.raises(ValueError, match="unknown pixel init 'zeros'; valid: real, noise"):
        get_parameterisation("pixel", ipc=1, init="zeros")
    with pytest.raises(ValueError, match=r"real_by_class must be \[C, n_real, \*spatial, channels\]"):
        get_parameterisation("pixel", ipc=1).init(key, jnp.zeros((3, 4, 4)))
