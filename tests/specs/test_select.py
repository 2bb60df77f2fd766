"""`jaxdiff.specs.select.resolve`: the candidate pool and per-class budgets fixed before any work,
and the selection models' cache directories named exactly as before the spec existed (so existing
caches are reused)."""

import os

import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.specs.select import SELECT_IGNORE
from jaxdiff.config_utils import build_config
from jaxdiff.pipelines.select import pretrain_cache_dir
from jaxdiff.select.methods import class_budgets
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.select import resolve


def _old_cache_dir(config, info, seed):
    """`pipelines.select.pretrain_cache_dir` as it was written against the ConfigDict."""
    keyed = {"data": config.data.to_dict(), "model": config.pretrain.model.to_dict(),
             "epochs": config.pretrain.epochs, "batch_size": config.pretrain.batch_size,
             "lr": config.pretrain.lr, "momentum": config.pretrain.momentum,
             "nesterov": config.pretrain.nesterov, "weight_decay": config.pretrain.weight_decay,
             "pool_per_class": config.select.pool_per_class, "seed": int(seed)}
    name = (f"{info.name}_{config.pretrain.model.name}_ep{config.pretrain.epochs}_seed{seed}_"
            f"{config_fingerprint(keyed)}")
    root = config.pretrain.cache_dir or os.path.join(config.run_dir, "pretrained")
    return os.path.abspath(os.path.join(root, name))


@pytest.mark.parametrize("over", [[], [("select.pool_per_class", "20"), ("pretrain.lr", "0.05"),
                                  ("select.fractions", "(0.1, 0.5)")]])
def test_cache_directories_are_unchanged(over):
    config = build_config("select_digits", over)
    spec = resolve(config)
    for seed in (0, 2):
        assert pretrain_cache_dir(spec, seed)[0] == _old_cache_dir(config, spec.data.info, seed)


def test_resolve_notes_derived_values_and_keeps_the_config():
    config = build_config("select_digits", [])
    before = config.to_dict()
    spec = resolve(config)
    assert config.to_dict() == before
    assert spec.pretrain.model.depth == 2 and spec.eval.model.depth == 2
    assert spec.methods == ("uniform", "herding", "kcenter", "craig", "gradmatch", "lcmat_s")
    notes = "\n".join(spec.resolution.notes)
    for line in ("pretrain.model.depth -> 2", "eval.model.depth -> 2", "eval.dsa_strategy -> "):
        assert line in notes
    # `eval` decides select's numbers, so unlike distill's it is part of the identity
    assert spec.resolution.fingerprint == config_fingerprint(config, SELECT_IGNORE)
    assert "eval" not in SELECT_IGNORE and "progress" in SELECT_IGNORE


def test_pool_and_budgets():
    spec = resolve(build_config("select_digits", [("select.pool_per_class", "20"),
                                                  ("select.fractions", "(0.1, 0.5)")]))
    labels = jdata.load("digits", "train", image_size=16).labels
    assert len(spec.pool) == 200 and np.all(np.bincount(labels[spec.pool]) == 20)
    for f in spec.fractions:
        np.testing.assert_array_equal(spec.budgets[f], class_budgets(labels[spec.pool], 10, f))


@pytest.mark.parametrize("over,words", [
    ({"select.methods": "('uniform', 'uniform')"}, "lists a method twice"),
    ({"select.pool_per_class": "1000"}, "'select.pool_per_class' = 1000 exceeds"),
    ({"seeds": "(-1,)"}, "'seeds' must be non-negative integers"),
    ({"data.stats": "nope"}, "'data.stats': unknown statistics 'nope'"),
    ({"eval.num_runs": "-1"}, "'eval.num_runs' = -1 must be >= 0"),
    ({"select.fractions": "(0.001,)"}, r"'select.fractions' \(0.001\)"),
    ({"select.methods": "('lcmat',)"}, "'select.methods'"),
])
def test_bad_values_name_the_key(over, words):
    with pytest.raises(SpecError, match=words):
        resolve(build_config("select_digits", list(over.items())))


@pytest.mark.parametrize("options,words", [
    ({"craig": {"lam": 1.0}}, r"'select.options.craig': unknown option\(s\) \['lam'\]"),
    ({"craig": {"embeddings": 1}}, r"'select.options.craig': unknown option\(s\) \['embeddings'\]"),
    ({"lcmat": {}}, "'select.options.lcmat': unknown method"),
])
def test_bad_options_name_the_key(options, words):
    config = build_config("select_digits", [])
    config.select.options = options
    with pytest.raises(SpecError, match=words):
        resolve(config)
