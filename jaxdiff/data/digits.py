"""scikit-learn's embedded digits (1797 8x8 grey images, 10 classes): the no-download default.

Pixels are integers 0..16 in scikit-learn; we scale them to uint8 with `rint(v * 255 / 16)` so
every dataset enters the library as uint8 (16 -> 255, 8 -> 128, 0 -> 0).

Split (jaxdiff's own; scikit-learn ships none): deterministic and stratified. With
`rng = np.random.default_rng(DIGITS_SPLIT_SEED)` and classes visited in order 0..9, each class's
indices (ascending) are permuted by `rng.permutation`, and the first `floor(0.2 * n_c + 0.5)` of
them go to the test split. This gives 359 test and 1438 train images. Both splits keep the
original (ascending) order of scikit-learn's arrays.
"""

from __future__ import annotations

import numpy as np

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def digits_split_indices() -> dict[str, np.ndarray]:
    """`{"train": [1438] int64, "test": [359] int64}` indices into scikit-learn's digits arrays."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    return _stratified_split(target, DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION)


def _stratified_split(labels: np.ndarray, seed: int, test_fraction: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = int(np.floor(test_fraction * len(idx) + 0.5))
        is_test[idx[rng.permutation(len(idx))[:n_test]]] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """`(images [N, 8, 8, 1] uint8 in 0..255, labels [N] int32)` for split "train" or "test"."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = _stratified_split(d.target, DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION)[split]
    images = np.rint(d.images[idx] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, d.target[idx].astype(np.int32)
