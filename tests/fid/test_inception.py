"""The FID Inception port against pytorch-fid's own network (tests/fixtures/fid, README there).

The fixture's weights are seeded stand-ins rebuilt here from each entry's name
(`seeded_weights.py`), so the recorded features of pytorch-fid's `InceptionV3` are reproduced
without the 95 MB file; the structure test compares the port's state-dict layout with the one
pytorch-fid's `fid_inception_v3` builds (the layout of `pt_inception-2015-12-05-6726825d.pth`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.fid import inception as I
from jaxdiff.fid.weights import WEIGHTS_ENV
from jaxdiff.torch_reader import read_state_dict

TOL = 1e-4   # relative to the largest |value|; float32 through 94 conv layers gives ~5e-7


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def test_structure_is_the_standard_files(standard_table):
    """Every name and shape of the standard state dict is what the port consumes, none left."""
    table = standard_table
    want = I.expected_state_dict()
    assert len(table) == len(want) == 566
    assert set(table) == set(want)
    assert {n: s for n, (s, _) in table.items()} == want
    assert {d for n, (_, d) in table.items() if n.endswith("num_batches_tracked")} == {"int64"}
    assert {d for n, (_, d) in table.items() if not n.endswith("num_batches_tracked")} == \
        {"float32"}
    # 23,850,960 parameters (pytorch-fid's count with fc) + 34,432 BatchNorm running statistics
    assert sum(int(np.prod(s)) for n, (s, _) in table.items()
               if not n.endswith("num_batches_tracked")) == 23_885_392


@pytest.mark.parametrize("mode,key", [("pytorch-fid", "features_pytorch_fid"),
                                      ("tf", "features_tf")])
def test_features_match_pytorch_fid(net, fx, mode, key):
    x = I.preprocess(jnp.asarray(fx["images"]), mode=mode)
    assert x.shape == (2, 299, 299, 3)
    feats, logits = net.apply(x, logits=True)
    ref = fx[key]
    assert feats.shape == (2, I.FEATURE_DIM) and logits.shape == (2, I.NUM_CLASSES)
    assert _rel(feats, ref) < TOL
    # the images' difference (~15% of the features) is matched as closely
    assert _rel(feats[0] - feats[1], ref[0] - ref[1]) < 10 * TOL
    if mode == "tf":
        assert _rel(logits, fx["logits_tf"]) < TOL


@pytest.mark.parametrize("tag", ["up", "down"])
@pytest.mark.parametrize("mode", ["pytorch-fid", "tf"])
def test_resize_matches_torch(fx, mode, tag):
    """F.interpolate (pytorch-fid) and StyleGAN3's grid_sample emulation of TF's resize."""
    r = fx[f"resize_in_{tag}"][0]                               # [C, H, W]
    want = fx[f"resize_out_{mode.replace('-', '_')}_{tag}"][0]  # [C, oh, ow]
    rh = I.resize_matrix(r.shape[1], want.shape[1], mode)
    rw = I.resize_matrix(r.shape[2], want.shape[2], mode)
    got = np.einsum("oh,chw,pw->cop", rh.astype(np.float64), r, rw.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)   # values up to 255


def test_resize_rows_and_identity():
    for mode in I.RESIZE_MODES:
        m = I.resize_matrix(32, 299, mode)
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(I.resize_matrix(7, 7, mode), np.eye(7, dtype=np.float32))
    with pytest.raises(UserError, match="'bicubic' is not one of tf, pytorch-fid"):
        I.resize_matrix(4, 8, "bicubic")


def test_preprocess_scaling_and_gray():
    """tf: (x - 128) / 128 of 0..255; pytorch-fid: 2 x / 255 - 1; one channel repeated."""
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    tf = np.asarray(I.preprocess(jnp.asarray(x), mode="tf", size=16))
    pt = np.asarray(I.preprocess(jnp.asarray(x), mode="pytorch-fid", size=16))
    v = x[..., 0].astype(np.float64)
    for c in range(3):
        np.testing.assert_allclose(tf[..., c], (v - 128) / 128, atol=1e-6)
        np.testing.assert_allclose(pt[..., c], 2 * v / 255 - 1, atol=1e-6)
    with pytest.raises(UserError, match=r"\[N, H, W, 3\]"):
        I.preprocess(jnp.zeros((2, 8, 8, 4)))


def test_pools_follow_tf():
    """The FID average pool ignores padding (all ones stay ones); max pool pads with -inf."""
    ones = jnp.ones((1, 5, 6, 2))
    np.testing.assert_array_equal(np.asarray(I.avg_pool_exclude_pad(ones)), 1.0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 6, 2)).astype(np.float32))
    xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    valid = np.pad(np.ones((5, 6)), 1)
    want = np.zeros((1, 5, 6, 2))
    for i in range(5):
        for j in range(6):
            want[0, i, j] = xp[0, i:i + 3, j:j + 3].sum((0, 1)) / valid[i:i + 3, j:j + 3].sum()
    np.testing.assert_allclose(np.asarray(I.avg_pool_exclude_pad(x)), want, atol=1e-6)
    neg = -jnp.ones((1, 3, 3, 1))
    np.testing.assert_array_equal(np.asarray(I.max_pool(neg, 1, padding=1)), -1.0)


def test_num_batches_tracked_optional(seeded_sd):
    sd = {k: v for k, v in seeded_sd.items() if not k.endswith("num_batches_tracked")}
    assert set(I.convert_state_dict(sd)) == set(I.convert_state_dict(seeded_sd))


def test_bad_state_dicts_are_listed(seeded_sd):
    sd = dict(seeded_sd)
    del sd["fc.bias"]
    sd["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 3), np.float32)
    sd["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
    with pytest.raises(I.WeightsMismatchError) as e:
        I.convert_state_dict(sd, "my.pth")
    msg = str(e.value)
    for part in ("my.pth", "missing: fc.bias;", "unexpected: AuxLogits.fc.weight;",
                 "Mixed_7c.branch_pool.conv.weight: (192, 2048, 3, 3) (expected (192, 2048, 1, "
                 "1))", I.FID_WEIGHTS_URL):
        assert part in msg


@pytest.mark.parametrize("name", ["partial_zip.pth", "partial_legacy.pth"])
def test_wrong_weight_files_are_refused_by_name(fid_dir, name):
    """torch.save files (both serialisations) read without torch, then refused by name."""
    path = fid_dir / name
    sd = read_state_dict(path)
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    with pytest.raises(I.WeightsMismatchError) as e:
        I.load(path)
    msg = str(e.value)
    assert str(path) in msg
    # Conv2d_1a_3x3 is complete; Conv2d_2a_3x3 misses all but its mis-shaped bn.weight
    assert ("missing: Conv2d_2a_3x3.bn.bias, Conv2d_2a_3x3.bn.running_mean, Conv2d_2a_3x3.bn."
            "running_var, Conv2d_2a_3x3.conv.weight, Conv2d_2b_3x3.* (5 arrays), ") in msg
    assert "Mixed_5b.* (35 arrays)" in msg and "fc.* (2 arrays);" in msg
    assert "unexpected: extra.weight;" in msg
    assert "mis-shaped: Conv2d_2a_3x3.bn.weight: (16,) (expected (32,))" in msg


def test_missing_weights_name_the_file_and_url(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(MissingInputError) as e:
        I.load(tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(e.value) and I.FID_WEIGHTS_URL in str(e.value)
    with pytest.raises(MissingInputError, match="JAXDIFF_FID_WEIGHTS"):
        I.load()
