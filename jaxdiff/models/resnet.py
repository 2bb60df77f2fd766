"""CIFAR ResNet-18, as used by DeepCore/LCMat for selection and subset evaluation (lcmat.md §9).

    ResNet18(x: [N, H, W, C_in]) -> logits [N, num_classes]
    ResNet18.embed(x)            -> [N, 512] pooled features

DeepCore's `ResNet_32x32` (the kuangliu/pytorch-cifar layout):

* stem: 3x3 conv, 64 filters, stride 1, padding 1, no bias -> norm -> ReLU; no max-pool;
* 4 stages of 2 BasicBlocks, widths 64/128/256/512, first-block strides 1/2/2/2;
  BasicBlock: conv3x3(stride) -> norm -> ReLU -> conv3x3 -> norm, plus the shortcut, -> ReLU;
  the shortcut is a 1x1 conv (stride, no bias) + norm when the shape changes, else identity;
* global average pool -> 512 features -> Linear(num_classes).

The reference pools with `avg_pool2d(4)`, which is a global average exactly for its 32x32 and
28x28 inputs (4x4 final maps); the global mean used here equals it there and also works for
other sizes. Convs have no bias (as in the reference); the head is PyTorch-initialised with
bias. Norm layers: "batchnorm" (default, PyTorch momentum/eps), "instancenorm" (DC's ResNet
option: GroupNorm(C, C)), "groupnorm" (4 groups) or "none". CIFAR-10: 11,173,962 parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.init import Conv2d, linear, make_norm

RESNET_NORMS = ("batchnorm", "instancenorm", "groupnorm", "none")


def _norm(kind, channels, param_dtype, rngs):
    return make_norm(kind, channels, param_dtype=param_dtype, rngs=rngs)


def _apply(norm, x):
    return x if norm is None else norm(x)


class BasicBlock(nnx.Module):
    """Two 3x3 convs with a residual connection: `[N, H, W, C_in] -> [N, H/s, W/s, planes]`."""

    def __init__(self, in_planes: int, planes: int, stride: int, *, norm: str, param_dtype,
                 rngs: nnx.Rngs):
        self.conv1 = Conv2d(in_planes, planes, 3, stride=stride, padding=1, use_bias=False,
                            param_dtype=param_dtype, rngs=rngs)
        self.norm1 = _norm(norm, planes, param_dtype, rngs)
        self.conv2 = Conv2d(planes, planes, 3, stride=1, padding=1, use_bias=False,
                            param_dtype=param_dtype, rngs=rngs)
        self.norm2 = _norm(norm, planes, param_dtype, rngs)
        if stride != 1 or in_planes != planes:
            self.shortcut_conv = Conv2d(in_planes, planes, 1, stride=stride, padding=0,
                                        use_bias=False, param_dtype=param_dtype, rngs=rngs)
            self.shortcut_norm = _norm(norm, planes, param_dtype, rngs)
        else:
            self.shortcut_conv = None
            self.shortcut_norm = None

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(_apply(self.norm1, self.conv1(x)))
        out = _apply(self.norm2, self.conv2(out))
        short = x if self.shortcut_conv is None else _apply(self.shortcut_norm,
                                                            self.shortcut_conv(x))
        return jax.nn.relu(out + short)


class ResNet18(nnx.Module):
    """CIFAR ResNet-18 (DeepCore `ResNet_32x32(BasicBlock, [2, 2, 2, 2])`).

    Args:
      rngs: `nnx.Rngs` (first argument, for `make_model(nnx.Rngs(key))` factories).
      in_channels: C_in.
      num_classes: output logits.
      norm: one of `RESNET_NORMS`; "batchnorm" starts in train mode.
      widths: stage widths (64, 128, 256, 512); smaller values make cheap test networks.
      blocks: BasicBlocks per stage (2, 2, 2, 2).
      param_dtype: parameter dtype.

    Attributes:
      feature_dim: widths[-1] (512), the size of `embed`'s output.
    """

    def __init__(
        self,
        rngs: nnx.Rngs,
        *,
        in_channels: int,
        num_classes: int,
        norm: str = "batchnorm",
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        param_dtype=jnp.float32,
    ):
        if norm not in RESNET_NORMS:
            raise ValueError(f"unknown ResNet norm {norm!r}; expected one of {RESNET_NORMS}")
        if len(widths) != len(blocks):
            raise ValueError(f"widths {tuple(widths)} and blocks {tuple(blocks)} differ in length")
        self.stem = Conv2d(in_channels, widths[0], 3, stride=1, padding=1, use_bias=False,
                           param_dtype=param_dtype, rngs=rngs)
        self.stem_norm = _norm(norm, widths[0], param_dtype, rngs)
        layers = []
        in_planes = widths[0]
        for stage, (planes, n) in enumerate(zip(widths, blocks)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride, norm=norm,
                                         param_dtype=param_dtype, rngs=rngs))
                in_planes = planes
        self.layers = nnx.List(layers)
        self.feature_dim = in_planes
        self.classifier = linear(in_planes, num_classes, param_dtype=param_dtype, rngs=rngs)

    def embed(self, x: jax.Array) -> jax.Array:
        """`x: [N, H, W, C_in] -> [N, feature_dim]`: globally average-pooled last-stage features."""
        out = jax.nn.relu(_apply(self.stem_norm, self.stem(x)))
        for layer in self.layers:
            out = layer(out)
        return jnp.mean(out, axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x: [N, H, W, C_in] -> logits [N, num_classes]`."""
        return self.classifier(self.embed(x))
