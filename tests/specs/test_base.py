"""Config -> spec machinery (`jaxdiff.specs.base`): reading never mutates, fills are recorded and
fingerprinted, derived values and adjustments are noted, checks name the key."""

import json

import ml_collections
import pytest

from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.specs.base import Resolver, SpecError, print_resolved, write_config


def _config():
    return ml_collections.ConfigDict({"opt": {"name": "auto", "lr": 0.0}, "n": 3, "run_dir": "r"})


def test_fill_derive_adjust_and_fingerprint(capsys, tmp_path):
    config = _config()
    r = Resolver("demo", config)
    r.fill("opt.name", "sgd", "TABLE[x]")
    r.derive("depth", 3, "by image size")
    r.adjust("n", 3, 2, "only 2 fit")
    res = r.resolution()
    assert config.opt.name == "auto"                     # the caller's config is untouched
    assert res.config["opt"]["name"] == "sgd" and res.config["n"] == 3   # derive/adjust: notes only
    assert res.notes == ("opt.name = 'sgd'  (TABLE[x])", "depth -> 3  (by image size)",
                         "n = 3 adjusted to 2  (only 2 fit)")
    filled = _config()
    filled.opt.name = "sgd"
    assert res.fingerprint == config_fingerprint(filled)   # run_dir is a run-control key
    print_resolved(res)
    out = capsys.readouterr().out
    assert out.startswith("[jaxdiff demo] resolved:\n  opt.name = 'sgd'")
    write_config(str(tmp_path), res)
    written = json.load(open(tmp_path / "config.json"))
    assert written["config"]["opt"]["name"] == "sgd" and written["resolved"] == list(res.notes)


def test_resume_fingerprints_leave_out_the_device_count():
    """A resume accepts the fingerprint without `num_devices` (what checkpoints record now) and
    the config's own fingerprint (what older checkpoints carry)."""
    eight, four = ({**_config().to_dict(), "num_devices": n} for n in (8, 4))
    a, b = Resolver("demo", eight).resolution(), Resolver("demo", four).resolution()
    assert a.resume_fingerprints[0] == b.resume_fingerprints[0]
    assert a.resume_fingerprints[1] == a.fingerprint != b.fingerprint


@pytest.mark.parametrize("check,value,words", [
    ("choice", "adamw", "'opt.name' = 'adamw' is not one of \\['adam', 'sgd'\\]"),
    ("integer", 2.5, "'opt.name' = 2.5 must be an integer"),
    ("integer", -1, "'opt.name' = -1 must be >= 0"),
    ("number", float("nan"), "'opt.name' = nan must be a finite number"),
    ("number", -1.0, "'opt.name' = -1 must be >= 0"),
    ("flag", "yes", "'opt.name' = 'yes' must be true or false"),
])
def test_checks_name_the_key_the_value_and_the_limit(check, value, words):
    r = Resolver("demo", {"opt": {"name": value}})
    with pytest.raises(SpecError, match=words):
        if check == "choice":
            r.choice("opt.name", ("sgd", "adam"))
        elif check in ("integer", "number"):
            getattr(r, check)("opt.name", 0)
        else:
            r.flag("opt.name")
    with pytest.raises(SpecError, match="'opt.lr' is missing from the demo config"):
        r.get("opt.lr")
