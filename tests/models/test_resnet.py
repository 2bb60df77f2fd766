"""`jaxdiff.models.resnet`: ResNet-18 parameter count, blocks against a reference,
BatchNorm in train and eval mode."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import models
from jaxdiff.models import ResNet18

from tests.helpers import abstract_count, call_model, conv_ref, embed_model, norm_ref


def test_resnet18_parameter_count_and_feature():
    make = lambda: ResNet18(nnx.Rngs(0), in_channels=3, num_classes=10)  # noqa: E731
    assert abstract_count(make) == 11_173_962  # the standard CIFAR ResNet-18 count
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


def test_resnet_block_and_forward_match_reference(key):
    widths = (4, 8, 8, 16)
    model = ResNet18(nnx.Rngs(key), in_channels=3, num_classes=6, widths=widths,
                     norm="instancenorm")
    assert model.stem.bias is None and model.layers[0].shortcut_conv is None
    assert model.layers[2].shortcut_conv is not None and model.layers[2].conv1.stride == 2
    assert len(model.layers) == 8
    x = jax.random.normal(key, (2, 8, 8, 3))

    def inorm(h, layer):
        return norm_ref("instancenorm", h, layer)

    def block(b, h):
        out = jax.nn.relu(inorm(conv_ref(h, b.conv1.kernel[...], stride=b.conv1.stride), b.norm1))
        out = inorm(conv_ref(out, b.conv2.kernel[...]), b.norm2)
        if b.shortcut_conv is None:
            short = h
        else:
            short = inorm(conv_ref(h, b.shortcut_conv.kernel[...], stride=b.shortcut_conv.stride,
                                    pad=0), b.shortcut_norm)
        return jax.nn.relu(out + short)

    h = jax.nn.relu(inorm(conv_ref(x, model.stem.kernel[...]), model.stem_norm))
    for b in model.layers:
        h = block(b, h)
    assert h.shape == (2, 1, 1, 16)  # 8 -> 8 -> 4 -> 2 -> 1
    feat = h.mean((1, 2))
    np.testing.assert_allclose(embed_model(model, x), feat, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(
        call_model(model, x), feat @ model.classifier.kernel[...] + model.classifier.bias[...],
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
