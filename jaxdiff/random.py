"""Per-sample randomness: sample i uses `fold_in(key, i)`, step k of it `fold_in(sample_key, k)`.

This makes results independent of batch size and sharding: a batch of N and N single runs draw
the same numbers (DESIGN.md §2, Randomness).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_keys(key: jax.Array, n: int, offset: int | jax.Array = 0) -> jax.Array:
    """Keys for samples `offset, ..., offset + n - 1`: `[n]` typed keys, `fold_in(key, i)`."""
    idx = jnp.arange(n, dtype=jnp.uint32) + jnp.asarray(offset, jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)


def step_key(sample_key: jax.Array, step: int | jax.Array) -> jax.Array:
    """Key of step `step` of one sample: `fold_in(sample_key, step)`."""
    return jax.random.fold_in(sample_key, jnp.asarray(step, jnp.uint32))


def as_key(key_or_seed) -> jax.Array:
    """Accept an int seed, a typed key, or a legacy uint32[2] key; return a typed key."""
    if isinstance(key_or_seed, int):
        return jax.random.key(key_or_seed)
    if jnp.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
        return key_or_seed
    return jax.random.wrap_key_data(key_or_seed)
