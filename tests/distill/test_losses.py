"""DM and DC/DSA losses against explicit per-class loops and hand-computed distances."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff.distill import losses


def _embed(x):
    """A fixed per-sample nonlinear feature map [B, H, W, C] -> [B, 5]."""
    w = jnp.linspace(-1.0, 1.0, x[0].size * 5).reshape(x[0].size, 5)
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w)


def _shift_augment(key, x, siamese=True):
    """A toy siamese augmentation: one random scalar shift for the whole batch."""
    return x + jax.random.uniform(key, ())


def test_dm_equals_per_class_loop(key):
    k1, k2, k3 = jax.random.split(key, 3)
    syn = jax.random.normal(k1, (3, 2, 4, 4, 1))
    real = jax.random.normal(k2, (3, 6, 4, 4, 1))
    loss = losses.distribution_matching_loss(_embed, syn, real, k3, _shift_augment)
    expect = 0.0
    for c in range(3):
        kc = jax.random.fold_in(k3, c)
        mr = _embed(_shift_augment(kc, real[c])).mean(0)
        ms = _embed(_shift_augment(kc, syn[c])).mean(0)
        expect += float(jnp.sum((mr - ms) ** 2))
    np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
    # Gradient reaches the synthetic images only.
    g_syn, g_real = jax.grad(losses.distribution_matching_loss, argnums=(1, 2))(_embed, syn, real, k3, _shift_augment)
    assert float(jnp.abs(g_syn).sum()) > 0 and float(jnp.abs(g_real).sum()) == 0.0


def test_layer_distance_rows_are_outputs_and_1d_is_zero():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(3, 3, 2, 4))  # Flax conv kernel [kh,kw,in,out]
    expect = 0.0
    for o in range(4):  # PyTorch row o = all weights of output channel o
        ra, rb = a[..., o].ravel(), b[..., o].ravel()
        expect += 1 - ra @ rb / (np.linalg.norm(ra) * np.linalg.norm(rb) + 1e-6)
    np.testing.assert_allclose(float(losses.layer_distance(jnp.asarray(a), jnp.asarray(b))), expect, rtol=1e-6)
    assert float(losses.layer_distance(jnp.ones(4), -jnp.ones(4))) == 0.0
    # Identical gradients are at distance ~0; opposite rows at 2 per row.
    np.testing.assert_allclose(float(losses.layer_distance(jnp.asarray(a), jnp.asarray(a))), 0.0, atol=1e-5)
    np.testing.assert_allclose(float(losses.layer_distance(jnp.asarray(a), -jnp.asarray(a))), 8.0, atol=1e-5)


def _apply(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def test_gradient_matching_equals_per_class_loop(key):
    ks = jax.random.split(key, 6)
    params = {"w1": jax.random.normal(ks[0], (16, 8)) * 0.3, "b1": jax.random.normal(ks[1], (8,)),
              "w2": jax.random.normal(ks[2], (8, 3)) * 0.3, "b2": jnp.zeros(3)}
    syn = jax.random.normal(ks[3], (3, 2, 4, 4, 1))
    real = jax.random.normal(ks[4], (3, 5, 4, 4, 1))
    loss = losses.gradient_matching_loss(_apply, params, syn, real, ks[5], _shift_augment)

    def ce_grad(x, c):
        return jax.grad(lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            _apply(p, x), jnp.full((x.shape[0],), c))))(params)

    expect = 0.0
    for c in range(3):
        kc = jax.random.fold_in(ks[5], c)
        gs, gr = ce_grad(_shift_augment(kc, syn[c]), c), ce_grad(_shift_augment(kc, real[c]), c)
        for name in ("w1", "w2"):  # biases contribute 0
            a, b = np.asarray(gs[name]).T, np.asarray(gr[name]).T
            expect += np.sum(1 - np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-6))
    np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
    g = jax.grad(lambda s: losses.gradient_matching_loss(_apply, params, s, real, ks[5], _shift_augment))(syn)
    assert g.shape == syn.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


def test_metric_variants_and_errors():
    a = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    b = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    assert float(losses.gradient_distance(a, b, "mse")) == pytest.approx(1.0)
    assert float(losses.gradient_distance(a, a, "cos")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown gradient-matching metric"):
        losses.gradient_distance(a, b, "l1")


def test_dc_loop_table():
    assert [losses.dc_loops(i) for i in (1, 10, 20, 30, 40, 50)] == [(1, 1), (10, 50), (20, 25), (30, 20), (40, 15), (50, 10)]
    with pytest.raises(ValueError, match="IPC"):
        losses.dc_loops(7)


# ---------------------------------------------------------------- classes in chunks
def test_map_class_chunks_equals_one_call_with_a_partial_last_group():
    x = jnp.arange(7 * 3, dtype=jnp.float32).reshape(7, 3)
    classes = jnp.arange(7)

    def fn(a, c):   # row c depends on row c only
        return {"y": a * 2.0 + c[:, None], "n": jnp.sum(a, axis=1)}

    whole = fn(x, classes)
    for chunk in (0, 1, 3, 5, 7, 9):   # 3 and 5 leave a partial last group
        got = losses.map_class_chunks(fn, (x, classes), chunk)
        np.testing.assert_array_equal(got["y"], whole["y"])
        np.testing.assert_array_equal(got["n"], whole["n"])


@pytest.mark.parametrize("chunk", [1, 4])   # 4 of 10 classes: groups 4, 4, 2 (+2 refilled)
def test_dm_and_dc_in_class_chunks_equal_the_one_call_loss_and_gradient(key, chunk):
    ks = jax.random.split(key, 6)
    syn = jax.random.normal(ks[0], (10, 2, 4, 4, 1))
    real = jax.random.normal(ks[1], (10, 6, 4, 4, 1))
    dm = lambda s, k: losses.distribution_matching_loss(  # noqa: E731
        _embed, s, real, ks[2], _shift_augment, class_chunk=k)
    params = {"w1": jax.random.normal(ks[3], (16, 8)) * 0.3, "b1": jnp.zeros(8),
              "w2": jax.random.normal(ks[4], (8, 10)) * 0.3, "b2": jnp.zeros(10)}
    dc = lambda s, k: losses.gradient_matching_loss(  # noqa: E731
        _apply, params, s, real, ks[5], _shift_augment, class_chunk=k)
    for loss in (dm, dc):
        (v0, g0), (v1, g1) = (jax.value_and_grad(loss)(syn, k) for k in (0, chunk))
        np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
        # float rounding only: the gradients are up to ~0.5
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=1e-5, atol=1e-6)

