"""`jaxdiff.specs.experts.resolve`: the model section kept as written for the store's meta,
bad values refused naming the key."""

import pytest

from jaxdiff.config_utils import build_config
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.experts import resolve


def test_model_section_kept_as_written_for_the_store():
    spec = resolve(build_config("experts_digits", []))
    assert spec.model_config["depth"] == 0 and spec.model.depth == 2   # meta keeps the 0
    assert spec.run.run_dir.endswith("runs/experts_digits")


@pytest.mark.parametrize("over,words", [
    ({"model.norm": "batchnorm"}, "'model.norm' = 'batchnorm' is not supported for experts"),
    ({"model.name": "resnet18"}, r"'model.name' = 'resnet18' is not one of \['convnet', 'mlp'\]"),
    ({"num_experts": "0"}, "'num_experts' = 0 must be >= 1"),
    ({"lr": "0.0"}, "'lr' = 0 must be > 0"),
])
def test_bad_values_name_the_key(over, words):
    with pytest.raises(SpecError, match=words):
        resolve(build_config("experts_digits", list(over.items())))
