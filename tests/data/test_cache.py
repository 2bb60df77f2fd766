"""The decoded-array cache (`jaxdiff.data.cache`): keys, corrupt entries, interrupted writes."""

from __future__ import annotations


import numpy as np
import pytest

from jaxdiff import data
from jaxdiff.data import cache as data_cache


def test_cache_keys_and_corrupt_entry(private_cache):
    key = {"version": "1.0.0", "data_dir": "/a", "image_size": None}
    p = data_cache.cache_path("x", "train", key)
    assert p != data_cache.cache_path("x", "train", {**key, "data_dir": "/b"})
    assert p != data_cache.cache_path("x", "train", {**key, "image_size": (16, 16)})
    assert p != data_cache.cache_path("x", "test", key)
    assert p.is_relative_to(private_cache)

    good = data.load("digits", "test")
    (entry,) = [d for d in (private_cache / "digits").iterdir()]
    (entry / "images.npy").write_bytes(b"garbage, not an npy file")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        again = data.load("digits", "test")
    np.testing.assert_array_equal(again.images, good.images)
    np.testing.assert_array_equal(data.load("digits", "test").images, good.images)  # rewritten


def test_interrupted_cache_write_leaves_no_entry(private_cache, monkeypatch):
    def interrupted_rename(src, dst):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(data_cache.os, "rename", interrupted_rename)
        with pytest.raises(KeyboardInterrupt):
            data.load("digits", "test")
    assert list((private_cache / "digits").iterdir()) == []  # no entry, no temp directory
    ds = data.load("digits", "test")
    assert ds.images.shape == (359, 8, 8, 1)
    assert len(list((private_cache / "digits").iterdir())) == 1
