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

`instance_norm_relu_avg_pool2` is the whole block tail (norm, ReLU, 2x2 average pool) with a
hand-written backward pass, faster on XLA:CPU than the transpose of the composition; it is a
`jax.custom_vjp` (no forward mode through it), which ConvNet blocks use on CPU only.
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


def _avg_pool2_slices(z: jax.Array) -> jax.Array:
    # The mean of four strided slices, which XLA:CPU fuses with its producer into one loop. A
    # reduce over the 2x2 windows would become a YNNPACK reduction whose inputs (the affine
    # output, a broadcast zero for the ReLU) are first written out in full.
    return 0.25 * ((z[:, 0::2, 0::2] + z[:, 0::2, 1::2]) + (z[:, 1::2, 0::2] + z[:, 1::2, 1::2]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _norm_relu_pool(x, scale, bias, eps):
    # Evaluated only where nothing is differentiated (embeddings, test passes): the plain
    # composition is the faster forward there (30 vs 37 ms at [256, 32, 32, 128]), since the
    # rule below writes out the centred input as its residual.
    return avg_pool2(jax.nn.relu(instance_norm(x, scale, bias, eps)))


def _norm_relu_pool_fwd(x, scale, bias, eps):
    xc = x - jnp.mean(x, axis=(1, 2), keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xc), axis=(1, 2), keepdims=True) + eps)
    y = _avg_pool2_slices(jnp.maximum(xc * (rstd * scale) + bias, 0))
    return y, (xc, rstd, scale, bias)


def _norm_relu_pool_bwd(eps, res, gy):
    xc, rstd, scale, bias = res
    n, h, w, c = xc.shape
    a = rstd * scale
    # The pooled gradient spread over each window, kept where the ReLU was active (the affine
    # output recomputed from the centred input, not stored).
    up = jnp.broadcast_to((0.25 * gy)[:, :, None, :, None, :], (n, h // 2, 2, w // 2, 2, c))
    g = jnp.where(xc * a + bias > 0, up.reshape(n, h, w, c), 0)
    sum_g = jnp.sum(g, axis=(1, 2), keepdims=True)                  # [N, 1, 1, C]
    sum_gxc = jnp.sum(g * xc, axis=(1, 2), keepdims=True)           # [N, 1, 1, C]
    inv_hw = 1.0 / (h * w)
    # d x = rstd * scale * (g - mean(g) - x_hat * mean(g * x_hat)),  x_hat = xc * rstd
    dx = a * (g - sum_g * inv_hw - xc * (rstd * rstd * sum_gxc * inv_hw))
    dscale = jnp.sum(rstd * sum_gxc, axis=(0, 1, 2))
    dbias = jnp.sum(sum_g, axis=(0, 1, 2))
    return dx, dscale, dbias


_norm_relu_pool.defvjp(_norm_relu_pool_fwd, _norm_relu_pool_bwd)


def instance_norm_relu_avg_pool2(x: jax.Array, scale: jax.Array, bias: jax.Array,
                                 eps: float = 1e-5) -> jax.Array:
    """`avg_pool2(relu(instance_norm(x, scale, bias, eps)))`, the ConvNet block's tail, with a
    hand-written backward pass.

    Autodiff of the composition stores the normalised input and the ReLU mask and lets XLA:CPU
    build the backward pass from YNNPACK reductions that first write out every broadcast
    operand in full (the scale, a zero, the normalised input). This op keeps one residual (the
    centred input, plus per-sample statistics), recomputes the affine output in the backward
    pass, and needs two reductions there: 153 -> 110 ms forward and backward at
    `[256, 32, 32, 128]` on the 2-core dev machine, a ConvNet-D3 train step 632 -> 555 ms
    (benchmarks/results/evaluate_cpu.md §5). Its backward pass is plain `jnp`, so reverse mode
    of any order, forward-over-reverse (Hessian-vector products) and `vmap` work; forward mode
    applied to this op itself (`jax.jvp`, `jax.jacfwd`) does not (a `jax.custom_vjp`).

    Args:
      x: `[N, H, W, C]`, H and W even.
      scale, bias: `[C]`.
      eps: added to the variance.

    Returns:
      `[N, H/2, W/2, C]`.
    """
    n, h, w, c = jnp.shape(x)
    if h % 2 or w % 2:
        raise ValueError(f"instance_norm_relu_avg_pool2 needs even H and W, got {(h, w)}")
    dtype = jnp.result_type(x, scale, bias)
    return _norm_relu_pool(jnp.asarray(x, dtype), jnp.asarray(scale, dtype),
                           jnp.asarray(bias, dtype), float(eps))
