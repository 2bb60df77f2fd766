"""A plain MLP classifier (DC's `MLP`: Linear -> act -> Linear -> act -> Linear).

    MLP(x: [N, ...]) -> logits [N, out_features]     (inputs are flattened per sample)
    MLP.embed(x)     -> [N, hidden[-1]]               (last hidden activation)

PyTorch-default initialisation on every layer (`jaxdiff.models.init`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.init import activation_fn, linear


class MLP(nnx.Module):
    """Multi-layer perceptron.

    Args:
      rngs: `nnx.Rngs` (first argument, for `make_model(nnx.Rngs(key))` factories).
      in_features: D = product of the per-sample input shape (e.g. H * W * C).
      out_features: output size (classes).
      hidden: hidden widths, (128, 128) like DC's MLP; () gives a linear classifier.
      activation: "relu" (default), "sigmoid", "leakyrelu", "gelu", "silu".
      param_dtype: parameter dtype.

    Attributes:
      feature_dim: hidden[-1] (or in_features without hidden layers), `embed`'s output size.
    """

    def __init__(
        self,
        rngs: nnx.Rngs,
        *,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        param_dtype=jnp.float32,
    ):
        activation_fn(activation)  # validate now
        self.activation = activation
        self.in_features = in_features
        dims = (in_features, *hidden)
        self.hidden = nnx.List([
            linear(a, b, param_dtype=param_dtype, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])
        ])
        self.feature_dim = dims[-1]
        self.classifier = linear(dims[-1], out_features, param_dtype=param_dtype, rngs=rngs)

    def embed(self, x: jax.Array) -> jax.Array:
        """`x: [N, ...] (N * in_features values) -> [N, feature_dim]`."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"MLP expects {self.in_features} features per sample, got {x.shape[1]}")
        act = activation_fn(self.activation)
        for layer in self.hidden:
            x = act(layer(x))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x: [N, ...] -> logits [N, out_features]`."""
        return self.classifier(self.embed(x))
