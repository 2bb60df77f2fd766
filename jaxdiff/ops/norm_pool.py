"""Normalisation and pooling used by the ConvNet family.

`instance_norm` carries a hand-written JVP. Autodiff of the textbook formula (mean, then the
mean of squared deviations, then normalise) keeps several full-size intermediates alive for
the backward pass (x - mean, the normalised x, the affine output) and differentiates through
the mean inside the variance. At batch 256 the first ConvNet layer's activations are 128 MiB
each, and on XLA:CPU every live temporary is also page-faulted in on every call, so each
avoidable residual costs twice. The rule below keeps one residual (the normalised x, plus
per-sample statistics) and its transpose is the standard two-reduction backward pass
(`mean(g)`, `mean(g * x_hat)`), which XLA fuses into one pass plus one elementwise pass.
It is plain `jax.custom_jvp`, so forward mode, reverse mode, higher orders and `vmap` work.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _stats(x: jax.Array, eps: float):
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    # Two-pass variance (mean of squared deviations): accurate when |mean| >> std.
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return mean, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _instance_norm(x, scale, bias, eps):
    mean, rstd = _stats(x, eps)
    return (x - mean) * rstd * scale + bias


def _is_zero(t) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)


def _instance_norm_jvp(eps, primals, tangents):
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    mean, rstd = _stats(x, eps)
    x_hat = (x - mean) * rstd
    y = x_hat * scale + bias
    dy = jnp.zeros_like(y)
    if not _is_zero(dx):
        # d x_hat = rstd * (dx - mean(dx) - x_hat * mean(dx * x_hat))  (per sample, channel)
        dxh = rstd * (
            dx
            - jnp.mean(dx, axis=(1, 2), keepdims=True)
            - x_hat * jnp.mean(dx * x_hat, axis=(1, 2), keepdims=True)
        )
        dy = dxh * scale
    if not _is_zero(dscale):
        dy = dy + x_hat * dscale
    if not _is_zero(dbias):
        dy = dy + dbias
    return y, dy


# Symbolic zeros: differentiating only with respect to the affine parameters (or only x)
# must not spend full-size work on zero tangents.
_instance_norm.defjvp(_instance_norm_jvp, symbolic_zeros=True)


def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Per-sample, per-channel normalisation over H and W with a learned affine.

    Equals PyTorch `GroupNorm(C, C, affine=True, eps=eps)` (the references' 'instancenorm'):
    `y = (x - mean_hw(x)) / sqrt(var_hw(x) + eps) * scale + bias` (biased variance).

    Args:
      x: `[N, H, W, C]`.
      scale, bias: `[C]`.
      eps: added to the variance.

    Returns:
      `[N, H, W, C]`.
    """
    dtype = jnp.result_type(x, scale, bias)
    return _instance_norm(
        jnp.asarray(x, dtype), jnp.asarray(scale, dtype), jnp.asarray(bias, dtype), float(eps)
    )


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 on `[N, H, W, C]` (H, W even): `[N, H/2, W/2, C]`."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
