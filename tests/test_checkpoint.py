"""Orbax checkpoints, config fingerprints and mesh records (`jaxdiff.checkpoint`)."""

import jax.numpy as jnp
import numpy as np

from jaxdiff import sharding
from jaxdiff.checkpoint import config_fingerprint, describe_mesh, resume_fingerprints


def test_fingerprint_ignores_run_control_keys_only():
    a = {"lr": 0.1, "iterations": 10, "progress": True, "eval": {"epochs": 3}}
    assert config_fingerprint(a) == config_fingerprint({**a, "iterations": 99, "progress": False,
                                                        "eval": {"epochs": 5}})
    assert config_fingerprint(a) != config_fingerprint({**a, "lr": 0.2})
    assert config_fingerprint(a, ignore=()) != config_fingerprint({**a, "iterations": 99}, ignore=())


def test_resume_fingerprints_leave_out_the_device_count_then_keep_the_old_formula():
    a = {"lr": 0.1, "num_devices": 8, "iterations": 10}
    new, old = resume_fingerprints(a)
    assert old == config_fingerprint(a)                       # what older checkpoints carry
    assert resume_fingerprints({**a, "num_devices": 4, "iterations": 20})[0] == new
    assert resume_fingerprints({**a, "lr": 0.2})[0] != new
    assert resume_fingerprints({"lr": 0.1}) == (config_fingerprint({"lr": 0.1}),)


def test_describe_mesh():
    mesh = sharding.data_mesh(4)
    assert describe_mesh({"a": sharding.replicate(jnp.zeros(3), mesh), "b": 1}) == \
        "4 devices (data=4)"
    assert describe_mesh(jnp.zeros(2)) == "1 device"
    assert describe_mesh({"a": np.zeros(2)}) is None
