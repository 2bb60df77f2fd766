"""The quality network's classifier (`jaxdiff.diffusion.quality_net`): a ConvNet body whose
output layer maps to a `feature_dim` embedding, ReLU (the features the Frechet distance uses),
then a linear classifier."""

from __future__ import annotations

import jax
from flax import nnx

from jaxdiff.models.convnet import ConvNet


class QualityClassifier(nnx.Module):
    """ConvNet body -> Linear(feature_dim) -> ReLU (features) -> Linear(num_classes) (logits)."""

    def __init__(self, rngs: nnx.Rngs, *, in_channels: int, num_classes: int, image_size: int,
                 depth: int, width: int, feature_dim: int):
        self.body = ConvNet(rngs, in_channels=in_channels, num_classes=feature_dim,
                            image_size=image_size, depth=depth, width=width,
                            norm="instancenorm")
        self.head = nnx.Linear(feature_dim, num_classes, rngs=rngs)

    def features(self, x):
        return jax.nn.relu(self.body(x))

    def __call__(self, x):
        return self.head(self.features(x))
