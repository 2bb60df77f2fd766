"""PNG image grids for looking at datasets, synthetic sets and samples."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxdiff.distributed import is_main


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile `[N, H, W, C]` images in [0, 1] into one `[rows*(H+pad)+pad, cols*(W+pad)+pad, C]` array."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def save_grid(path: str | os.PathLike, images: np.ndarray, ncol: int | None = None,
              scale: int = 1) -> str:
    """Write a PNG grid of `[N, H, W, C]` images with values in [0, 1] (clipped); returns the path.

    `scale` enlarges each pixel (nearest neighbour) so small images (8x8 digits) are visible.
    """
    grid = np.clip(make_grid(images, ncol), 0.0, 1.0)
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    arr = (grid * 255 + 0.5).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not is_main():   # multi-process: process 0 writes (jaxdiff.distributed)
        return os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(arr).save(path)
    return os.fspath(path)
