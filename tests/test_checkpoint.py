"""Orbax checkpoints, config fingerprints and mesh records (`jaxdiff.checkpoint`)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import sharding
from jaxdiff.checkpoint import (Checkpointer, CorruptCheckpointError, config_fingerprint,
                                describe_mesh, resume_fingerprints)


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


def _damage(path, what):
    if what == "meta":
        (path / "meta" / "metadata").write_text("{not json")
    else:                                    # the array bytes of the state
        for f in (path / "state").rglob("d/*"):
            f.write_bytes(b"\0" * 7)


@pytest.mark.parametrize("what", ["meta", "state"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, what):
    with Checkpointer(tmp_path / "ck", max_to_keep=3) as ck:
        for step in (1, 2, 3):
            ck.save(step, {"w": jnp.full(3, float(step))}, {"metrics": [step]}, wait=True)
    _damage(tmp_path / "ck" / "3", what)
    with Checkpointer(tmp_path / "ck") as ck:
        with pytest.warns(UserWarning, match=r"ck/3 does not read back; resuming from .*ck/2"):
            step, state, meta = ck.restore({"w": jnp.zeros(3)})
    assert step == 2 and meta["metrics"] == [2]
    np.testing.assert_array_equal(state["w"], np.full(3, 2.0))
    for s in (1, 2):
        _damage(tmp_path / "ck" / str(s), what)
    with Checkpointer(tmp_path / "ck") as ck:
        with pytest.raises(CorruptCheckpointError, match=r"no checkpoint .* reads back.*ck/1"):
            ck.restore({"w": jnp.zeros(3)})
