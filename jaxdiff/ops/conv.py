"""2-D convolution entry point used by every ConvNet in jaxdiff.

`conv2d` is the single seam through which models convolve, so that a platform-specific
implementation (issue 3: a custom-VJP convolution that is fast on XLA:CPU) can be swapped in
without touching model code. This placeholder delegates to `lax.conv_general_dilated`.
"""

from __future__ import annotations

import jax
from jax import lax


def conv2d(x: jax.Array, w: jax.Array, *, stride: int = 1, padding="SAME") -> jax.Array:
    """NHWC x HWIO convolution.

    Args:
      x: images `[N, H, W, C_in]`.
      w: kernel `[kh, kw, C_in, C_out]`.
      stride: spatial stride (same along H and W).
      padding: "SAME", "VALID", an int p (p pixels of zeros on every side) or a sequence of
        (low, high) pairs for H and W.

    Returns:
      `[N, H', W', C_out]` in x's dtype.
    """
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
