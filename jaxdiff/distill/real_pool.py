"""The real training images by class, and the per-class batches the losses draw.

DM, DC and LCMat-C compare the synthetic images of class c with a batch of real images of class c
every step (dd-common.md §5.3, §7: `get_images(c, batch_real)`, a random subset of the class drawn
without replacement). The pool stays on the host as uint8 (`RealPool`); `real_batches` reads each
step's batches, each process only the rows its devices hold, and the step normalises them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.data.classes import class_indices
from jaxdiff.data.transforms import normalize_with
from jaxdiff.feeding import HostBatches


class RealPool(NamedTuple):
    """Real images by class, on the host.

    Attributes:
      source: `[N, H, W, Ch]` uint8, the split (a numpy array or a read-only memmap: only the
        rows a batch needs are read).
      rows: `[C, n]` int64, the `source` row of pool image i of class c; n = the smallest class's
        size (every class is cut to n: fixed shapes; the first n images of each class in split
        order).
      mean, std: `[Ch]` float32 normalisation statistics of pixels in [0, 1].
    """

    source: np.ndarray
    rows: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def per_class(self) -> int:
        return int(self.rows.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.rows.shape[0])

    def class_images(self) -> np.ndarray:
        """Every pooled image: `[C, n, H, W, Ch]` uint8 (reads the whole pool)."""
        return self.source[self.rows]

    def normalised(self) -> jax.Array:
        """Every pooled image, normalised, on the default device: `[C, n, H, W, Ch]` float32."""
        return normalize_with(jnp.asarray(self.class_images()), jnp.asarray(self.mean),
                              jnp.asarray(self.std))


class NormalisedPool:
    """A `RealPool` as `real_by_class` for `Parameterisation.init`, read on demand: `shape`
    `[C, n, H, W, Ch]`; `take_per_class(idx [C, k]) -> [C, k, H, W, Ch]` float32, the
    normalised pool images at positions `idx` (only those are read; the same values as
    `pool.normalised()`)."""

    def __init__(self, pool: RealPool):
        self.pool = pool
        self.shape = (pool.num_classes, pool.per_class, *pool.source.shape[1:])
        self.ndim = len(self.shape)

    def take_per_class(self, idx: np.ndarray) -> jax.Array:
        rows = np.take_along_axis(self.pool.rows, np.asarray(idx), axis=1)
        u8 = np.asarray(self.pool.source[rows.reshape(-1)]).reshape(*rows.shape, *self.shape[2:])
        return normalize_with(jnp.asarray(u8), jnp.asarray(self.pool.mean),
                              jnp.asarray(self.pool.std))


def make_real_pool(images: np.ndarray, labels: np.ndarray, num_classes: int, mean, std
                   ) -> RealPool:
    """Group a split `images [N, H, W, Ch]` uint8, `labels [N]` by class into a `RealPool`
    (`images` is kept by reference, not copied).

    Raises ValueError when a class has no image.
    """
    per_class = class_indices(labels, num_classes)
    n = min(len(i) for i in per_class)
    if n == 0:
        empty = [c for c, i in enumerate(per_class) if len(i) == 0]
        raise ValueError(f"classes {empty} have no training images")
    return RealPool(images, np.stack([i[:n] for i in per_class]).astype(np.int64),
                    np.asarray(mean, np.float32), np.asarray(std, np.float32))


def draw_indices(key: jax.Array, num_classes: int, n: int, batch: int) -> jax.Array:
    """`[C, batch]` int32 pool positions of one real batch: class c takes the first `batch` of
    `permutation(split(key, C)[c], n)` (without replacement; `batch <= n`). Jittable."""
    return jax.vmap(lambda k: jax.random.permutation(k, n)[:batch])(
        jax.random.split(key, num_classes))


def sample_real(pool_images: jax.Array, mean: jax.Array, std: jax.Array, key: jax.Array,
                batch: int) -> jax.Array:
    """`[C, batch, H, W, Ch]` normalised real images drawn from a device-resident
    `pool_images [C, n, H, W, Ch]` uint8 by `draw_indices` (the in-program form of
    `real_batches`, which the steps use; kept as its reference)."""
    num_classes, n = pool_images.shape[:2]
    idx = draw_indices(key, num_classes, n, batch)
    x = jax.vmap(lambda images, i: images[i])(pool_images, idx)
    return normalize_with(x, mean, std)


def real_batches(pool: RealPool, batch: int, loop_key: jax.Array, real_keys: Callable,
                 target: jax.sharding.Sharding, chunk: int = 32) -> HostBatches:
    """The real batches of every step, read on the host, each process only its devices' rows.

    Step s reads R batches (R = 1 for DM, the outer-loop count for DC): batch r holds the
    `draw_indices(real_keys(fold_in(loop_key, s))[r], C, n, batch)` images of each class,
    exactly what `sample_real` draws in a program (`feeding.HostBatches` does the reading).

    Returns `feed` with `feed(step) -> (real [R, C, batch, H, W, Ch] uint8 global array,)`
    placed by `target`: a `Built.extra_args`.
    """
    if not 1 <= batch <= pool.per_class:
        raise ValueError(f"a real batch of {batch} images per class needs 1..{pool.per_class} "
                         "(the smallest class's size)")
    c, n = pool.rows.shape
    rows = jnp.asarray(pool.rows, jnp.int32)

    def rows_of_step(step):
        idx = jax.vmap(lambda k: draw_indices(k, c, n, batch))(
            real_keys(jax.random.fold_in(loop_key, step)))           # [R, C, batch] positions
        return jnp.take_along_axis(rows[None], idx, axis=2)         # their source rows

    return HostBatches((pool.source,), rows_of_step, (target,), chunk)
