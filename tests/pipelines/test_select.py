"""`jaxdiff select` end to end on a tiny digits config: files, class balance, exact agreement with
direct calls of the selection library on the cached features, resumable cached pre-training,
clear errors before any work."""

import json
import os

import jax
import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff.config_utils import load_config, set_values
from jaxdiff.pipelines import select as S
from jaxdiff.select import methods as M
from jaxdiff.specs.select import resolve as resolve_select

def _run(config):
    """The command as the CLI runs it: resolve the config, then run the pipeline."""
    return S.run(resolve_select(config))


FRACTION = 0.1


def tiny_config(tmp_path, **kw):
    c = load_config("select_digits")
    c.data.image_size = 8                      # native 8x8: ConvNet-D1
    c.seeds = (0,)
    c.select.methods = ("uniform", "lcmat_s")
    c.select.fractions = (FRACTION,)
    c.pretrain.model.width = 8
    c.pretrain.epochs = 1
    c.pretrain.batch_size = 128                # 12 steps over the 1,438 training digits
    c.pretrain.checkpoint_every = 4
    c.pretrain.log_every = 4
    c.pretrain.cache_dir = str(tmp_path / "cache")
    c.eval.model.width = 8
    c.eval.epochs = 4
    c.eval.num_runs = 1
    c.progress = False
    c.run_dir = str(tmp_path / "run")
    return set_values(c, **kw)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("select")
    config = tiny_config(tmp)
    return config, _run(config)


def test_writes_selections_and_results(first_run):
    config, out = first_run
    run_dir = config.run_dir
    labels = jdata.load("digits", "train").labels
    budgets = M.class_budgets(labels, 10, FRACTION)
    assert os.path.exists(os.path.join(run_dir, "results.md"))
    with open(os.path.join(run_dir, "results.json")) as f:
        saved = json.load(f)
    assert len(saved["rows"]) == 2
    for row in saved["rows"]:
        name = S.selection_name(row["method"], FRACTION, 0)
        with np.load(os.path.join(run_dir, "selections", name + ".npz")) as f:
            idx, w, lab = f["indices"], f["weights"], f["labels"]
        with open(os.path.join(run_dir, "selections", name + ".json")) as f:
            js = json.load(f)
        np.testing.assert_array_equal(idx, js["indices"])
        np.testing.assert_array_equal(w, js["weights"])
        # in range, distinct, per-class balanced with the banker's-rounded budgets
        assert idx.min() >= 0 and idx.max() < labels.size
        assert np.unique(idx).size == idx.size
        np.testing.assert_array_equal(lab, labels[idx])
        np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10), budgets)
        assert np.all(w == 1.0)  # uniform and LCMat-S are unweighted
        assert len(row["accuracy_runs"]) == 1 and 0.0 <= row["accuracy_mean"] <= 1.0
    for s in saved["summary"]:
        r = next(r for r in saved["rows"] if r["method"] == s["method"])
        assert s["accuracy_mean"] == pytest.approx(r["accuracy_mean"])
    assert "| lcmat_s |" in saved["table"] and out["table"] == saved["table"]


def test_selections_equal_direct_library_calls(first_run):
    """The pipeline's subsets are exactly what jaxdiff.select gives on the cached features."""
    config, out = first_run
    cache = out["selection_models"]["0"]["cache_dir"]
    with np.load(os.path.join(cache, "features.npz")) as f:
        emb, logits, labels = f["embeddings"], f["logits"], f["labels"]
    assert emb.shape == (labels.size, out["selection_models"]["0"]["feature_dim"])
    key = jax.random.fold_in(jax.random.key(0), 0)
    want = {
        "uniform": M.uniform(key, labels, 10, FRACTION),
        "lcmat_s": M.lcmat_s(key, labels, 10, FRACTION, embeddings=emb, logits=logits,
                             **config.select.options.lcmat_s.to_dict()),
    }
    for m, sel in want.items():
        with np.load(os.path.join(config.run_dir, "selections",
                                  S.selection_name(m, FRACTION, 0) + ".npz")) as f:
            np.testing.assert_array_equal(f["indices"], np.asarray(sel.indices))


def test_rerun_reuses_cache_and_resume_skips_done(first_run, tmp_path):
    config, out = first_run
    # Another run dir, same selection-model settings: nothing is pre-trained again.
    c2 = tiny_config(tmp_path, **{"pretrain.cache_dir": config.pretrain.cache_dir,
                                  "select.methods": ("herding",)})
    out2 = _run(c2)
    info = out2["selection_models"]["0"]
    assert info["pretrain_steps_run"] == 0 and info["features_cached"]
    assert info["cache_dir"] == out["selection_models"]["0"]["cache_dir"]
    # --resume of a finished table: every row is kept as it was, nothing is recomputed.
    c3 = tiny_config(tmp_path, **{"pretrain.cache_dir": config.pretrain.cache_dir,
                                  "select.methods": ("herding",), "resume": True})
    out3 = _run(c3)
    assert out3["rows"] == out2["rows"] and out3["selection_models"] == {}


def test_interrupted_pretraining_resumes_to_the_same_model(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    train = jdata.load("digits", "train", image_size=8)
    x, y = train.images, train.labels.astype(np.int32)
    ref = tiny_config(tmp_path, **{"pretrain.cache_dir": str(tmp_path / "ref")})
    _, p_ref, _, c_ref, _, n_ref = S.pretrain(resolve_select(ref), x, y, 0)
    assert n_ref == 12

    real = S.make_pretrain_step

    def crashing(*args):
        step = real(*args)

        def wrapped(state, i, *rest):
            if int(i) == 6:
                raise KeyboardInterrupt("simulated crash")
            return step(state, i, *rest)
        return wrapped

    monkeypatch.setattr(S, "make_pretrain_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        S.pretrain(resolve_select(config), x, y, 0)
    monkeypatch.setattr(S, "make_pretrain_step", real)
    _, p, _, c, _, n = S.pretrain(resolve_select(config), x, y, 0)
    assert n == 12 - 4  # resumed from the checkpoint at step 4
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(c, c_ref)
    assert c.shape == (1, y.size) and c.mean() > 0.1  # every sample seen once, many correct


def test_bad_method_lists_valid_names_before_work(tmp_path):
    config = tiny_config(tmp_path, **{"select.methods": ("uniform", "lcmat")})
    with pytest.raises(ValueError, match="select.methods.*lcmat.*valid names:.*lcmat_s"):
        _run(config)
    assert not os.path.exists(config.pretrain.cache_dir)
    config = tiny_config(tmp_path, **{"select.fractions": (0.001,)})
    with pytest.raises(ValueError, match="select.fractions.*selects 0 samples"):
        _run(config)
    config = tiny_config(tmp_path, **{"select.options": {"lcmat_s": {"epsilon": 0.1}}})
    with pytest.raises(ValueError, match="select.options.lcmat_s.*epsilon.*valid.*eps"):
        _run(config)
