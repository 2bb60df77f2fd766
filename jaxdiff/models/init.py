"""PyTorch-default initialisation, and the parameterised layers that use it.

The dataset-distillation and coreset references are PyTorch code whose layers keep PyTorch's
default initialisation (dd-common.md §3.2):

* Conv2d / Linear weight: kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in),
  +1/sqrt(fan_in)), fan_in = C_in * kh * kw for a conv, in_features for a linear layer. In Flax
  terms this is `variance_scaling(1/3, "fan_in", "uniform")`, whose bound is
  sqrt(3 * scale / fan_in) = 1/sqrt(fan_in) (drawn here flat, see `_uniform_flat`).
* Bias: U(-1/sqrt(fan_in), +1/sqrt(fan_in)) with the *same layer's* fan_in (Flax's default is
  zeros, so it needs the custom initialiser below).
* Norm layers: scale 1, shift 0.

Layers here:

* `Conv2d`: HWIO kernel, optional bias, convolving through the `jaxdiff.ops.conv2d` seam (never
  `lax.conv*` directly, so the CPU-fast derivative path is used).
* `linear(...)`: an `nnx.Linear` with the PyTorch initialisers.
* `make_norm(kind, ...)`: the references' normalisation layers by name (`NORMS`), see its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.ops import conv2d, instance_norm

Initializer = nnx.initializers.Initializer

# PyTorch: momentum m updates running = (1 - m) * running + m * batch with m = 0.1; Flax keeps
# running = momentum * running + (1 - momentum) * batch, so 0.1 in PyTorch is 0.9 here.
TORCH_BN_MOMENTUM = 0.9
TORCH_NORM_EPS = 1e-5
# DC's 'groupnorm' option (networks.py `_get_normlayer`): GroupNorm(4, C).
GROUPNORM_GROUPS = 4

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")


def _uniform_flat(key, shape, dtype, bound: float) -> jax.Array:
    """U(-bound, bound) of `shape`, drawn as a flat vector and reshaped.

    Why flat: XLA:CPU compiles partitionable-threefry draws of rank-4 shapes ~8x slower than
    the same number of values drawn flat (measured 2.4 s vs 0.35 s for a 3x3x3x8 kernel), and
    every model initialisation pays it. Under the (default) partitionable threefry the values
    are the same as a direct draw of `shape`.
    """
    size = math.prod(shape)
    flat = jax.random.uniform(key, (size,), dtype, minval=-bound, maxval=bound)
    return flat.reshape(shape)


def torch_kernel_init() -> Initializer:
    """Kernel initialiser U(+-1/sqrt(fan_in)) for HWIO conv and [in, out] dense kernels.

    fan_in = product of all axes but the last (out) one, i.e. kh * kw * C_in for HWIO and
    in_features for a dense kernel, as in PyTorch. The distribution is Flax's
    `variance_scaling(1/3, "fan_in", "uniform")` (bound sqrt(3 * (1/3) / fan_in)).
    """

    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[:-1])
        return _uniform_flat(key, tuple(shape), dtype, 1.0 / math.sqrt(fan_in))

    return init


def torch_bias_init(fan_in: int) -> Initializer:
    """Bias initialiser U(-1/sqrt(fan_in), +1/sqrt(fan_in)) with the layer's kernel fan_in."""
    if fan_in <= 0:
        raise ValueError(f"fan_in must be positive, got {fan_in}")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return _uniform_flat(key, tuple(shape), dtype, bound)

    return init


