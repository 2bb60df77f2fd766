"""jaxdiff.models: ConvNets, ResNet-18, MLP, PyTorch init, functional split/merge and pools."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff import models
from jaxdiff.models import ConvNet, MLP, ResNet18


def _conv_ref(x, w, b=None, stride=1, pad=1):
    """Reference NHWC x HWIO cross-correlation (tests may call lax directly; models may not)."""
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return y if b is None else y + b


# Jitted model construction and calls: eager NNX code runs op by op, compiling every random
# draw and layer separately, which dominates this file's runtime on a small CPU.
_call = nnx.jit(lambda m, x: m(x))
_embed = nnx.jit(lambda m, x: m.embed(x))


@functools.lru_cache(maxsize=None)
def _builder(make):
    return nnx.jit(lambda k: make(nnx.Rngs(k)))


def _build(make, key):
    return _builder(make)(key)


def _abstract_count(make):
    return models.num_params(nnx.eval_shape(make))


# ------------------------------------------------------------------ parameter counts (§3.3)


@pytest.mark.parametrize("in_ch,classes,size,depth,count", [
    (3, 10, 32, 3, 320_010),    # ConvNetD3 CIFAR-10
    (1, 10, 28, 3, 317_706),    # ConvNetD3 MNIST / FashionMNIST
    (3, 100, 32, 3, 504_420),   # ConvNetD3 CIFAR-100
    (3, 200, 64, 4, 857_160),   # ConvNetD4 Tiny-ImageNet
    (3, 10, 128, 5, 615_690),   # ConvNetD5 ImageNet subsets
])
def test_convnet_parameter_counts(in_ch, classes, size, depth, count):
    make = lambda: ConvNet(nnx.Rngs(0), in_channels=in_ch, num_classes=classes,  # noqa: E731
                           image_size=size, depth=depth)
    assert _abstract_count(make) == count
    assert nnx.eval_shape(make).feature_dim == 2048
    x = jax.ShapeDtypeStruct((2, size, size, in_ch), jnp.float32)
    assert jax.eval_shape(lambda x: make().embed(x), x).shape == (2, 2048)
    assert jax.eval_shape(lambda x: make()(x), x).shape == (2, classes)


def test_convnet_d2_at_16px_has_2048_features():
    make = lambda: ConvNet(nnx.Rngs(0), in_channels=3, num_classes=10, image_size=16,  # noqa: E731
                           depth=2)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    assert nnx.eval_shape(make).feature_dim == 2048
    assert jax.eval_shape(lambda x: make().embed(x), x).shape == (2, 2048)


def test_resnet18_parameter_count_and_feature():
    make = lambda: ResNet18(nnx.Rngs(0), in_channels=3, num_classes=10)  # noqa: E731
    assert _abstract_count(make) == 11_173_962  # the standard CIFAR ResNet-18 count
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    assert jax.eval_shape(lambda x: make().embed(x), x).shape == (2, 512)
    assert nnx.eval_shape(make).feature_dim == 512
    # Instance norm has the same affine parameters and no running statistics.
    inst = nnx.eval_shape(lambda: ResNet18(nnx.Rngs(0), in_channels=3, num_classes=10,
                                           norm="instancenorm"))
    assert models.num_params(inst) == 11_173_962
    assert not jax.tree.leaves(nnx.state(inst, nnx.BatchStat))
    # 28x28 single-channel inputs (used by DeepCore) pool to the same 512 features.
    x28 = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    make28 = lambda: ResNet18(nnx.Rngs(0), in_channels=1, num_classes=10)  # noqa: E731
    assert jax.eval_shape(lambda x: make28().embed(x), x28).shape == (2, 512)


def test_convnet_depth_for():
    assert [models.convnet_depth_for(s) for s in (8, 16, 28, 32, 64, 128)] == [1, 2, 3, 3, 4, 5]
    for bad in (4, 24, 30):
        with pytest.raises(ValueError, match="depth"):
            models.convnet_depth_for(bad)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="norm"):
        ConvNet(nnx.Rngs(0), in_channels=3, num_classes=2, image_size=8, depth=1, norm="bn")
    with pytest.raises(ValueError, match="pooling"):
        ConvNet(nnx.Rngs(0), in_channels=3, num_classes=2, image_size=8, depth=1, pooling="x")
    with pytest.raises(ValueError, match="activation"):
        ConvNet(nnx.Rngs(0), in_channels=3, num_classes=2, image_size=8, depth=1, activation="x")
    with pytest.raises(ValueError, match="too deep"):
        ConvNet(nnx.Rngs(0), in_channels=3, num_classes=2, image_size=8, depth=4)
    with pytest.raises(ValueError, match="norm"):
        ResNet18(nnx.Rngs(0), in_channels=3, num_classes=2, norm="layernorm")


# ------------------------------------------------------------------ initialisation (§3.2)


def test_pytorch_init_ranges(key):
    model = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=10, image_size=32)
    layers = [(b.conv.kernel[...], b.conv.bias[...]) for b in model.blocks]
    layers.append((model.classifier.kernel[...], model.classifier.bias[...]))
    fan_ins = [27, 1152, 1152, 2048]
    for (k, b), fan_in in zip(layers, fan_ins):
        bound = 1.0 / math.sqrt(fan_in)
        for t in (k, b):
            a = np.abs(np.asarray(t))
            assert a.max() <= bound
            # Uniform on [-bound, bound]: the extreme |value| of n draws is close to the bound.
            assert a.max() >= bound * (1 - 5.0 / t.size) - 1e-7 if t.size > 100 else \
                a.max() >= 0.5 * bound
        if k.size > 10_000:  # moments of U(-b, b): mean 0, std b / sqrt(3)
            assert abs(float(k.mean())) < 0.01 * bound
            assert float(k.std()) == pytest.approx(bound / math.sqrt(3), rel=0.01)
    for b in model.blocks:
        np.testing.assert_array_equal(b.norm.scale[...], 1.0)
        np.testing.assert_array_equal(b.norm.bias[...], 0.0)


def test_init_helpers_bounds(key):
    k = models.torch_kernel_init()(key, (3, 3, 16, 8), jnp.float32)
    assert float(jnp.abs(k).max()) <= 1 / 12 and float(jnp.abs(k).max()) > 0.99 / 12
    b = models.torch_bias_init(144)(key, (20000,), jnp.float32)
    assert float(jnp.abs(b).max()) <= 1 / 12 and float(jnp.abs(b).max()) > 0.999 / 12
    lin = models.linear(50, 7, rngs=nnx.Rngs(key))
    assert float(jnp.abs(lin.bias[...]).max()) <= 1 / math.sqrt(50)
    assert float(jnp.abs(lin.bias[...]).max()) > 0  # not Flax's zero bias


# ------------------------------------------------------------------ forward semantics


def _norm_ref(kind, h, layer):
    if kind == "instancenorm":
        m = h.mean((1, 2), keepdims=True)
        v = ((h - m) ** 2).mean((1, 2), keepdims=True)
        return (h - m) / jnp.sqrt(v + 1e-5) * layer.scale[...] + layer.bias[...]
    if kind == "batchnorm":  # train mode: batch statistics over N, H, W (biased)
        m = h.mean((0, 1, 2), keepdims=True)
        v = ((h - m) ** 2).mean((0, 1, 2), keepdims=True)
        return (h - m) / jnp.sqrt(v + 1e-5) * layer.scale[...] + layer.bias[...]
    if kind == "layernorm":  # PyTorch LayerNorm([C, H, W]): over everything of a sample
        m = h.mean((1, 2, 3), keepdims=True)
        v = ((h - m) ** 2).mean((1, 2, 3), keepdims=True)
        return (h - m) / jnp.sqrt(v + 1e-5) * layer.scale[...] + layer.bias[...]
    if kind == "groupnorm":  # 4 groups of consecutive channels
        n, hh, ww, c = h.shape
        g = h.reshape(n, hh, ww, 4, c // 4)
        m = g.mean((1, 2, 4), keepdims=True)
        v = ((g - m) ** 2).mean((1, 2, 4), keepdims=True)
        out = ((g - m) / jnp.sqrt(v + 1e-5)).reshape(h.shape)
        return out * layer.scale[...] + layer.bias[...]
    assert kind == "none"
    return h


def _convnet_ref(model, x, kind, pooling="avgpool", first_pad=1):
    h = x
    for i, b in enumerate(model.blocks):
        h = _conv_ref(h, b.conv.kernel[...], b.conv.bias[...], pad=first_pad if i == 0 else 1)
        h = _norm_ref(kind, h, b.norm)
        h = jax.nn.relu(h)
        n, hh, ww, c = h.shape
        r = h[:, :hh // 2 * 2, :ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, c)
        h = r.mean((2, 4)) if pooling == "avgpool" else r.max((2, 4))
    feat = h.reshape(h.shape[0], -1)  # NHWC flatten order
    return feat @ model.classifier.kernel[...] + model.classifier.bias[...], feat


@pytest.mark.parametrize("kind", ["instancenorm", "batchnorm", "layernorm", "groupnorm", "none"])
def test_convnet_forward_matches_reference(key, kind):
    model = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=5, image_size=8, depth=2, width=8,
                    norm=kind)
    # Non-trivial affine parameters so that their use is checked too.
    for b in model.blocks:
        if b.norm is not None:
            b.norm.scale[...] = 1.0 + 0.1 * jax.random.normal(key, b.norm.scale.shape)
            b.norm.bias[...] = 0.1 * jax.random.normal(jax.random.fold_in(key, 1),
                                                        b.norm.bias.shape)
    x = jax.random.normal(jax.random.fold_in(key, 2), (3, 8, 8, 3))
    logits, feat = _convnet_ref(model, x, kind)
    np.testing.assert_allclose(_embed(model, x), feat, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(_call(model, x), logits, rtol=2e-4, atol=2e-5)
    if kind == "layernorm":  # element-wise affine over the pre-pool map [H, W, C]
        assert model.blocks[0].norm.scale.shape == (8, 8, 8)
        assert model.blocks[1].norm.scale.shape == (4, 4, 8)


def test_convnet_maxpool_and_mnist_padding(key):
    model = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=4, image_size=8, depth=2, width=4,
                    pooling="maxpool")
    x = jax.random.normal(key, (2, 8, 8, 3))
    ref = _convnet_ref(model, x, "instancenorm", "maxpool")[0]
    np.testing.assert_allclose(_call(model, x), ref, rtol=2e-4, atol=2e-5)
    # 28x28: first conv pads 3 (28 -> 32), then 16 -> 8 -> 4.
    mnist = ConvNet(nnx.Rngs(key), in_channels=1, num_classes=10, image_size=28, depth=3, width=4)
    assert mnist.feature_dim == 4 * 4 * 4
    x = jax.random.normal(key, (2, 28, 28, 1))
    assert mnist.blocks[0].conv(x).shape == (2, 32, 32, 4)
    ref = _convnet_ref(mnist, x, "instancenorm", first_pad=3)[0]
    np.testing.assert_allclose(_call(mnist, x), ref, rtol=2e-4, atol=2e-5)
    # No pooling: the feature map keeps its size.
    flat = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=2, image_size=8, depth=2, width=4,
                   pooling="none")
    assert flat.feature_dim == 8 * 8 * 4


def test_resnet_block_and_forward_match_reference(key):
    widths = (4, 8, 8, 16)
    model = ResNet18(nnx.Rngs(key), in_channels=3, num_classes=6, widths=widths,
                     norm="instancenorm")
    assert model.stem.bias is None and model.layers[0].shortcut_conv is None
    assert model.layers[2].shortcut_conv is not None and model.layers[2].conv1.stride == 2
    assert len(model.layers) == 8
    x = jax.random.normal(key, (2, 8, 8, 3))

    def inorm(h, layer):
        return _norm_ref("instancenorm", h, layer)

    def block(b, h):
        out = jax.nn.relu(inorm(_conv_ref(h, b.conv1.kernel[...], stride=b.conv1.stride), b.norm1))
        out = inorm(_conv_ref(out, b.conv2.kernel[...]), b.norm2)
        if b.shortcut_conv is None:
            short = h
        else:
            short = inorm(_conv_ref(h, b.shortcut_conv.kernel[...], stride=b.shortcut_conv.stride,
                                    pad=0), b.shortcut_norm)
        return jax.nn.relu(out + short)

    h = jax.nn.relu(inorm(_conv_ref(x, model.stem.kernel[...]), model.stem_norm))
    for b in model.layers:
        h = block(b, h)
    assert h.shape == (2, 1, 1, 16)  # 8 -> 8 -> 4 -> 2 -> 1
    feat = h.mean((1, 2))
    np.testing.assert_allclose(_embed(model, x), feat, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(
        _call(model, x), feat @ model.classifier.kernel[...] + model.classifier.bias[...],
        rtol=2e-4, atol=2e-5)


def test_resnet_batchnorm_train_and_eval(key):
    model = ResNet18(nnx.Rngs(key), in_channels=3, num_classes=3, widths=(4, 4, 8, 8))
    x = jax.random.normal(key, (4, 8, 8, 3))
    y_train = model(x)
    assert jnp.all(jnp.isfinite(y_train))
    # Running statistics moved towards the batch statistics (momentum 0.1).
    assert float(jnp.abs(model.stem_norm.mean[...]).max()) > 0
    ev = models.with_mode(model, train=False)
    m = model.stem_norm.mean[...]
    y_eval = ev(x)
    np.testing.assert_array_equal(model.stem_norm.mean[...], m)  # eval does not update stats
    assert not np.allclose(y_eval, y_train)


def test_mlp_forward_and_embed(key):
    mlp = MLP(nnx.Rngs(key), in_features=4 * 4 * 2, out_features=3, hidden=(8, 6))
    x = jax.random.normal(key, (5, 4, 4, 2))
    h = x.reshape(5, -1)
    for layer in mlp.hidden:
        h = jax.nn.relu(h @ layer.kernel[...] + layer.bias[...])
    np.testing.assert_allclose(mlp.embed(x), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mlp(x), h @ mlp.classifier.kernel[...] + mlp.classifier.bias[...],
                               rtol=1e-5, atol=1e-6)
    assert mlp.feature_dim == 6
    with pytest.raises(ValueError, match="features"):
        mlp(jnp.ones((2, 3)))


def test_param_dtype_and_input_dtype(key):
    m16 = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=2, image_size=8, depth=1, width=4,
                  param_dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    assert m16(jnp.ones((2, 8, 8, 3), jnp.bfloat16)).dtype == jnp.bfloat16
    m32 = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=2, image_size=8, depth=1, width=4)
    assert m32(jnp.ones((2, 8, 8, 3))).dtype == jnp.float32


# ------------------------------------------------------------------ functional form


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
        np.testing.assert_allclose(logits[i], _call(single, x), rtol=1e-5, atol=1e-5)
        if norm == "batchnorm":  # the single model (train mode) updated its statistics alike
            np.testing.assert_allclose(
                new_state["blocks"][0]["norm"]["mean"][...][i], single.blocks[0].norm.mean[...],
                rtol=1e-5, atol=1e-6)
    # Per-model inputs (in_axes=0) and another method.
    xs = jax.random.normal(key, (4, 3, 8, 8, 3))
    feats, _ = jax.jit(lambda s, x: models.apply_pool(graphdef, s, x, method="embed", in_axes=0))(
        state, xs)
    single = _build(make, keys[2])
    np.testing.assert_allclose(feats[2], _embed(single, xs[2]), rtol=1e-5, atol=1e-5)


def test_pool_with_param_filter(key):
    graphdef, params, rest = models.init_pool(_small_convnet("batchnorm"),
                                              jax.random.split(key, 3), nnx.Param, ...)
    assert models.num_params(params) == 3 * _abstract_count(lambda: _SMALL(nnx.Rngs(0)))
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
    np.testing.assert_array_equal(_call(rebuilt, x), _call(model, x))


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
    np.testing.assert_array_equal(_call(models.with_mode(model, train=False), x), _call(model, x))
