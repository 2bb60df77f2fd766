"""Host-fed batches: each step's rows of a dataset read on the host, each process only its share.

A training step that gathers its batch inside the program (`images[idx]`) needs the whole split
on every device. `HostBatches` instead computes the step's row indices with the same jittable
function the step would use, reads those rows from host arrays (a numpy array or a read-only
memmap: rows are read when indexed) and assembles the global batch with
`jax.make_array_from_callback`, which asks each process for the shards of its own devices only.
So a process reads and holds only its devices' part of every batch, and a split larger than
one host's memory share can be sampled from disk.

The indices are computed on the process's default device `chunk` steps at a time, the next
chunk dispatched when the current one is first used, so reading them back never waits for the
training steps queued before it. They depend only on the step, so a resumed run reads exactly
what the uninterrupted one read, and every process computes the same indices.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class HostBatches:
    """`batches(step) -> tuple of global arrays`, one per source array.

    Args:
      arrays: host arrays `[N, ...]` sharing their first axis (e.g. images uint8, labels).
      rows_of_step: jittable `rows_of_step(step int32) -> int32 [*S]` source rows of step `step`
        (any batch shape S, e.g. `[B]` or `[R, C, B]`).
      targets: one sharding per array for its batch `[*S, *array.shape[1:]]`.
      chunk: steps whose indices are computed at once.
    """

    def __init__(self, arrays: Sequence, rows_of_step: Callable[[jax.Array], jax.Array],
                 targets: Sequence[jax.sharding.Sharding], chunk: int = 32):
        if len(arrays) != len(targets):
            raise ValueError(f"{len(arrays)} arrays but {len(targets)} target shardings")
        self.arrays, self.targets, self.chunk = tuple(arrays), tuple(targets), int(chunk)
        self._rows_of = jax.jit(jax.vmap(rows_of_step))
        self._ready: tuple[int, np.ndarray] | None = None
        self._next: tuple[int, jax.Array] | None = None

    def _dispatch(self, start: int) -> jax.Array:
        return self._rows_of(jnp.arange(start, start + self.chunk, dtype=jnp.int32))

    def rows(self, step: int) -> np.ndarray:
        """The source rows `[*S]` of step `step` (host)."""
        start = step - step % self.chunk
        if self._ready is None or self._ready[0] != start:
            pending = self._next[1] if self._next and self._next[0] == start else None
            self._ready = (start, np.asarray(pending if pending is not None
                                             else self._dispatch(start)))
            self._next = (start + self.chunk, self._dispatch(start + self.chunk))
        return self._ready[1][step - start]

    def __call__(self, step: int) -> tuple[jax.Array, ...]:
        rows = self.rows(int(step))
        return tuple(_assemble(a, rows, t) for a, t in zip(self.arrays, self.targets))


def _assemble(array, rows: np.ndarray, target: jax.sharding.Sharding) -> jax.Array:
    """The global array `array[rows]` placed by `target`, reading only this process's shards
    (each distinct shard once: replicated devices share the read)."""
    k = rows.ndim
    read: dict[str, np.ndarray] = {}

    def shard(index):
        key = repr(index[:k])
        if key not in read:
            r = rows[index[:k]]
            read[key] = np.asarray(array[r.reshape(-1)]).reshape(*r.shape, *array.shape[1:])
        return read[key][(slice(None),) * k + tuple(index[k:])]

    return jax.make_array_from_callback((*rows.shape, *array.shape[1:]), target, shard)