class Conv2d(nnx.Module):
    """2-D convolution, NHWC input, HWIO kernel, PyTorch-default initialisation.

    `y = conv2d(x, kernel, stride, padding) + bias`, computed by `jaxdiff.ops.conv2d`.

    Args:
      in_channels, out_channels: C_in, C_out.
      kernel_size: k (square kernel `[k, k, C_in, C_out]`).
      stride: spatial stride.
      padding: zeros on every side (int), "SAME"/"VALID", or ((lo, hi), (lo, hi)).
      use_bias: add a `[C_out]` bias (PyTorch's `bias=True`).
      param_dtype: dtype of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | str | Sequence[tuple[int, int]] = 1,
        use_bias: bool = True,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.kernel = nnx.Param(torch_kernel_init()(rngs.params(), shape, param_dtype))
        fan_in = in_channels * kernel_size * kernel_size
        self.bias = (
            nnx.Param(torch_bias_init(fan_in)(rngs.params(), (out_channels,), param_dtype))
            if use_bias
            else None
        )
        self.stride = stride
        self.padding = padding if isinstance(padding, (int, str)) else tuple(map(tuple, padding))

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x: [N, H, W, C_in] -> [N, H', W', C_out]`."""
        y = conv2d(x, self.kernel[...], stride=self.stride, padding=self.padding)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def linear(
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """`nnx.Linear` (kernel `[in, out]`) with PyTorch's default weight and bias initialisation."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        kernel_init=torch_kernel_init(),
        bias_init=torch_bias_init(in_features),
        param_dtype=param_dtype,
        rngs=rngs,
    )


class InstanceNorm(nnx.Module):
    """PyTorch `GroupNorm(C, C, affine=True, eps)` = the references' 'instancenorm'.

    `y = (x - mean_hw) / sqrt(var_hw + eps) * scale + bias` per sample and channel (biased
    variance), through `jaxdiff.ops.instance_norm`. `scale, bias: [C]`, initialised 1 and 0.
    """

    def __init__(self, channels: int, *, eps: float = TORCH_NORM_EPS, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((channels,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((channels,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x: [N, H, W, C] -> [N, H, W, C]`."""
        return instance_norm(x, self.scale[...], self.bias[...], eps=self.eps)


class LayerNormHWC(nnx.Module):
    """PyTorch `LayerNorm([C, H, W], elementwise_affine=True)` on NHWC maps (DC's 'layernorm').

    Normalises each sample over all of H, W, C (biased variance, eps 1e-5), then applies an
    element-wise affine with `scale, bias: [H, W, C]` (one value per activation, 2*C*H*W
    parameters), initialised 1 and 0.
    """

    def __init__(self, shape_hwc: Sequence[int], *, eps: float = TORCH_NORM_EPS,
                 param_dtype=jnp.float32):
        shape_hwc = tuple(int(s) for s in shape_hwc)
        self.scale = nnx.Param(jnp.ones(shape_hwc, param_dtype))
        self.bias = nnx.Param(jnp.zeros(shape_hwc, param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x: [N, H, W, C] -> [N, H, W, C]`."""
        mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2, 3), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


def make_norm(
    kind: str,
    channels: int,
    spatial: tuple[int, int] | None = None,
    *,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Module | None:
    """The references' normalisation layer by name (DC `networks.py: _get_normlayer`).

    * "instancenorm": `InstanceNorm` (GroupNorm with one channel per group), eps 1e-5.
    * "batchnorm": `nnx.BatchNorm`, PyTorch momentum 0.1 (Flax 0.9), eps 1e-5, created in
      train mode (batch statistics; switch with `model.eval()`/`model.train()` or
      `jaxdiff.models.with_mode`). Running variance uses the biased batch variance (PyTorch
      keeps the unbiased one; eval outputs differ by a factor n/(n-1) in the variance).
    * "layernorm": `LayerNormHWC` over the `spatial + (channels,)` map (needs `spatial`).
    * "groupnorm": `nnx.GroupNorm` with 4 groups (DC's choice), eps 1e-5.
    * "none": returns None (identity).

    Two-pass variances everywhere (`use_fast_variance=False`): E[x^2] - E[x]^2 loses precision
    when |mean| >> std, and PyTorch does not do that either.
    """
    if kind == "instancenorm":
        return InstanceNorm(channels, param_dtype=param_dtype)
    if kind == "batchnorm":
        return nnx.BatchNorm(
            channels, momentum=TORCH_BN_MOMENTUM, epsilon=TORCH_NORM_EPS,
            use_running_average=False, use_fast_variance=False,
            param_dtype=param_dtype, rngs=rngs,
        )
    if kind == "layernorm":
        if spatial is None:
            raise ValueError("norm 'layernorm' needs the spatial size of the feature map")
        return LayerNormHWC((*spatial, channels), param_dtype=param_dtype)
    if kind == "groupnorm":
        if channels % GROUPNORM_GROUPS:
            raise ValueError(f"norm 'groupnorm' uses {GROUPNORM_GROUPS} groups; "
                             f"{channels} channels do not divide")
        return nnx.GroupNorm(
            channels, num_groups=GROUPNORM_GROUPS, epsilon=TORCH_NORM_EPS,
            use_fast_variance=False, param_dtype=param_dtype, rngs=rngs,
        )
    if kind == "none":
        return None
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


ACTIVATIONS = ("relu", "sigmoid", "leakyrelu", "gelu", "silu")


def activation_fn(name: str):
    """Activation by name: DC's 'relu', 'sigmoid', 'leakyrelu' (slope 0.01), plus 'gelu', 'silu'."""
    table = {
        "relu": jax.nn.relu,
        "sigmoid": jax.nn.sigmoid,
        "leakyrelu": lambda x: jax.nn.leaky_relu(x, 0.01),
        # PyTorch's nn.GELU default is the exact (erf) form.
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "silu": jax.nn.silu,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
    return table[name]
