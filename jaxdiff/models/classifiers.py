"""Classifier factories by name: the networks distillation, evaluation, experts and selection train.

`classifier_factory(name, image_shape, num_classes, depth=, width=, norm=)` returns a
`make_model(rngs)` (a `functools.partial` of the module's class), the form the functional helpers
(`init_pool`, `apply`) and the evaluation protocol take.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from jaxdiff.models.convnet import ConvNet, convnet_depth_for
from jaxdiff.models.mlp import MLP
from jaxdiff.models.resnet import ResNet18

CLASSIFIERS = ("convnet", "resnet18", "mlp")

__all__ = ["CLASSIFIERS", "classifier_factory", "convnet_depth_for"]


def classifier_factory(name: str, image_shape: Sequence[int], num_classes: int, *,
                       depth: int = 0, width: int = 128, norm: str = "instancenorm") -> Callable:
    """`make_model(rngs)` for classifier `name` on `(H, W, C)` images.

    Args:
      name: "convnet" (DC/DM/MTT ConvNet-D{depth}, `width` filters, `norm`), "resnet18" (CIFAR
        ResNet-18 with `norm`) or "mlp" (two hidden layers of `width` units).
      image_shape: `(H, W, C)`; H != W is fine (the ConvNet pools both axes, its features are
        width * H_f * W_f).
      num_classes: output classes.
      depth: ConvNet blocks; 0 picks `convnet_depth_for((H, W))` (32 px -> 3, 16 px -> 2, ...;
        non-square: by min(H, W), ValueError when that is not a standard size).
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; valid: {list(CLASSIFIERS)}")
    h, w, c = image_shape
    if name == "convnet":
        return functools.partial(ConvNet, in_channels=c, num_classes=num_classes,
                                 image_size=(h, w), depth=depth or convnet_depth_for((h, w)),
                                 width=width, norm=norm)
    if name == "resnet18":
        return functools.partial(ResNet18, in_channels=c, num_classes=num_classes, norm=norm)
    return functools.partial(MLP, in_features=h * w * c, out_features=num_classes,
                             hidden=(width, width))
