"""The saved labelled-set format (`jaxdiff.distill.synset`)."""

import numpy as np
import pytest

from jaxdiff.distill.synset import LabelledSet, load_synset, save_synset


def test_synset_round_trip(tmp_path):
    s = LabelledSet(np.random.rand(4, 5, 5, 3).astype(np.float32), np.array([0, 0, 1, 1]), "cifar10",
                    np.array([0.1, 0.2, 0.3]), np.array([0.4, 0.5, 0.6]), lr=0.02, method="test")
    path = save_synset(tmp_path, s)
    t = load_synset(path)
    np.testing.assert_array_equal(t.images, s.images)
    assert t.dataset == "cifar10" and t.method == "test" and abs(t.lr - 0.02) < 1e-7
    with pytest.raises(FileNotFoundError, match="synthetic.npz"):
        load_synset(tmp_path / "missing")
