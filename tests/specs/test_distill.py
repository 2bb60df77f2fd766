"""`jaxdiff.specs.distill.resolve`: the references' tables filled in (the checkpoint
fingerprint of the old in-place filling kept), derived values and adjustments noted, bad values
refused naming the key."""

import json

import pytest

from jaxdiff.config_utils import build_config
from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.pipelines import distill as distill_pipeline
from jaxdiff.specs import distill as distill_spec
from jaxdiff.specs.base import SpecError

from tests.helpers import placeholder_expert_store, tiny_distill_config


# ----------------------------------------------------------------------------- the resolved spec
def _old_fill(cfg, **values):
    """What the pre-spec pipeline wrote into the config in place (`presets.resolve_auto`, removed)."""
    from jaxdiff.config_utils import set_values
    return set_values(cfg, **values)


@pytest.mark.parametrize("over,filled", [
    ([("param.name", "fred")], {"opt.name": "sgd", "opt.momentum": 0.5, "opt.lr": 1e6}),
    ([("param.name", "pixel"), ("loss.name", "dc")],
     {"opt.name": "sgd", "opt.momentum": 0.5, "opt.lr": 0.1}),
    ([("param.name", "ddif"), ("ipc", "10")],
     {"opt.name": "adam", "opt.momentum": 0.0, "opt.lr": 5e-5, "param.ddif.depth": 2,
      "param.ddif.width": 6, "param.ddif.w0_initial": 30.0, "param.ddif.w0": 40.0}),
    ([("param.name", "pixel"), ("loss.name", "tm"), ("loss.tm.buffer_dir", "STORE")],
     {"opt.name": "sgd", "opt.momentum": 0.5, "opt.lr": 1000.0, "loss.tm.syn_steps": 50,
      "loss.tm.expert_epochs": 2, "loss.tm.max_start_epoch": 5, "loss.tm.lr_lr": 1e-7,
      "loss.tm.lr_teacher": 1e-2}),
])
def test_resolve_fills_the_tables_and_keeps_the_checkpoint_fingerprint(over, filled, tmp_path):
    store = placeholder_expert_store(tmp_path / "experts", "cifar10_jpeg", (32, 32, 3))
    over = [(k, store if v == "STORE" else v) for k, v in over]
    config = build_config("distill_cifar10", over)
    before = config.to_dict()
    spec = distill_spec.resolve(config)
    assert config.to_dict() == before                      # the caller's config is not mutated
    from jaxdiff.distill.params import ddif_preset
    if "param.ddif.w0" in filled:
        filled["param.ddif.w0"] = ddif_preset("cifar10", 10).w0
    # The fingerprint guarding checkpoints is the old pipeline's: the config with the table
    # values written in, run-control keys left out. Existing run directories still resume.
    assert spec.resolution.fingerprint == config_fingerprint(_old_fill(config, **filled))
    for key in filled:
        assert any(n.startswith(f"{key} = ") and ("presets." in n or "DDIF_PRESETS" in n)
                   for n in spec.resolution.notes), key


def test_resolve_notes_derived_values_and_adjustments(tmp_path):
    spec = distill_spec.resolve(tiny_distill_config(tmp_path, **{"loss.batch_real": 100000, "param.name": "pixel"}))
    smallest = spec.loss.batch_real
    assert 100 < smallest < 200                         # the smallest digits class of the split
    notes = "\n".join(spec.resolution.notes)
    assert f"loss.batch_real = 100000 adjusted to {smallest}" in notes
    assert "model.depth -> 1" in notes and "loss.dsa_strategy -> 'color_crop_cutout_scale_rotate'" in notes
    distill_pipeline.run(distill_spec.resolve(tiny_distill_config(tmp_path, **{"param.name": "pixel",
                                                                 "eval.num_runs": 0,
                                                                 "iterations": 1})))
    written = json.load(open(tmp_path / "config.json"))
    assert written["command"] == "distill" and written["config"]["param"]["name"] == "pixel"
    assert any("model.depth" in n for n in written["resolved"])


@pytest.mark.parametrize("over,words", [
    ({"ipc": 0}, "'ipc' = 0 must be >= 1"), ({"loss.name": "kl"}, "'loss.name' = 'kl'"),
    ({"opt.group_lr": "W1"}, "not NAME=LR"),
    ({"loss.name": "dc", "loss.dc.metric": "l1"}, "'loss.dc.metric' = 'l1'"),
    ({"model.name": "vit"}, "'model.name' = 'vit'"),
    ({"data.name": "imagenet"}, "'data.name' = 'imagenet'"),
    ({"loss.lcmat.weight": 2, "loss.name": "lcmat"}, "'loss.lcmat.weight' = 2 must be <= 1"),
])
def test_resolve_rejects_bad_values_naming_the_key(tmp_path, over, words):
    with pytest.raises(SpecError, match=words):
        distill_spec.resolve(tiny_distill_config(tmp_path, **{"param.name": "ddif", **over}))
