"""ZCA whitening (`jaxdiff.data.zca`) against closed forms."""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data


def _correlated_images(n=60, h=2, w=3, c=2, seed=0):
    rng = np.random.default_rng(seed)
    d = h * w * c
    mix = rng.normal(size=(d, d)) * np.linspace(0.1, 2.0, d)  # unequal variances, correlated
    return (rng.normal(size=(n, d)) @ mix + rng.normal(size=d)).reshape(n, h, w, c)


def _cov(flat):
    xc = flat - flat.mean(0)
    return xc.T @ xc / (len(flat) - 1)


def _flat_chw(x):
    return np.transpose(x, (0, 3, 1, 2)).reshape(len(x), -1)


def test_zca_whitened_covariance_closed_form():
    x = _correlated_images()
    reg = 0.1
    zca = data.fit_zca(x, reg=reg)
    y = np.asarray(data.zca_apply(zca, x), np.float64)
    sigma = _cov(_flat_chw(x))
    # cov(xT) = T Sigma T = U diag(S / (S + reg)) U^T = Sigma (Sigma + reg I)^-1.
    expected = np.linalg.solve(sigma + reg * np.eye(len(sigma)), sigma).T
    np.testing.assert_allclose(_cov(_flat_chw(y)), expected, atol=2e-5)
    np.testing.assert_allclose(_flat_chw(y).mean(0), 0.0, atol=1e-5)
    # reg = 0 on full-rank data whitens exactly: identity covariance.
    y0 = np.asarray(data.zca_apply(data.fit_zca(x, reg=0.0), x), np.float64)
    np.testing.assert_allclose(_cov(_flat_chw(y0)), np.eye(len(sigma)), atol=2e-4)


def test_zca_inverse_reproduces_inputs():
    x = _correlated_images(seed=1)
    zca = data.fit_zca(x, reg=0.1)
    back = data.zca_invert(zca, data.zca_apply(zca, x))
    np.testing.assert_allclose(np.asarray(back), x, atol=2e-4)
    np.testing.assert_allclose(zca.inverse.astype(np.float64) @ zca.whiten, np.eye(12), atol=1e-5)
    np.testing.assert_allclose(zca.whiten, zca.whiten.T, atol=1e-6)


def test_zca_matrices_are_in_chw_order():
    x = _correlated_images(seed=2)
    zca = data.fit_zca(x, reg=0.1)

    def direct(flat):  # the reference recipe on an already-flattened [N, D] matrix
        s, u = np.linalg.eigh(_cov(flat))
        return flat.mean(0), (u / np.sqrt(s + 0.1)) @ u.T

    mean_chw, t_chw = direct(_flat_chw(x))  # NCHW flattening, as kornia/MTT see the data
    np.testing.assert_allclose(zca.mean, mean_chw, atol=1e-6)
    np.testing.assert_allclose(zca.whiten, t_chw, atol=1e-5)
    _, t_hwc = direct(x.reshape(len(x), -1))  # NHWC flattening: the same transform, permuted
    assert not np.allclose(zca.whiten, t_hwc, atol=1e-3)  # ...so this test tells them apart
    # Whitened images computed directly on NCHW data, brought back to NHWC.
    y_chw = ((_flat_chw(x) - mean_chw) @ t_chw).reshape(x.shape[0], 2, 2, 3)
    y_direct = y_chw.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(data.zca_apply(zca, x)), y_direct, atol=1e-4)


def test_zca_errors():
    with pytest.raises(ValueError, match="at least 2"):
        data.fit_zca(np.zeros((1, 2, 2, 1)))
    zca = data.fit_zca(_correlated_images())
    with pytest.raises(ValueError, match="12 features"):
        data.zca_apply(zca, jnp.zeros((1, 3, 3, 2)))
