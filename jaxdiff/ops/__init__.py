"""Low-level operations whose fastest implementation depends on the platform."""

from jaxdiff.ops.conv import conv2d
from jaxdiff.ops.norm_pool import avg_pool2, instance_norm

__all__ = ["conv2d", "instance_norm", "avg_pool2"]
