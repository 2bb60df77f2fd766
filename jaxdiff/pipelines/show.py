"""`jaxdiff show RUN_DIR`: PNG grids of the labelled image sets a run wrote."""

from __future__ import annotations

import os

import numpy as np

from jaxdiff.distill.synset import load_synset
from jaxdiff.errors import UserError
from jaxdiff.images import save_grid


def show(run_dir: str, out: str | None = None, max_images: int = 400) -> str:
    """Write a grid of the run's `synthetic.npz` images (de-normalised), one class per row."""
    s = load_synset(run_dir)
    if s.zca:
        raise UserError(f"{run_dir} holds ZCA-space images; showing them needs the training "
                        "ZCA's inverse, which the set does not store")
    images = np.clip(s.images[:max_images] * s.std + s.mean, 0.0, 1.0)
    labels = s.labels[:max_images]
    counts = np.bincount(labels)
    ncol = int(counts.max()) if counts.max() > 1 else len(counts)
    ncol = min(ncol, 20)
    if out is None:
        base = run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir)
        out = os.path.join(base, "show.png")
    scale = max(1, 64 // images.shape[1])
    return save_grid(out, images, ncol=ncol, scale=scale)
