"""`jaxdiff.models.convnet`: ConvNet-D{depth} parameter counts, depth by image size,
forward pass against a NumPy reference, option errors, parameter dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff import models
from jaxdiff.models import ConvNet, ResNet18

from tests.helpers import abstract_count, call_model, conv_ref, embed_model, norm_ref


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
    assert abstract_count(make) == count
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


def _convnet_ref(model, x, kind, pooling="avgpool", first_pad=1):
    h = x
    for i, b in enumerate(model.blocks):
        h = conv_ref(h, b.conv.kernel[...], b.conv.bias[...], pad=first_pad if i == 0 else 1)
        h = norm_ref(kind, h, b.norm)
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
    np.testing.assert_allclose(embed_model(model, x), feat, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(call_model(model, x), logits, rtol=2e-4, atol=2e-5)
    if kind == "layernorm":  # element-wise affine over the pre-pool map [H, W, C]
        assert model.blocks[0].norm.scale.shape == (8, 8, 8)
        assert model.blocks[1].norm.scale.shape == (4, 4, 8)


def test_convnet_maxpool_and_mnist_padding(key):
    model = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=4, image_size=8, depth=2, width=4,
                    pooling="maxpool")
    x = jax.random.normal(key, (2, 8, 8, 3))
    ref = _convnet_ref(model, x, "instancenorm", "maxpool")[0]
    np.testing.assert_allclose(call_model(model, x), ref, rtol=2e-4, atol=2e-5)
    # 28x28: first conv pads 3 (28 -> 32), then 16 -> 8 -> 4.
    mnist = ConvNet(nnx.Rngs(key), in_channels=1, num_classes=10, image_size=28, depth=3, width=4)
    assert mnist.feature_dim == 4 * 4 * 4
    x = jax.random.normal(key, (2, 28, 28, 1))
    assert mnist.blocks[0].conv(x).shape == (2, 32, 32, 4)
    ref = _convnet_ref(mnist, x, "instancenorm", first_pad=3)[0]
    np.testing.assert_allclose(call_model(mnist, x), ref, rtol=2e-4, atol=2e-5)
    # No pooling: the feature map keeps its size.
    flat = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=2, image_size=8, depth=2, width=4,
                   pooling="none")
    assert flat.feature_dim == 8 * 8 * 4


def test_param_dtype_and_input_dtype(key):
    m16 = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=2, image_size=8, depth=1, width=4,
                  param_dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))
    assert m16(jnp.ones((2, 8, 8, 3), jnp.bfloat16)).dtype == jnp.bfloat16
    m32 = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=2, image_size=8, depth=1, width=4)
    assert m32(jnp.ones((2, 8, 8, 3))).dtype == jnp.float32


def test_convnet_instancenorm_gradients_match_reference(key):
    """The default block (instance norm -> ReLU -> average pool; on CPU one op with its own
    backward pass) differentiates like the plain formula, for every parameter and the input."""
    model = ConvNet(nnx.Rngs(key), in_channels=3, num_classes=5, image_size=8, depth=2, width=8)
    for b in model.blocks:
        b.norm.scale[...] = 1.0 + 0.1 * jax.random.normal(key, b.norm.scale.shape)
        b.norm.bias[...] = 0.1 * jax.random.normal(jax.random.fold_in(key, 1), b.norm.bias.shape)
    graphdef, params = nnx.split(model, nnx.Param)
    x = jax.random.normal(jax.random.fold_in(key, 2), (3, 8, 8, 3))

    def loss(params, x, ours):
        m = nnx.merge(graphdef, params)
        logits = m(x) if ours else _convnet_ref(m, x, "instancenorm")[0]
        return jnp.sum(jnp.sin(logits))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    ours, ref = grad(params, x, True), grad(params, x, False)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
