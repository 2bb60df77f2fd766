"""Closed-form last-layer gradients / diagonal Hessians against autodiff, in the spec's layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.select import features as F

N, D, C = 7, 5, 4


def _head(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jax.random.normal(k1, (N, D))
    w = jax.random.normal(k2, (C, D))
    b = jax.random.normal(k3, (C,))
    y = jax.random.randint(k4, (N,), 0, C)
    return x, w, b, y


def _ce(theta, x, y, softmax_before_ce=False):
    """CE of one sample as a function of theta = [b, vec(W)] (the spec's layout)."""
    b, w = theta[:C], theta[C:].reshape(C, D)
    z = w @ x + b
    if softmax_before_ce:
        z = jax.nn.softmax(z)
    return -jax.nn.log_softmax(z)[y]


def _theta(w, b):
    return jnp.concatenate([b, w.reshape(-1)])


@pytest.mark.parametrize("softmax_before_ce", [False, True])
def test_grad_matches_autodiff(key, softmax_before_ce):
    x, w, b, y = _head(key)
    logits = x @ w.T + b
    g = F.last_layer_grad(x, logits, y, softmax_before_ce=softmax_before_ce)
    theta = _theta(w, b)
    ref = jax.jit(jax.vmap(jax.grad(_ce), in_axes=(None, 0, 0, None)), static_argnums=3)(
        theta, x, y, softmax_before_ce)
    assert g.shape == (N, C * (D + 1))
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_softmax_before_ce_differs(key):
    x, w, b, y = _head(key)
    z = x @ w.T + b
    assert not np.allclose(F.ce_residual(z, y), F.ce_residual(z, y, softmax_before_ce=True))


def test_diag_hessian_matches_autodiff(key):
    x, w, b, y = _head(key)
    logits = x @ w.T + b
    h = F.last_layer_diag_hessian(x, logits)
    theta = _theta(w, b)
    full = jax.jit(jax.vmap(jax.hessian(_ce), in_axes=(None, 0, 0)))(theta, x, y)  # [N, P, P]
    ref = jnp.diagonal(full, axis1=1, axis2=2)
    np.testing.assert_allclose(h, ref, rtol=1e-5, atol=1e-6)


def test_layout_bias_first_then_row_major():
    # r = (1, 2), x = (10, 20, 30): [r0, r1, r0*x0, r0*x1, r0*x2, r1*x0, r1*x1, r1*x2]
    out = F.kron_layout(jnp.array([[1.0, 2.0]]), jnp.array([[10.0, 20.0, 30.0]]))
    np.testing.assert_array_equal(out[0], [1, 2, 10, 20, 30, 20, 40, 60])


def test_reference_batch_scale_values():
    s = np.asarray(F.reference_batch_scale(10, 12, 4))
    np.testing.assert_allclose(s, [0.25] * 8 + [0.5] * 2 + [0.0] * 2)
    # CIFAR-10 class: 5000 = 39 * 128 + 8, the last 8 samples get 16x the scale of the others.
    s = np.asarray(F.reference_batch_scale(5000, 5000, 128))
    np.testing.assert_allclose(s[:4992], 1 / 128)
    np.testing.assert_allclose(s[4992:], 1 / 8)


def test_reference_scale_is_batch_mean_autodiff(key):
    """Scaled per-sample gradients of a batch sum to the autodiff gradient of its mean loss."""
    x, w, b, y = _head(key)
    theta = _theta(w, b)
    scale = F.reference_batch_scale(N, N, 3)  # batches of 3, 3, 1
    g = F.last_layer_grad(x, x @ w.T + b, y, scale=scale)
    h = F.last_layer_diag_hessian(x, x @ w.T + b, scale=scale)
    batch = np.arange(N) // 3

    def batch_means(t):  # [3] mean loss of each batch
        ce = jax.vmap(_ce, in_axes=(None, 0, 0))(t, x, y)
        return jax.ops.segment_sum(ce, batch, 3) / jnp.bincount(batch, length=3)

    jac = jax.jit(jax.jacobian(batch_means))(theta)  # [3, P]
    hess = jax.jit(jax.hessian(batch_means))(theta)  # [3, P, P]
    for i in range(3):
        np.testing.assert_allclose(g[batch == i].sum(0), jac[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h[batch == i].sum(0), jnp.diag(hess[i]), rtol=1e-5,
                                   atol=1e-6)


def test_kron_gram_norms_distances(key):
    x, w, b, y = _head(key)
    z = x @ w.T + b
    r = F.ce_residual(z, y)
    g = np.asarray(F.last_layer_grad(x, z, y), np.float64)
    np.testing.assert_allclose(F.kron_gram(r, x, r, x), g @ g.T, rtol=1e-5, atol=1e-5)
    sq = F.kron_sq_norms(r, x)
    np.testing.assert_allclose(sq, (g * g).sum(1), rtol=1e-5)
    d = F.pairwise_kron_distances(r, x, sq, r, x, sq)
    ref = np.linalg.norm(g[:, None] - g[None], axis=-1)
    off = ~np.eye(N, dtype=bool)
    np.testing.assert_allclose(np.asarray(d)[off], ref[off], rtol=1e-4)
    assert np.all(np.asarray(d) >= 0) and np.all(np.isfinite(d))


def test_hessian_variance_matches_numpy_two_pass(key):
    k1, k2 = jax.random.split(key)
    n, d, c = 40, 6, 3
    x = jax.nn.relu(jax.random.normal(k1, (n, d)))
    z = 2.0 * jax.random.normal(k2, (n, c))
    valid = jnp.arange(n) < 33  # padded pool: the last 7 rows must not count
    a = F.ce_curvature(z) * 0.01
    var = F.diag_hessian_variance(a, x, valid)
    h = np.asarray(F.kron_layout(a, x * x))[:33]
    ref = np.var(h, axis=0)  # ddof 0, as the reference's hessian_pick_var
    np.testing.assert_allclose(var, ref, rtol=1e-4, atol=1e-12)
    k = 10
    top = np.asarray(F.top_variance_coordinates(var, k))
    assert list(top) == list(np.argsort(-ref, kind="stable")[:k])
    h_all = np.asarray(F.kron_layout(a, x * x))  # padded rows included
    np.testing.assert_allclose(F.diag_hessian_coordinates(a, x, top), h_all[:, top], rtol=1e-6)


def test_top_variance_ties_take_lower_index():
    var = jnp.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert list(np.asarray(F.top_variance_coordinates(var, 3))) == [1, 2, 4]


def test_pairwise_l1_matches_broadcast(key):
    k1, k2 = jax.random.split(key)
    a = jax.random.normal(k1, (9, 13))
    b = jax.random.normal(k2, (11, 13))
    ref = np.abs(np.asarray(a)[:, None] - np.asarray(b)[None]).sum(-1)
    for unroll in (1, 4, 10):  # 13 coordinates: remainders included
        np.testing.assert_allclose(F.pairwise_l1_distances(a, b, unroll=unroll), ref, rtol=1e-5)
