"""`jaxdiff.specs.train_denoiser.resolve`: the checkpoint fingerprint of the old formula (existing
runs resume), the network spec model.json records, bad values named."""

import pytest

from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.config_utils import build_config
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.train_denoiser import resolve


@pytest.mark.parametrize("over", [[], [("conditional", "True"), ("train.steps", "7")]])
def test_fingerprint_is_the_old_formula(over):
    config = build_config("train_denoiser_digits", over)
    old = {k: v for k, v in config.to_dict().items()
           if k not in ("resume", "progress", "stop_after", "run_dir")}
    spec = resolve(config)
    assert spec.resolution.fingerprint == config_fingerprint(old)
    assert spec.net["kwargs"]["channel_mult"] == [1, 2] and spec.net["image_size"] == 8
    assert spec.net["num_classes"] == (10 if over else 0)


@pytest.mark.parametrize("over,words", [
    ({"model.name": "dit"}, "'model.name' = 'dit' is not one of"),
    ({"model.channel_mult": "(1, 2, 2, 2, 2)"}, "'model.channel_mult' = .* need H and W divisible"),
    ({"train.ema_decay": "1.0"}, r"'train.ema_decay' must be in \[0, 1\)"),
    ({"sample.every": "7"}, "'sample.every' = 7 must be a multiple of 'log_every'"),
    ({"sample.solver": "rk4"}, "'sample.solver' = 'rk4' is not one of"),
])
def test_bad_values_name_the_key(over, words):
    with pytest.raises(SpecError, match=words):
        resolve(build_config("train_denoiser_digits", list(over.items())))
