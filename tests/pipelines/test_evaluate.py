"""`jaxdiff evaluate` end to end on digits: the pipeline's numbers are the protocol's on the set it
names, a saved set evaluates to the same numbers, and a set of another dataset or shape is refused
naming the key."""

import json
import os

import jax
import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff.config_utils import build_config
from jaxdiff.distill import augment as dsa
from jaxdiff.distill.evaluate import train_and_test
from jaxdiff.distill.synset import load_synset
from jaxdiff.models.classifiers import classifier_factory
from jaxdiff.pipelines import evaluate
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.evaluate import resolve

TINY = [("ipc", "2"), ("model.width", "8"), ("train.epochs", "1"), ("train.num_runs", "2"),
        ("train.eval_epochs", "(1,)"), ("progress", "False")]


def _config(run_dir, *over):
    return build_config("evaluate_digits", TINY + [("run_dir", str(run_dir)), *over])


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("evaluate") / "random"
    return str(run_dir), evaluate.run(resolve(_config(run_dir)))


def test_results_equal_the_protocol_on_the_named_set(random_run):
    run_dir, out = random_run
    train = jdata.load("digits", "train", image_size=16)
    test = jdata.load("digits", "test", image_size=16)
    idx = jdata.sample_per_class(0, train.labels, 10, 2)
    ref = train_and_test(
        jax.random.key(0), jdata.normalize(train.images[idx], train.info), train.labels[idx],
        jdata.normalize(test.images, train.info), test.labels,
        make_model=classifier_factory("convnet", train.info.image_shape, 10, depth=2, width=8,
                                      norm="instancenorm"),
        num_runs=2, epochs=1, lr=0.01, batch_size=256,
        augment=dsa.per_sample_augment(dsa.strategy_for("digits", "auto")), eval_epochs=(1,),
        progress=False)
    assert out["accuracy_runs"] == ref.accuracy.tolist()
    assert out["accuracy_at_epochs"] == ref.accuracy_at.tolist()
    assert out["train_images"] == 20 and out["method"] == "random real, 2 per class"
    with open(os.path.join(run_dir, "results.json")) as f:
        assert json.load(f)["accuracy_runs"] == out["accuracy_runs"]
    with open(os.path.join(run_dir, "config.json")) as f:
        assert "model.depth -> 2" in json.dumps(json.load(f))
    saved = load_synset(run_dir)
    np.testing.assert_array_equal(saved.labels, train.labels[idx])


def test_saved_set_is_the_training_set_again(random_run, tmp_path):
    """source=synthetic on the saved set trains on exactly the arrays the random run trained on
    (the protocol is a function of them, the key and the settings: the same numbers)."""
    run_dir, _ = random_run
    train = jdata.load("digits", "train", image_size=16)
    first = evaluate.training_set(resolve(_config(tmp_path / "a")), train)
    spec = resolve(_config(tmp_path / "syn", ("source", "synthetic"), ("synthetic_path", run_dir)))
    again = evaluate.training_set(spec, train)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert np.isnan(again.lr) and spec.train.lr == 0.01   # no saved lr: train.lr stays


def test_a_set_of_another_shape_is_refused_naming_the_key(random_run, tmp_path):
    run_dir, _ = random_run   # a 16 px set: refused by resolve, before any work or write
    with pytest.raises(SpecError, match=r"'synthetic_path': the set at .* has images of shape "
                                        r"\(16, 16, 1\), the dataset's at data.image_size=8 are "
                                        r"\(8, 8, 1\); set data.image_size"):
        resolve(_config(tmp_path / "bad", ("source", "synthetic"), ("synthetic_path", run_dir),
                        ("data.image_size", "8"), ("model.depth", "1")))
    assert not (tmp_path / "bad").exists()
