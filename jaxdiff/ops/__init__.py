"""Low-level operations whose fastest implementation depends on the platform.

`conv2d` switches between XLA's convolution and a CPU-fast formulation of its derivatives
(see `jaxdiff.ops.conv`); `set_conv_impl` / `conv_impl` / ``$JAXDIFF_CONV_IMPL`` choose the
default, read when a function is traced. `instance_norm_relu_avg_pool2` is the ConvNet block's
tail with a hand-written backward pass, which the ConvNet uses on CPU (see `jaxdiff.ops.norm_pool`).
"""

from jaxdiff.ops.conv import conv2d, conv_impl, get_conv_impl, set_conv_impl
from jaxdiff.ops.norm_pool import avg_pool2, instance_norm, instance_norm_relu_avg_pool2

__all__ = [
    "conv2d",
    "conv_impl",
    "get_conv_impl",
    "set_conv_impl",
    "instance_norm",
    "instance_norm_relu_avg_pool2",
    "avg_pool2",
]
