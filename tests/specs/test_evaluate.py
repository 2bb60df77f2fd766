"""`jaxdiff.specs.evaluate.resolve`: derived values noted, bad values refused naming the key."""

import pytest

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
])
def test_bad_values_name_the_key(over, words):
    with pytest.raises(SpecError, match=words):
        resolve(build_config("evaluate_digits", list(over.items())))
