"""LCMat-C (inferred design): reduction to gradient matching, the closed-form ascent
perturbation, and image gradients against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.distill import curvature as K
from jaxdiff.distill.losses import gradient_matching_loss

C, N_SYN, N_REAL, H, W, CH = 3, 2, 5, 3, 3, 1


def linear_apply(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


def mlp_apply(p, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def make(key, dtype=jnp.float32, kind="linear"):
    ks = jax.random.split(key, 6)
    d = H * W * CH
    syn = jax.random.normal(ks[0], (C, N_SYN, H, W, CH), dtype)
    real = jax.random.normal(ks[1], (C, N_REAL, H, W, CH), dtype) + 0.5
    if kind == "linear":
        params = {"w": 0.5 * jax.random.normal(ks[2], (d, C), dtype),
                  "b": 0.1 * jax.random.normal(ks[3], (C,), dtype)}
        return linear_apply, params, syn, real
    params = {"w1": 0.5 * jax.random.normal(ks[2], (d, 4), dtype),
              "b1": 0.1 * jax.random.normal(ks[3], (4,), dtype),
              "w2": 0.5 * jax.random.normal(ks[4], (4, C), dtype),
              "b2": 0.1 * jax.random.normal(ks[5], (C,), dtype)}
    return mlp_apply, params, syn, real


@pytest.mark.parametrize("perturbation", ["global", "per_class"])
@pytest.mark.parametrize("metric", ["ours", "mse"])
def test_rho_zero_is_gradient_matching(key, perturbation, metric):
    apply, params, syn, real = make(key, kind="mlp")
    gm = gradient_matching_loss(apply, params, syn, real, key, None, metric)
    gm_grad = jax.grad(lambda s: gradient_matching_loss(apply, params, s, real, key, None,
                                                        metric))(syn)
    for weight in (0.5, 0.3, 1.0):
        f = lambda s: K.lcmat_loss(apply, params, s, real, key, None, metric, rho=0.0,  # noqa
                                   weight=weight, perturbation=perturbation)
        np.testing.assert_allclose(f(syn), gm, rtol=1e-6)
        # (1 - w) g + w g rounds differently from g in float32 (and differently across XLA
        # versions): compare at float32 precision relative to the gradient's scale.
        scale = float(np.max(np.abs(gm_grad)))
        np.testing.assert_allclose(jax.grad(f)(syn), gm_grad, rtol=1e-5, atol=1e-6 * scale)
    # weight 0.5 and rho 0: the two terms are the same numbers, so the result is bitwise GM
    assert float(K.lcmat_loss(apply, params, syn, real, key, None, metric, rho=0.0)) == float(gm)
    # weight 0 ignores the perturbed point whatever rho is
    np.testing.assert_allclose(
        K.lcmat_loss(apply, params, syn, real, key, None, metric, rho=3.0, weight=0.0), gm,
        rtol=1e-6)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def closed_form_class_grads(params, real):
    """d/d(W, b) of mean CE of a linear model on class c's real batch: X^T (P - Y) / B."""
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    gw, gb = [], []
    for c in range(C):
        x = np.asarray(real[c], np.float64).reshape(N_REAL, -1)
        r = _softmax(x @ w + b)
        r[:, c] -= 1.0
        gw.append(x.T @ r / N_REAL)
        gb.append(r.mean(0))
    return np.stack(gw), np.stack(gb)


def test_perturbation_closed_form(key):
    apply, params, _, real = make(key)
    rho = 0.7
    gw, gb = closed_form_class_grads(params, real)
    # global: the mean of the class gradients, normalised to length rho
    mw, mb = gw.mean(0), gb.mean(0)
    norm = np.sqrt((mw ** 2).sum() + (mb ** 2).sum())
    eps = K.lcmat_perturbation(apply, params, real, key, rho=rho)
    np.testing.assert_allclose(eps["w"], rho * mw / norm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(eps["b"], rho * mb / norm, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(K.global_norm(eps), rho, rtol=1e-6)
    # per class: each class's own direction
    eps_c = K.lcmat_perturbation(apply, params, real, key, rho=rho, perturbation="per_class")
    for c in range(C):
        nc = np.sqrt((gw[c] ** 2).sum() + (gb[c] ** 2).sum())
        np.testing.assert_allclose(eps_c["w"][c], rho * gw[c] / nc, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(eps_c["b"][c], rho * gb[c] / nc, rtol=1e-5, atol=1e-7)
    # a zero gradient gives a zero perturbation, not NaN
    zero = K.ascent_perturbation({"a": jnp.zeros(3)}, 1.0)
    np.testing.assert_array_equal(zero["a"], 0.0)


def test_loss_is_gradient_matching_at_both_points(key):
    """Reference semantics written out: (1 - w) GM(theta) + w GM(theta + eps*)."""
    apply, params, syn, real = make(key)
    rho, w = 0.4, 0.3
    gw, gb = closed_form_class_grads(params, real)
    mw, mb = gw.mean(0), gb.mean(0)
    norm = np.sqrt((mw ** 2).sum() + (mb ** 2).sum())
    shifted = {"w": params["w"] + rho * mw / norm, "b": params["b"] + rho * mb / norm}
    want = ((1 - w) * gradient_matching_loss(apply, params, syn, real, key)
            + w * gradient_matching_loss(apply, shifted, syn, real, key))
    got = K.lcmat_loss(apply, params, syn, real, key, rho=rho, weight=w)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert abs(float(got) - float(gradient_matching_loss(apply, params, syn, real, key))) > 1e-4


@pytest.mark.parametrize("perturbation", ["global", "per_class"])
def test_image_gradient_matches_finite_differences(key, perturbation):
    with jax.enable_x64(True):
        apply, params, syn, real = make(key, jnp.float64, kind="mlp")
        f = jax.jit(lambda s: K.lcmat_loss(apply, params, s, real, key, metric="ours", rho=0.3,
                                           weight=0.5, perturbation=perturbation))
        g = jax.grad(f)(syn)
        assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0
        direction = jax.random.normal(jax.random.fold_in(key, 9), syn.shape, jnp.float64)
        h = 1e-5
        fd = (f(syn + h * direction) - f(syn - h * direction)) / (2 * h)
        np.testing.assert_allclose(jnp.vdot(g, direction), fd, rtol=1e-6)


def test_hyperparameters_are_traced_and_names_checked(key):
    apply, params, syn, real = make(key)
    traces = []

    @jax.jit
    def f(s, rho, w):
        traces.append(1)
        return K.lcmat_loss(apply, params, s, real, key, rho=rho, weight=w)

    a = f(syn, 0.1, 0.5)
    b = f(syn, 0.5, 0.7)
    assert len(traces) == 1 and float(a) != float(b)
    with pytest.raises(ValueError, match="perturbation must be one of"):
        K.lcmat_loss(apply, params, syn, real, key, perturbation="sam")
    with pytest.raises(ValueError, match="syn_by_class"):
        K.lcmat_loss(apply, params, syn[:2], real, key)
