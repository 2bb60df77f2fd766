"""Low-level operations whose fastest implementation depends on the platform."""

from jaxdiff.ops.conv import conv2d

__all__ = ["conv2d"]
