"""Fixed-shape minibatches for jitted training and test loops (one last-batch rule everywhere).

The rule: an epoch over `n` examples with batch size `b = min(batch_size, n)` has
`S = ceil(n / b)` batches of a fresh permutation; the last batch is filled up to `b` with
index 0 at weight 0 (PyTorch's `DataLoader(shuffle=True, drop_last=False)`: the smaller last
batch is masked, not dropped). Losses divide by the weight sum (`masked_mean`), so the padding
contributes nothing. Every training loop of the library uses `epoch_batches` (evaluation
protocol, expert training, DC's inner network training, selection pre-training); test passes
use `padded_batches` with label -1 for the padding.

The only loop that drops the ragged tail instead is the quality network's training
(`drop_remainder=True`): it trains for many epochs on a whole split, so every image is still
seen, and its cached networks were trained that way.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> tuple[int, int]:
    """`(S, b)`: batches per epoch and the batch size actually used (`b = min(batch_size, n)`)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 examples and batch_size >= 1, got n={n}, "
                         f"batch_size={batch_size}")
    b = min(int(batch_size), int(n))
    return (n // b if drop_remainder else math.ceil(n / b)), b


def epoch_batches(key: jax.Array, n: int, batch_size: int, *, drop_remainder: bool = False
                  ) -> tuple[jax.Array, jax.Array]:
    """One epoch's minibatches of a random permutation of `n` examples.

    Args:
      key: typed PRNG key of this epoch; the permutation is `permutation(key, n)`.
      n, batch_size: static ints.
      drop_remainder: drop the last partial batch instead of padding it.
    Returns:
      `idx [S, b]` int32 and `weights [S, b]` float32 (1 for real entries, 0 for the padding at
      index 0), with `(S, b) = num_batches(n, batch_size)`.
    """
    steps, b = num_batches(n, batch_size, drop_remainder=drop_remainder)
    perm = jax.random.permutation(key, n)
    if drop_remainder:
        idx = perm[:steps * b].reshape(steps, b)
        return idx.astype(jnp.int32), jnp.ones((steps, b), jnp.float32)
    pad = steps * b - n
    idx = jnp.concatenate([perm, jnp.zeros(pad, perm.dtype)]).reshape(steps, b)
    w = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)]).reshape(steps, b)
    return idx.astype(jnp.int32), w.astype(jnp.float32)


def padded_batches(x: jax.Array, batch_size: int, fill=0) -> jax.Array:
    """`x [n, ...] -> [S, b, ...]` with `(S, b) = num_batches(n, batch_size)`, the tail filled
    with `fill` (use -1 for labels so padded rows never count as correct)."""
    steps, b = num_batches(x.shape[0], batch_size)
    pad = steps * b - x.shape[0]
    widths = ((0, pad),) + ((0, 0),) * (x.ndim - 1)
    return jnp.pad(x, widths, constant_values=fill).reshape(steps, b, *x.shape[1:])


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """`sum(values * weights) / sum(weights)` (0 for an all-zero-weight batch)."""
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)
