"""jaxdiff.models: Flax NNX classifiers and their functional (split/merge) form.

* `ConvNet` (DC/DSA/DM/MTT ConvNet-D{depth}), `convnet_depth_for(image_size)`;
* `ResNet18` (CIFAR variant of DeepCore/LCMat);
* `MLP`;
* PyTorch-default initialisers and layers in `jaxdiff.models.init`;
* functional helpers: `split_params`, `merge_params`, `apply`, `init_pool`, `apply_pool`,
  `with_mode`, `num_params`.

All classifiers take `rngs` as their first argument, so `functools.partial(ConvNet, ...)` is a
`make_model(nnx.Rngs(key))` factory, and expose `__call__(x) -> logits`, `embed(x) -> features`
and `feature_dim`.
"""

from jaxdiff.models.classifiers import CLASSIFIERS, classifier_factory
from jaxdiff.models.convnet import ConvNet, convnet_depth_for
from jaxdiff.models.functional import (
    apply,
    apply_pool,
    init_pool,
    masked_cross_entropy,
    merge_params,
    num_params,
    split_params,
    with_mode,
)
from jaxdiff.models.init import Conv2d, linear, make_norm, torch_bias_init, torch_kernel_init
from jaxdiff.models.mlp import MLP
from jaxdiff.models.resnet import ResNet18

__all__ = [
    "CLASSIFIERS",
    "classifier_factory",
    "ConvNet",
    "convnet_depth_for",
    "ResNet18",
    "MLP",
    "Conv2d",
    "linear",
    "make_norm",
    "torch_kernel_init",
    "torch_bias_init",
    "apply",
    "apply_pool",
    "init_pool",
    "masked_cross_entropy",
    "merge_params",
    "num_params",
    "split_params",
    "with_mode",
]
