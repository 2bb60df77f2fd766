"""Normalisation and pooling used by the ConvNet family (seams for platform-specific speed-ups)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Per-sample, per-channel normalisation over H and W with a learned affine.

    Equals PyTorch `GroupNorm(C, C, affine=True, eps=eps)` (the references' 'instancenorm').

    Args:
      x: `[N, H, W, C]`.
      scale, bias: `[C]`.
    """
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 on `[N, H, W, C]` (H, W even): `[N, H/2, W/2, C]`."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
