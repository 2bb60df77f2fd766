"""Classifier factories by name (`jaxdiff.models.classifiers`)."""

import pytest
from flax import nnx

from jaxdiff import models
from jaxdiff.models.classifiers import classifier_factory


def test_factories_build_the_named_network():
    conv = classifier_factory("convnet", (16, 16, 1), 10, width=8)(nnx.Rngs(0))
    assert isinstance(conv, models.ConvNet) and len(conv.blocks) == 2   # depth by image size
    assert classifier_factory("convnet", (16, 16, 1), 10, depth=1, width=8).keywords["depth"] == 1
    assert isinstance(classifier_factory("mlp", (4, 4, 3), 5, width=6)(nnx.Rngs(0)), models.MLP)
    assert classifier_factory("resnet18", (32, 32, 3), 10).func is models.ResNet18
    with pytest.raises(ValueError, match="unknown classifier 'vit'"):
        classifier_factory("vit", (32, 32, 3), 10)
