"""`jaxdiff.models.functional`: split/merge, pools of models, gradients through the
functional form, BatchNorm statistics, train/eval mode."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff import models
from jaxdiff.models import ConvNet, MLP

from tests.helpers import abstract_count, call_model, embed_model


@functools.lru_cache(maxsize=None)
def _builder(make):
    return nnx.jit(lambda k: make(nnx.Rngs(k)))


def _build(make, key):
    return _builder(make)(key)


def _small_convnet(norm="instancenorm"):
    return functools.partial(ConvNet, in_channels=3, num_classes=5, image_size=8, depth=2,
                             width=8, norm=norm)


_SMALL = _small_convnet()


def test_factory_is_called_with_positional_rngs(key):
    # The pipelines build models as make_model(nnx.Rngs(key)) from functools.partial factories.
    a = _small_convnet()(nnx.Rngs(key))
    b = ConvNet(in_channels=3, num_classes=5, image_size=8, depth=2, width=8, rngs=nnx.Rngs(key))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(a), nnx.state(b))


@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm"])
def test_pool_matches_models_one_by_one(key, norm):
    make = _small_convnet(norm)
    keys = jax.random.split(key, 4)
    graphdef, state = models.init_pool(make, keys)
    assert jax.tree.leaves(state)[0].shape[0] == 4
    x = jax.random.normal(key, (6, 8, 8, 3))
    logits, new_state = jax.jit(lambda s, x: models.apply_pool(graphdef, s, x))(state, x)
    assert logits.shape == (4, 6, 5)
    for i in range(4):
        single = _build(make, keys[i])
        # Initialisation under vmap gives each key's own parameters.
        jax.tree.map(np.testing.assert_array_equal, nnx.state(single, nnx.Param),
                     jax.tree.map(lambda a: a[i], nnx.state(nnx.merge(graphdef, state), nnx.Param)))
        np.testing.assert_allclose(logits[i], call_model(single, x), rtol=1e-5, atol=1e-5)
        if norm == "batchnorm":  # the single model (train mode) updated its statistics alike
            np.testing.assert_allclose(
                new_state["blocks"][0]["norm"]["mean"][...][i], single.blocks[0].norm.mean[...],
                rtol=1e-5, atol=1e-6)
    # Per-model inputs (in_axes=0) and another method.
    xs = jax.random.normal(key, (4, 3, 8, 8, 3))
    feats, _ = jax.jit(lambda s, x: models.apply_pool(graphdef, s, x, method="embed", in_axes=0))(
        state, xs)
    single = _build(make, keys[2])
    np.testing.assert_allclose(feats[2], embed_model(single, xs[2]), rtol=1e-5, atol=1e-5)


def test_pool_with_param_filter(key):
    graphdef, params, rest = models.init_pool(_small_convnet("batchnorm"),
                                              jax.random.split(key, 3), nnx.Param, ...)
    assert models.num_params(params) == 3 * abstract_count(lambda: _SMALL(nnx.Rngs(0)))
    assert {type(v).__name__ for v in jax.tree.leaves(rest, is_leaf=lambda v: isinstance(
        v, nnx.Variable))} == {"BatchStat"}
    out, (p2, r2) = jax.jit(lambda s, x: models.apply_pool(graphdef, s, x))(
        (params, rest), jnp.ones((2, 8, 8, 3)))
    assert out.shape == (3, 2, 5)
    jax.tree.map(np.testing.assert_array_equal, p2, params)


def test_jit_grad_through_functional_form_matches_closed_form(key):
    # Linear softmax classifier: dCE/dW = x^T (softmax(z) - onehot) / N, dCE/db = mean(...).
    mlp = MLP(nnx.Rngs(key), in_features=6, out_features=4, hidden=())
    graphdef, params, rest = models.split_params(mlp)
    x = jax.random.normal(key, (10, 6))
    y = jax.random.randint(jax.random.fold_in(key, 1), (10,), 0, 4)

    @jax.jit
    def loss_grad(params, rest, x, y):
        def loss(p):
            logits, _ = models.apply(graphdef, (p, rest), x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return jax.grad(loss)(params)

    g = loss_grad(params, rest, x, y)
    w, b = mlp.classifier.kernel[...], mlp.classifier.bias[...]
    r = jax.nn.softmax(x @ w + b) - jax.nn.one_hot(y, 4)
    np.testing.assert_allclose(g["classifier"]["kernel"][...], x.T @ r / 10, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["classifier"]["bias"][...], r.mean(0), rtol=1e-5, atol=1e-6)


def test_jit_grad_functional_matches_stateful_convnet(key):
    model = _build(_SMALL, key)
    x = jax.random.normal(key, (4, 8, 8, 3))
    y = jnp.array([0, 1, 2, 3])

    def ce(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    graphdef, params, rest = models.split_params(model)
    g_fun = jax.jit(jax.grad(lambda p: ce(models.apply(graphdef, (p, rest), x)[0])))(params)
    g_ref = nnx.jit(nnx.grad(lambda m: ce(m(x))))(model)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 g_fun, nnx.state(g_ref, nnx.Param))
    # Rebuilding from the split gives the same model.
    rebuilt = models.merge_params(graphdef, params, rest)
    np.testing.assert_array_equal(call_model(rebuilt, x), call_model(model, x))


def test_batchnorm_statistics_update_through_functional_form(key):
    model = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=2, image_size=8, depth=1, width=4,
                    norm="batchnorm")
    graphdef, state = nnx.split(model)
    x = jax.random.normal(key, (6, 8, 8, 3)) + 0.5
    h = model.blocks[0].conv(x)  # input of the BatchNorm layer
    mu, var = h.mean((0, 1, 2)), h.var((0, 1, 2))

    _, s1 = jax.jit(lambda s, x: models.apply(graphdef, s, x))(state, x)
    bn = s1["blocks"][0]["norm"]
    # PyTorch momentum 0.1: running = 0.9 * running + 0.1 * batch (from mean 0, var 1).
    np.testing.assert_allclose(bn["mean"][...], 0.1 * mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn["var"][...], 0.9 + 0.1 * var, rtol=1e-5, atol=1e-6)
    # The (params, rest) form returns updated statistics and untouched parameters.
    g2, params, rest = models.split_params(model)
    _, (p2, r2) = models.apply(g2, (params, rest), x)
    np.testing.assert_allclose(r2["blocks"][0]["norm"]["mean"][...], 0.1 * mu, rtol=1e-5, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, p2, params)
    # Eval mode: running statistics normalise, nothing is updated.
    ev_graphdef, ev_state = nnx.split(models.with_mode(nnx.merge(graphdef, s1), train=False))
    out, s2 = models.apply(ev_graphdef, ev_state, x, method="embed")
    jax.tree.map(np.testing.assert_array_equal, s2, ev_state)
    layer = model.blocks[0].norm
    hn = (h - bn["mean"][...]) / jnp.sqrt(bn["var"][...] + 1e-5) * layer.scale[...] \
        + layer.bias[...]
    ref = jax.nn.relu(hn).reshape(6, 4, 2, 4, 2, 4).mean((2, 4)).reshape(6, -1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_functional_apply_rejects_bad_state(key):
    graphdef, params, rest = models.split_params(_build(_SMALL, key))
    with pytest.raises(ValueError, match="pair"):
        models.apply(graphdef, (params, rest, rest), jnp.ones((1, 8, 8, 3)))


def test_batchnorm_state_from_outer_trace_updates_inside_grad(key):
    # Training loops carry the state through lax.scan and differentiate inside the body; the
    # merged BatchNorm statistics then come from an outer trace and must still be updatable.
    model = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=2, image_size=8, depth=1, width=4,
                    norm="batchnorm")
    graphdef, params, rest = models.split_params(model)
    x = jax.random.normal(key, (4, 8, 8, 3))
    mu = model.blocks[0].conv(x).mean((0, 1, 2))

    def body(carry, _):
        p, r = carry

        def loss(p):
            out, (_, r2) = models.apply(graphdef, (p, r), x)
            return jnp.sum(out), r2

        (_, r2), _ = jax.value_and_grad(loss, has_aux=True)(p)
        return (p, r2), None

    (_, r), _ = jax.jit(lambda p, r: jax.lax.scan(body, (p, r), None, length=2))(params, rest)
    # Two updates with the same batch: mean = 0.1 mu + 0.9 * 0.1 mu = 0.19 mu.
    np.testing.assert_allclose(r["blocks"][0]["norm"]["mean"][...], 0.19 * mu, rtol=1e-5,
                               atol=1e-6)


def test_with_mode_without_mode_dependent_layers(key):
    model = _build(_SMALL, key)
    x = jax.random.normal(key, (2, 8, 8, 3))
    np.testing.assert_array_equal(call_model(models.with_mode(model, train=False), x), call_model(model, x))
