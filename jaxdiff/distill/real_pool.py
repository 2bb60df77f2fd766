"""The real training images on device, by class, and the per-class batches the losses draw.

DM, DC and LCMat-C compare the synthetic images of class c with a batch of real images of class c
every step (dd-common.md §5.3, §7: `get_images(c, batch_real)`, a random subset of the class drawn
without replacement). The pool keeps the images uint8 (a quarter of float32) and normalises each
drawn batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.data.classes import class_indices
from jaxdiff.data.transforms import normalize_with


class RealPool(NamedTuple):
    """Real images by class.

    Attributes:
      images: `[C, n, H, W, Ch]` uint8, n = the smallest class's size (every class is cut to n:
        fixed shapes; the first n images of each class in split order).
      mean, std: `[Ch]` float32 normalisation statistics of pixels in [0, 1].
    """

    images: jax.Array
    mean: jax.Array
    std: jax.Array

    @property
    def per_class(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.images.shape[0])

    def normalised(self) -> jax.Array:
        """Every pooled image, normalised: `[C, n, H, W, Ch]` float32."""
        return normalize_with(self.images, self.mean, self.std)


def make_real_pool(images: np.ndarray, labels: np.ndarray, num_classes: int, mean, std
                   ) -> RealPool:
    """Group a split `images [N, H, W, Ch]` uint8, `labels [N]` by class into a `RealPool`.

    Raises ValueError when a class has no image.
    """
    per_class = class_indices(labels, num_classes)
    n = min(len(i) for i in per_class)
    if n == 0:
        empty = [c for c, i in enumerate(per_class) if len(i) == 0]
        raise ValueError(f"classes {empty} have no training images")
    return RealPool(jnp.asarray(np.stack([images[i[:n]] for i in per_class])),
                    jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))


def sample_real(pool_images: jax.Array, mean: jax.Array, std: jax.Array, key: jax.Array,
                batch: int) -> jax.Array:
    """`[C, batch, H, W, Ch]` normalised real images: class c takes the first `batch` of
    `permutation(split(key, C)[c], n)` (without replacement; `batch <= n`)."""
    num_classes, n = pool_images.shape[:2]

    def one(c, k):
        idx = jax.random.permutation(k, n)[:batch]
        return pool_images[c, idx]

    x = jax.vmap(one)(jnp.arange(num_classes), jax.random.split(key, num_classes))
    return normalize_with(x, mean, std)
