"""The Flax port of DG's discriminator (`jaxdiff.models.dg`) against tests/fixtures/dg/ (a tiny
ADM encoder classifier + DG head built by the upstream DG code with seeded Gaussian weights, the
state dicts saved as ADM / DG save them, and DG's own outputs), DG's official architectures'
names and shapes, and the refusals of bad files."""

import json
import pickle
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff import sharding as shd
from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.models import dg
from jaxdiff.torch_reader import UnsafePickleError, read_state_dict

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "dg"
CLS_PT, HEAD_PT = FIX / "dg_classifier.pt", FIX / "dg_head_cond.pt"
TINY = json.loads((FIX / "dg_tiny_configs.json").read_text())
RTOL_LOGIT = 1e-5     # max|ours - ref| / max|ref|; measured ~4e-7 (logits), 1e-6 (features)


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def rel_err(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def io_():
    return dict(np.load(FIX / "dg_io.npz"))


@pytest.fixture(scope="module")
def loaded():
    return dg.load(CLS_PT, HEAD_PT, classifier=TINY["classifier"], head=TINY["head"])


def test_logits_features_and_classifier_match_upstream(loaded, io_):
    """Sharded over 8 devices with per-sample sigma and int labels (jaxdiff's samplers); DG's
    one-hot labels give the same embedding. The unconditional head with the cosine time:
    tests/diffusion/test_dg.py (the guidance term)."""
    disc_logit, meta = loaded
    assert meta["spec"]["time"] == "linear"   # 'auto' at 16 px
    mesh, idx = shd.data_mesh(8), np.arange(8) % 6
    x8, sigma8 = (jax.device_put(a, shd.batch_sharding(mesh))
                  for a in (nhwc(io_["x"][idx]), jnp.asarray(io_["sigma"][idx])))
    out = disc_logit(x8, sigma8, jnp.asarray(io_["labels"][idx]))
    assert len(out.sharding.device_set) == 8
    assert rel_err(out, io_["logit_cond"][idx]) < RTOL_LOGIT

    @jax.jit
    def classifier(params, x_vp, tau):
        net = nnx.merge(meta["graphdef"], params)
        return net.classifier(x_vp, tau, feature=True), net.classifier(x_vp, tau)

    x, sigma = nhwc(io_["x"]), jnp.asarray(io_["sigma"])
    feat, logits = classifier(meta["params"], x * jnp.asarray(io_["alpha"])[:, None, None, None],
                              jnp.asarray(io_["tau"]))
    assert rel_err(np.asarray(feat).transpose(0, 3, 1, 2), io_["features"]) < RTOL_LOGIT
    assert rel_err(logits, io_["classifier_logits"]) < RTOL_LOGIT
    net = nnx.merge(meta["graphdef"], meta["params"])
    np.testing.assert_array_equal(net.head.embed(sigma, jnp.asarray(io_["onehot"])),
                                  net.head.embed(sigma, jnp.asarray(io_["labels"])))
    np.testing.assert_allclose(dg.dg_time(sigma, "linear"), io_["tau"], rtol=2e-6)
    np.testing.assert_allclose(dg.dg_time(sigma, "cosine"), io_["t_cos"], rtol=2e-6)


def test_official_architectures_have_dgs_names_and_shapes():
    """Every state-dict name and shape of DG's 32 / 64 px classifiers and (un)conditional heads,
    as DG's own constructors make them (recorded by the generator), and nothing else."""
    ref = json.loads((FIX / "dg_official_shapes.json").read_text())
    c32 = dg.classifier_config(32)
    built = {"classifier_32": c32, "classifier_64": dg.classifier_config(64),
             "head_uncond": dg.head_config(c32), "head_cond": dg.head_config(c32, condition=True)}
    assert dg.feature_shape(c32) == dg.feature_shape(built["classifier_64"]) == (8, 8, 512)
    for name, cfg in built.items():
        assert dg.expected_shapes(cfg) == {k: tuple(s) for k, s in ref[name].items()}, name


def test_refuses_missing_extra_and_misshaped_keys_by_name():
    csd, hsd = read_state_dict(CLS_PT), dict(read_state_dict(HEAD_PT))
    del hsd["middle_block.1.qkv.weight"]
    hsd["out.2.extra.weight"] = np.zeros((3, 3), np.float32)
    hsd["time_embed.2.bias"] = np.zeros((65,), np.float32)
    with pytest.raises(UserError) as e:
        dg.from_state_dicts(csd, hsd, classifier=TINY["classifier"], head=TINY["head"])
    msg = str(e.value)
    assert "discriminator head" in msg
    assert "missing (1): middle_block.1.qkv.weight [96, 32, 1]" in msg
    assert "unexpected (1): out.2.extra.weight [3, 3]" in msg
    assert "time_embed.2.bias: [65] in the file, [64] expected" in msg


def test_refuses_a_classifier_for_another_resolution_naming_both():
    """DG's 64 px classifier (its names and shapes, as zero-size-in-memory arrays) where the
    32 px one is configured; and a head that does not fit the classifier's features."""
    shapes = json.loads((FIX / "dg_official_shapes.json").read_text())
    sd64 = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes["classifier_64"].items()}
    head = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes["head_uncond"].items()}
    c32 = dg.classifier_config(32)
    with pytest.raises(UserError, match=r"(?s)missing.*input_blocks.*the file is DG's 64 px ADM "
                                        r"classifier; the configuration is for 32 px images"):
        dg.from_state_dicts(sd64, head, classifier=c32, head=dg.head_config(c32))
    with pytest.raises(UserError, match=r"DG head expects 8x8x512 features; the classifier "
                                        r"gives 8x8x32"):
        dg.from_state_dicts(read_state_dict(CLS_PT), head, classifier=TINY["classifier"],
                            head=dg.head_config(c32))


