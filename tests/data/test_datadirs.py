"""The data-directory search (`jaxdiff.data.datadirs`): every searched directory named when
nothing is found, search order and version choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxdiff import data
from jaxdiff.data import datadirs

from tests.helpers import fake_prepared


def test_missing_data_names_every_directory(tmp_path, monkeypatch):
    jd, td, home = tmp_path / "jd", tmp_path / "td", tmp_path / "home"
    monkeypatch.setenv("JAXDIFF_DATA_DIR", str(jd))
    monkeypatch.setenv("TFDS_DATA_DIR", str(td))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(datadirs, "_REPO_ROOT", tmp_path / "repo")  # no shared/tfds beside it
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load("cifar100", "train")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    positions = [msg.index(str(p)) for p in (jd, td, home / "tensorflow_datasets")]
    assert positions == sorted(positions)  # listed in search order
    assert "'cifar100'" in msg and "tfds build cifar100" in msg and "JAXDIFF_DATA_DIR" in msg
    # An explicit data_dir is the only directory searched.
    with pytest.raises(FileNotFoundError) as err:
        data.load("mnist", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and str(jd) not in str(err.value)


def test_search_order_and_version_choice(tmp_path, monkeypatch):
    jd, td = tmp_path / "jd", tmp_path / "td"
    monkeypatch.setenv("JAXDIFF_DATA_DIR", str(jd))
    monkeypatch.setenv("TFDS_DATA_DIR", str(td))
    fake_prepared(td, "mnist", "3.0.1")
    assert data.locate("mnist").data_dir == td.resolve()
    fake_prepared(jd, "mnist", "9.0.0")
    fake_prepared(jd, "mnist", "10.0.0")  # numeric, not lexicographic, ordering
    (jd / "mnist" / "11.0.0").mkdir()  # no dataset_info.json: not a prepared version
    found = data.locate("mnist")
    assert found.data_dir == jd.resolve() and found.version == "10.0.0"
    # A shared/tfds folder beside the checkout comes after the env vars, before ~/.
    monkeypatch.setattr(datadirs, "_REPO_ROOT", tmp_path / "checkout")
    home_default = Path("~/tensorflow_datasets").expanduser()
    assert [d for d, _ in data.candidate_dirs()] == [jd, td, home_default]
    (tmp_path / "shared" / "tfds").mkdir(parents=True)
    dirs = [d for d, _ in data.candidate_dirs()]
    assert dirs == [jd, td, (tmp_path / "shared" / "tfds").resolve(), home_default]
