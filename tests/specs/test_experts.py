"""`jaxdiff.specs.experts.resolve`: the model section kept as written for the store's meta,
bad values refused naming the key."""

import pytest

from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.config_utils import build_config
from jaxdiff.distill.augment import strategy_for
from jaxdiff.pipelines.experts import store_meta
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.experts import resolve


def test_model_section_kept_as_written_for_the_store():
    spec = resolve(build_config("experts_digits", []))
    assert spec.model_config["depth"] == 0 and spec.model.depth == 2   # meta keeps the 0
    assert spec.run.run_dir.endswith("runs/experts_digits")
    notes = "\n".join(spec.resolution.notes)
    assert "model.depth -> 2" in notes
    assert "dsa_strategy -> 'color_crop_cutout_scale_rotate'" in notes


def _old_store_meta(config, info, layout):
    """`pipelines.experts.store_meta` as it was written against the ConfigDict."""
    return {
        "dataset": info.name, "image_shape": list(info.image_shape),
        "num_classes": int(info.num_classes), "zca": bool(config.zca),
        "zca_reg": float(config.zca_reg) if config.zca else None,
        "mean": list(info.mean), "std": list(info.std), "model": config.model.to_dict(),
        "lr": float(config.lr), "batch_size": int(config.batch_size),
        "dsa_strategy": strategy_for(info.name, config.dsa_strategy),
        "seed": int(config.seed), **layout,
    }


@pytest.mark.parametrize("preset,over", [
    ("experts_digits", []),
    ("experts_digits", [("zca", "True"), ("dsa_strategy", "none"), ("model.depth", "1")]),
    ("experts_cifar10", []),
])
def test_store_meta_and_fingerprint_equal_the_old_formulas(preset, over):
    """The store refuses a resume whose meta differs: existing stores stay usable."""
    config = build_config(preset, over)
    spec = resolve(config)
    layout = {"param_shapes": [[3, 3]], "param_names": ["w"]}
    assert store_meta(spec, spec.data.info, layout) == _old_store_meta(config, spec.data.info,
                                                                       layout)
    assert spec.resolution.fingerprint == config_fingerprint(config)


@pytest.mark.parametrize("over,words", [
    ({"model.norm": "batchnorm"}, "'model.norm' = 'batchnorm' is not supported for experts"),
    ({"model.name": "resnet18"}, r"'model.name' = 'resnet18' is not one of \['convnet', 'mlp'\]"),
    ({"num_experts": "0"}, "'num_experts' = 0 must be >= 1"),
    ({"lr": "0.0"}, "'lr' = 0 must be > 0"),
])
def test_bad_values_name_the_key(over, words):
    with pytest.raises(SpecError, match=words):
        resolve(build_config("experts_digits", list(over.items())))
