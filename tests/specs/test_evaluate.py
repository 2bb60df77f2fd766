"""`jaxdiff.specs.evaluate.resolve`: derived values noted, bad values refused naming the key."""

import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.config_utils import build_config
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.evaluate import resolve


def test_resolve_derives_depth_and_strategy_and_keeps_the_config():
    config = build_config("evaluate_digits", [])
    before = config.to_dict()
    spec = resolve(config)
    assert config.to_dict() == before
    assert spec.model.depth == 2 and spec.train.dsa_strategy == "color_crop_cutout_scale_rotate"
    notes = "\n".join(spec.resolution.notes)
    assert "model.depth -> 2" in notes and "train.dsa_strategy -> " in notes
    assert spec.run.run_dir.endswith("runs/evaluate_digits") and spec.run.run_dir.startswith("/")


@pytest.mark.parametrize("over,words", [
    ({"source": "coreset"}, "'source' = 'coreset' is not one of"),
    ({"ipc": "0"}, "'ipc' = 0 must be >= 1"),
    ({"source": "synthetic"}, "source=synthetic needs --config.synthetic_path"),
    ({"train.eval_epochs": "(0, 5)"}, r"'train.eval_epochs' = \(0, 5\): \[0\] outside 1..301"),
    ({"train.lr": "-0.1"}, "'train.lr' = -0.1 must be > 0"),
    ({"train.dsa_strategy": "crop_blur"}, "'train.dsa_strategy': unknown DSA token"),
    ({"data.image_size": "12"}, "'model.depth' = 0 .by image size.: no standard ConvNet depth"),
    ({"ipc": "1000"}, r"'ipc' = 1000 exceeds the smallest class of digits's training split \(\d+ "),
    ({"source": "synthetic", "synthetic_path": "/nonexistent/run"},
     "'synthetic_path' = '/nonexistent/run': no synthetic.npz there"),
])
def test_bad_values_name_the_key(over, words):
    with pytest.raises(SpecError, match=words):
        resolve(build_config("evaluate_digits", list(over.items())))


@pytest.mark.parametrize("preset", ["evaluate_digits", "evaluate_cifar10"])
def test_fingerprint_equals_the_old_formula(preset):
    """Nothing is filled into the config: the fingerprint is that of the config as written."""
    config = build_config(preset, [])
    assert resolve(config).resolution.fingerprint == config_fingerprint(config)


def test_ipc_up_to_the_smallest_class_is_accepted(tmp_path):
    smallest = int(np.bincount(jdata.load("digits", "train", image_size=16).labels).min())
    assert resolve(build_config("evaluate_digits", [("ipc", str(smallest))])).ipc == smallest
    from jaxdiff.distill.synset import LabelledSet, save_synset
    save_synset(tmp_path, LabelledSet(np.zeros((2, 16, 16, 1)), np.array([0, 9]), "digits",
                                      np.zeros(1), np.ones(1)))
    spec = resolve(build_config("evaluate_digits", [("source", "synthetic"),
                                                    ("synthetic_path", str(tmp_path))]))
    assert spec.synthetic_path == str(tmp_path)
