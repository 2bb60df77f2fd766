"""Orbax checkpoints and config fingerprints (`jaxdiff.checkpoint`)."""

from jaxdiff.checkpoint import config_fingerprint


def test_fingerprint_ignores_run_control_keys_only():
    a = {"lr": 0.1, "iterations": 10, "progress": True, "eval": {"epochs": 3}}
    assert config_fingerprint(a) == config_fingerprint({**a, "iterations": 99, "progress": False,
                                                        "eval": {"epochs": 5}})
    assert config_fingerprint(a) != config_fingerprint({**a, "lr": 0.2})
    assert config_fingerprint(a, ignore=()) != config_fingerprint({**a, "iterations": 99}, ignore=())
