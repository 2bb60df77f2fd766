"""Per-class access (`jaxdiff.data.classes`)."""

from __future__ import annotations


import numpy as np
import pytest

from jaxdiff import data


def test_class_indices_hand_case():
    labels = np.array([2, 0, 1, 0, 2, 2])
    got = data.class_indices(labels, 4)
    assert [g.tolist() for g in got] == [[1, 3], [2], [0, 4, 5], []]
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        data.class_indices(labels, 2)


def test_sample_per_class():
    labels = np.repeat(np.arange(5), [7, 3, 9, 4, 5])
    np.random.default_rng(0).shuffle(labels)
    idx = data.sample_per_class(3, labels, 5, 3)
    assert idx.shape == (15,)
    np.testing.assert_array_equal(labels[idx], np.repeat(np.arange(5), 3))
    assert len(np.unique(idx)) == 15
    np.testing.assert_array_equal(idx, data.sample_per_class(3, labels, 5, 3))
    assert not np.array_equal(idx, data.sample_per_class(4, labels, 5, 3))
    # A Generator is accepted and advances.
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(data.sample_per_class(rng, labels, 5, 3), idx)
    assert not np.array_equal(data.sample_per_class(rng, labels, 5, 3), idx)
    # n equal to the smallest class takes the whole class.
    full = data.sample_per_class(0, labels, 5, 3)
    np.testing.assert_array_equal(np.sort(full[3:6]), np.flatnonzero(labels == 1))
    with pytest.raises(ValueError, match="class 1 has 3, class 3 has 4"):
        data.sample_per_class(0, labels, 5, 5)