def test_refuses_pickles_with_unexpected_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return os.system, ("echo pwned",)

    # The head file with its data.pkl replaced by one that calls os.system.
    bad = tmp_path / "evil.pt"
    with zipfile.ZipFile(HEAD_PT) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps({"time_embed.0.weight": Evil()}, protocol=2)
            dst.writestr(info, data)
    with pytest.raises(UnsafePickleError, match=r"refused to load the global "
                                                r"(posix|os|nt)\.system"):
        dg.load(CLS_PT, bad, classifier=TINY["classifier"], head=TINY["head"])


def test_missing_files_name_the_file_and_the_download(tmp_path):
    with pytest.raises(MissingInputError, match=r"nope\.pt does not exist.*32x32_classifier.pt "
                                                r"is at https://drive\.google\.com"):
        dg.load(tmp_path / "nope.pt", HEAD_PT)
    with pytest.raises(MissingInputError, match=r"discriminator_60\.pt at https://"):
        dg.load(CLS_PT, tmp_path / "nope.pt", classifier=TINY["classifier"])


def test_import_round_trip_and_head_condition_from_the_file(loaded, io_, tmp_path):
    # Without a head config, DG's head is conditional iff the file has label_emb (its rows
    # are the class count); the tiny head needs its own config.
    assert dg._head_for(dg.encoder_config(**dg.classifier_config(32)),
                        {"label_emb.weight": np.zeros((10, 512))}, None, None)["num_class"] == 10
    assert not dg._head_for(dg.encoder_config(**dg.classifier_config(32)), {}, None,
                            None)["condition"]
    out = dg.import_discriminator(CLS_PT, HEAD_PT, tmp_path / "imp",
                                  classifier=TINY["classifier"], head=TINY["head"])
    assert dg.is_imported(out) and dg.describe(out)["time"] == "linear"
    _, meta = dg.load(out)
    _, ref = loaded
    assert {k: meta["spec"][k] for k in ("classifier", "head", "time")} == \
        {k: ref["spec"][k] for k in ("classifier", "head", "time")}
    flat, ref_flat = (dict(nnx.to_flat_state(m["params"])) for m in (meta, ref))
    assert flat.keys() == ref_flat.keys()
    for k, v in flat.items():   # the same arrays bit for bit, so the same function
        np.testing.assert_array_equal(v.get_value(), ref_flat[k].get_value())
    with pytest.raises(UserError, match="already exists and is not an empty directory"):
        dg.import_discriminator(CLS_PT, HEAD_PT, out, classifier=TINY["classifier"],
                                head=TINY["head"])
    with pytest.raises(MissingInputError, match="not a DG discriminator imported"):
        dg.describe(tmp_path)


def test_import_checkpoint_dg_head_refuses_files_of_another_architecture(tmp_path, capsys):
    """`jaxdiff import-checkpoint CLASSIFIER --dg-head HEAD`: the tiny fixture networks are not
    DG's 32 px architecture, so the command exits 2 naming mis-shaped arrays and writes
    nothing."""
    from jaxdiff import cli

    out = tmp_path / "imported"
    code = None
    try:
        code = cli.main(["import-checkpoint", str(FIX / "dg_classifier.pt"), "--dg-head",
                         str(FIX / "dg_head_cond.pt"), "--out", str(out)])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "dg_classifier.pt" in err and "shape" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
