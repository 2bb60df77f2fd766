"""`jaxdiff sample` with Inception FID: the statistics streamed on device during sampling (batch
by batch, the partial last batch masked) give the FID of the saved uint8 images; FID inputs are
checked before any sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxdiff.config_utils import load_config, set_values
from jaxdiff.fid import frechet, inception, stats
from jaxdiff.pipelines import sample as sample_pipeline
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.sample import resolve

_ROOT = Path(__file__).resolve().parents[2]
# shared/ sits next to the checkout (as in tests/models/test_edm.py) or inside it
EDM_FIXTURE = next((d for d in (_ROOT.parent / "shared" / "fixtures" / "edm",
                                _ROOT / "shared" / "fixtures" / "edm") if d.is_dir()),
                   _ROOT.parent / "shared" / "fixtures" / "edm")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fid_files")
    stats.save_reference(d / "ref.npz", np.full(2048, 0.1), np.eye(2048) * 0.5)
    (d / "weights.pth").write_bytes(b"stand-in: FI.load is replaced by the seeded network")
    return d


def _config(run_dir, files, **over):
    c = load_config("sample_cifar10_edm")
    pkl = (EDM_FIXTURE / "edm_ddpmpp_cond.pkl").resolve()
    return set_values(c, model_dir=str(pkl), num_samples=3, batch_size=2, num_devices=2,
                      save_samples=True, run_dir=str(run_dir), progress=False, **{
                          "solver.steps": 2, "fid.ref": str(files / "ref.npz"),
                          "expect.image_size": 16,
                          "fid.weights": str(files / "weights.pth"), **over})


@pytest.mark.skipif(not EDM_FIXTURE.is_dir(), reason="needs ../shared/fixtures/edm")
def test_streamed_fid_equals_the_fid_of_the_saved_images(tmp_path, files, net, monkeypatch):
    """3 samples in batches of 2 over 2 devices (the second batch's padded row masked): the FID
    streamed during sampling equals the FID of the saved uint8 images fed from the host."""
    monkeypatch.setattr(sample_pipeline.FI, "load", lambda path=None: net)
    out = sample_pipeline.run(resolve(_config(tmp_path / "run", files)))
    images = np.load(tmp_path / "run" / "samples.npz")["images"]
    assert images.shape == (3, 16, 16, 3)
    acc = stats.InceptionStatistics(net, batch_size=2, mesh=None)
    acc.add(images)
    want = frechet.fid_from_statistics(*acc.result(), *stats.load_reference(files / "ref.npz"))
    assert out["fid_num_samples"] == 3
    assert out["fid"] == pytest.approx(want, rel=1e-6)
    assert out["images_per_s"] > 0 and out["nfe"] == out["nfe_executed"] == 3
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["fid"] == out["fid"] and written["fid_reference"] == str(files / "ref.npz")


def test_fid_inputs_are_checked_before_sampling(tmp_path, files):
    c = _config(tmp_path / "r", files)
    c.fid.ref = str(tmp_path / "missing.npz")
    with pytest.raises(SpecError, match=r"fid.ref'.*missing.npz.*fid-refs"):
        resolve(c)
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(64), sigma=np.eye(64))
    c.fid.ref = str(bad)
    with pytest.raises(SpecError, match="fid.ref'.*64"):
        resolve(c)
    c = _config(tmp_path / "r", files)
    c.fid.weights = str(tmp_path / "none.pth")
    with pytest.raises(SpecError, match=r"fid.weights'.*none.pth.*pytorch-fid/releases"):
        resolve(c)
    c = _config(tmp_path / "r", files)
    c.expect.num_classes = 1000       # the fixture network is 16 px with 10 classes
    with pytest.raises(SpecError, match=r"expect.num_classes' = 1000.*num_classes 10"):
        resolve(c)
    c = _config(tmp_path / "r", files)
    c.fid.resize = "bicubic"
    with pytest.raises(SpecError, match="fid.resize"):
        resolve(c)
