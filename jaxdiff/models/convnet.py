"""The ConvNet family of the dataset-distillation literature (dd-common.md §3).

    ConvNet(x: [N, H, W, C_in]) -> logits [N, num_classes]
    ConvNet.embed(x)            -> features [N, width * H_f * W_f]

`depth` blocks of [3x3 conv (width filters, padding 1, bias) -> norm -> activation -> 2x2 pool,
stride 2], then flatten -> Linear(num_classes). No dropout. Defaults are the references'
(DC `utils.py: get_default_convnet_setting`): width 128, instance norm, ReLU, average pooling.

* 28x28 inputs: the first conv uses padding 3 (28 -> 32), so MNIST/FashionMNIST nets equal the
  32 px net (ConvNetD3, 2048 features). The references key this on `channel == 1`; we key it on
  the image size, which is the same for every dataset they use and keeps the feature size
  consistent for any channel count.
* ConvNetD3 / D4 / D5 at 32 / 64 / 128 px all end on 4x4 maps: 128 * 4 * 4 = 2048 features.
* Features are flattened in NHWC order (h, w, c); PyTorch flattens (c, h, w). Only weights
  imported from PyTorch care (dd-common.md §3.4).
* Pooling of an odd-sized map drops the last row/column (PyTorch's floor behaviour).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.models.init import Conv2d, InstanceNorm, activation_fn, linear, make_norm
from jaxdiff.ops import avg_pool2, instance_norm, instance_norm_relu_avg_pool2

POOLINGS = ("avgpool", "maxpool", "none")
# The references' spellings ('avgpooling', 'maxpooling') are accepted too.
_POOL_ALIASES = {"avgpooling": "avgpool", "maxpooling": "maxpool"}


def convnet_depth_for(image_size: int | tuple[int, int]) -> int:
    """Depth whose last block ends on a 4x4 map: 8 -> 1, 16 -> 2, 32 -> 3, 64 -> 4, 128 -> 5.

    `image_size` is S (square) or `(H, W)`. 28 (or (28, 28)) -> 3 because the first conv pads 28
    to 32. Non-square (H, W): pooling halves both axes, so the depth is the one of the smaller
    side min(H, W) (its map ends at 4, the other side's at more), e.g. (32, 16) -> 2 on an 8x4
    map. Sizes (or min(H, W)) that are not 4 * 2^k (k >= 1) raise a ValueError that names the
    shape and says to pass depth explicitly.
    """
    h, w = ((int(image_size),) * 2 if np.ndim(image_size) == 0
            else tuple(int(s) for s in image_size))
    square = h == w
    size = 32 if (h, w) == (28, 28) else min(h, w)
    depth = 0
    while size > 4 and size % 2 == 0:
        size //= 2
        depth += 1
    if size != 4 or depth < 1:
        what = (f"image size {h}" if square else
                f"non-square image shape ({h}, {w}) (the depth follows min(H, W) = {min(h, w)})")
        raise ValueError(
            f"no standard ConvNet depth for {what}; expected 28 or 4 * 2^k "
            "(8, 16, 32, 64, 128, ...); pass depth= explicitly")
    return depth


def _pool(x: jax.Array, kind: str) -> jax.Array:
    """2x2, stride-2 pooling of `[N, H, W, C]` (floor for odd sizes)."""
    if kind == "none":
        return x
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    if (h, w) != x.shape[1:3]:
        x = x[:, :h, :w]
    if kind == "avgpool":
        return avg_pool2(x)
    n, _, _, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ConvBlock(nnx.Module):
    """conv 3x3 -> norm -> activation -> pool on `[N, H, W, C_in] -> [N, H', W', width]`."""

    def __init__(self, in_channels, width, *, padding, norm, activation, pooling, spatial,
                 param_dtype, rngs):
        self.conv = Conv2d(in_channels, width, 3, padding=padding, param_dtype=param_dtype,
                           rngs=rngs)
        self.norm = make_norm(norm, width, spatial, param_dtype=param_dtype, rngs=rngs)
        self.activation = activation
        self.pooling = pooling

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if (isinstance(self.norm, InstanceNorm) and self.activation == "relu"
                and self.pooling == "avgpool" and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0):
            # The references' default block. On CPU its tail is one op with a hand-written
            # backward pass (jaxdiff.ops.instance_norm_relu_avg_pool2; ConvNet-D3 train step
            # 0.632 -> 0.555 s); elsewhere the plain composition, chosen like `conv2d`'s "auto".
            scale, bias, eps = self.norm.scale[...], self.norm.bias[...], self.norm.eps
            return jax.lax.platform_dependent(
                x, scale, bias,
                cpu=lambda x, s, b: instance_norm_relu_avg_pool2(x, s, b, eps),
                default=lambda x, s, b: avg_pool2(jax.nn.relu(instance_norm(x, s, b, eps))))
        if self.norm is not None:
            x = self.norm(x)
        x = activation_fn(self.activation)(x)
        return _pool(x, self.pooling)


class ConvNet(nnx.Module):
    """ConvNet-D{depth} classifier (dd-common.md §3.1).

    Args:
      rngs: `nnx.Rngs` for the initialisation (first argument, so `make_model(nnx.Rngs(key))`
        works with `functools.partial(ConvNet, in_channels=..., ...)`).
      in_channels: C_in.
      num_classes: output logits.
      image_size: H = W of the inputs (int), or (H, W).
      depth: number of conv blocks (`convnet_depth_for(image_size)` gives the standard one).
      width: filters per conv.
      norm: "instancenorm" (default), "batchnorm", "layernorm", "groupnorm" or "none"
        (`jaxdiff.models.init.make_norm`).
      activation: "relu" (default), "sigmoid", "leakyrelu", "gelu", "silu".
      pooling: "avgpool" (default), "maxpool" or "none".
      param_dtype: parameter dtype (float32 default); inputs keep their dtype and promote.

    Attributes:
      feature_dim: size of `embed`'s output, width * H_f * W_f.
    """

    def __init__(
        self,
        rngs: nnx.Rngs,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int | tuple[int, int],
        depth: int = 3,
        width: int = 128,
        norm: str = "instancenorm",
        activation: str = "relu",
        pooling: str = "avgpool",
        param_dtype=jnp.float32,
    ):
        pooling = _POOL_ALIASES.get(pooling, pooling)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        activation_fn(activation)  # validate the name now, not at the first call
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        h, w = ((int(image_size),) * 2 if np.ndim(image_size) == 0
                else tuple(int(s) for s in image_size))
        self.image_size = (h, w)
        first_pad = 3 if (h, w) == (28, 28) else 1
        blocks = []
        c = in_channels
        for d in range(depth):
            pad = first_pad if d == 0 else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2  # 3x3 conv output size
            blocks.append(ConvBlock(c, width, padding=pad, norm=norm, activation=activation,
                                    pooling=pooling, spatial=(h, w), param_dtype=param_dtype,
                                    rngs=rngs))
            if pooling != "none":
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(
                    f"depth {depth} is too deep for image size {self.image_size}: the feature "
                    f"map vanishes after block {d + 1}")
            c = width
        self.blocks = nnx.List(blocks)
        self.feature_shape = (h, w, width)
        self.feature_dim = h * w * width
        self.classifier = linear(self.feature_dim, num_classes, param_dtype=param_dtype,
                                 rngs=rngs)

    def embed(self, x: jax.Array) -> jax.Array:
        """`x: [N, H, W, C_in] -> [N, feature_dim]`, the (h, w, c)-flattened last feature map."""
        for block in self.blocks:
            x = block(x)
        return x.reshape(x.shape[0], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x: [N, H, W, C_in] -> logits [N, num_classes]`."""
        return self.classifier(self.embed(x))
