"""Atomic writes and content fingerprints (`jaxdiff.files`)."""

import hashlib
import json
import os

import numpy as np
import pytest

from jaxdiff import files


def test_fingerprint_is_the_sha256_of_canonical_json():
    obj = {"b": [1, 2.5], "a": {"y": None, "x": "s"}, "p": os.path}   # a module: str()
    blob = json.dumps(obj, sort_keys=True, default=str)
    assert files.fingerprint(obj) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert files.fingerprint(obj, 12) == files.fingerprint(obj)[:12]
    # key order never matters
    assert files.fingerprint({"a": 1, "b": 2}) == files.fingerprint({"b": 2, "a": 1})


def test_atomic_writers_round_trip_and_leave_no_temporaries(tmp_path):
    files.atomic_write_json(tmp_path / "a.json", {"x": np.float32(1.5), "v": np.arange(3)})
    assert json.load(open(tmp_path / "a.json")) == {"x": 1.5, "v": [0, 1, 2]}
    files.atomic_write_text(tmp_path / "t.txt", "hello")
    assert open(tmp_path / "t.txt").read() == "hello"
    files.atomic_save_npy(tmp_path / "a.npy", np.eye(2))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.eye(2))
    files.atomic_savez(tmp_path / "z.npz", a=np.ones(2), b=[1, 2])
    with np.load(tmp_path / "z.npz") as z:
        assert sorted(z.files) == ["a", "b"]
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.npy", "t.txt", "z.npz"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    files.atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        files.atomic_write_text(path, 123)           # not text: fails while writing the temporary
    assert json.load(open(path)) == {"v": 1}
