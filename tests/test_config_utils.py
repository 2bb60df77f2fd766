"""Config files and `--config.a.b=value` overrides (`jaxdiff.config_utils`)."""

import pytest

from jaxdiff.config_utils import apply_override, build_config, load_config, parse_overrides


# ---------------------------------------------------------------- configs
def test_override_types_and_unknown_key():
    c = load_config("evaluate_digits")
    apply_override(c, "train.epochs", "7")
    apply_override(c, "train.lr", "0.5")
    apply_override(c, "data.name", "cifar10_jpeg")
    apply_override(c, "train.eval_epochs", "(2, 4)")
    assert (c.train.epochs, c.train.lr, c.data.name, c.train.eval_epochs) == (7, 0.5, "cifar10_jpeg", (2, 4))
    with pytest.raises(KeyError, match="unknown config key 'train.epoch'.*train.epochs"):
        apply_override(c, "train.epoch", "3")
    with pytest.raises(TypeError, match="train.epochs"):
        apply_override(c, "train.epochs", "many")
    with pytest.raises(TypeError, match="progress"):
        apply_override(c, "progress", "3")


@pytest.mark.parametrize("text, value", [
    ("true", True), ("True", True), ("TRUE", True), ("yes", True), ("on", True), ("1", True),
    ("false", False), ("False", False), ("No", False), ("off", False), ("0", False),
    (" false ", False)])
def test_booleans_in_the_forms_users_type(text, value):
    c = load_config("evaluate_digits")
    c.progress = not value
    apply_override(c, "progress", text)
    assert c.progress is value


@pytest.mark.parametrize("text", ["3", "maybe", "", "tru"])
def test_a_non_boolean_names_the_key_and_the_forms(text):
    c = load_config("evaluate_digits")
    with pytest.raises(TypeError, match=r"'progress' expects a boolean \(true/false, yes/no"):
        apply_override(c, "progress", text)


def test_parse_overrides_and_unknown_preset():
    name, ov, rest = parse_overrides(["evaluate", "--config", "x", "--config.a.b=1", "--config.c", "2", "--resume"])
    assert name == "x" and ov == [("a.b", "1"), ("c", "2")] and rest == ["evaluate", "--resume"]
    with pytest.raises(FileNotFoundError, match="evaluate_digits"):
        build_config("no_such_preset", [])


@pytest.mark.parametrize("argv", [["--config.iterations"], ["--config.iterations", "--resume"]])
def test_an_override_without_a_value_says_how_to_give_one(argv):
    with pytest.raises(ValueError, match="--config.iterations has no value: write "
                                         "--config.iterations=VALUE"):
        parse_overrides(["distill", *argv])
    assert parse_overrides(["--config.seed", "-1"])[1] == [("seed", "-1")]   # a negative value
