"""Per-class access to a labelled set (host-side index selection).

Data selection happens once, on the host, before any jitted work, so it uses NumPy's
`np.random.default_rng(seed)`; library code that runs per step uses JAX keys instead.
"""

from __future__ import annotations

import numpy as np


def class_indices(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """`num_classes` int64 arrays; entry c holds the ascending indices i with `labels[i] == c`."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return [order[bounds[c]:bounds[c + 1]].astype(np.int64) for c in range(num_classes)]


def sample_per_class(seed_or_rng, labels: np.ndarray, num_classes: int, n: int) -> np.ndarray:
    """`[num_classes * n]` int64 indices: n distinct random examples per class, grouped by class.

    Block c (positions `c*n ... c*n + n - 1`) holds the first n entries of a random permutation of
    class c's indices — the references' `get_images(c, n)`. `seed_or_rng` is an int seed or a
    `np.random.Generator` (which advances). Raises `ValueError` if a class has fewer than n.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else \
        np.random.default_rng(seed_or_rng)
    per_class = class_indices(labels, num_classes)
    short = [(c, len(idx)) for c, idx in enumerate(per_class) if len(idx) < n]
    if short:
        listed = ", ".join(f"class {c} has {k}" for c, k in short)
        raise ValueError(f"cannot sample {n} examples per class without replacement: {listed}")
    picks = [idx[rng.permutation(len(idx))[:n]] for idx in per_class]
    return np.concatenate(picks) if picks else np.zeros(0, np.int64)
