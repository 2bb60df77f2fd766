"""`jaxdiff.distributed` in one process: start-up settings, cluster detection, host reads.
The multi-process behaviour is tested with real processes in tests/test_multiprocess.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import distributed, sharding
from jaxdiff.errors import UserError

CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES", "KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX",
                distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                distributed.ENV_PROCESS_ID)


@pytest.fixture
def clean_env(monkeypatch):
    for v in CLUSTER_VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_no_settings_is_one_process(clean_env):
    assert distributed.launch_settings().source == "single"
    assert distributed.launch_settings(num_processes=1).source == "single"


@pytest.mark.parametrize("env, name", [
    ({"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
      "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, "SLURM"),
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, "Cloud TPU"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "0"}, "Kubernetes"),
])
def test_cluster_environments_are_detected(clean_env, env, name):
    for k, v in env.items():
        clean_env.setenv(k, v)
    assert distributed.launch_settings().source == f"cluster: {name}"


@pytest.mark.parametrize("env", [
    {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
     "SLURM_LOCALID": "0"},                                  # a one-task SLURM job
    {"TPU_WORKER_HOSTNAMES": "localhost"},                    # a single-host TPU VM
    {"KUBERNETES_SERVICE_HOST": "10.0.0.1"},                  # a plain pod
])
def test_one_process_environments_are_not_clusters(clean_env, env):
    for k, v in env.items():
        clean_env.setenv(k, v)
    assert distributed.launch_settings().source == "single"


def test_flags_and_environment(clean_env):
    got = distributed.launch_settings("10.0.0.1:1234", 4, 3)
    assert got == distributed.Launch("10.0.0.1:1234", 4, 3, "flags")
    clean_env.setenv(distributed.ENV_COORDINATOR, "h:1")
    clean_env.setenv(distributed.ENV_NUM_PROCESSES, "2")
    clean_env.setenv(distributed.ENV_PROCESS_ID, "1")
    assert distributed.launch_settings() == distributed.Launch("h:1", 2, 1, "environment")
    assert distributed.launch_settings(process_id=0).process_id == 0   # a flag beats the variable


@pytest.mark.parametrize("args, words", [
    (dict(num_processes=2), "missing: --coordinator HOST:PORT, --process-id I"),
    (dict(coordinator="h:1", num_processes=2, process_id=5), "must be in [0, 2)"),
    (dict(coordinator="h", num_processes=2, process_id=0), "must be HOST:PORT"),
])
def test_bad_settings_name_the_flag(clean_env, args, words):
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        distributed.launch_settings(**args)
    clean_env.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(UserError, match="'two' is not an integer"):
        distributed.launch_settings()


def test_one_process_helpers_are_identities():
    mesh = sharding.data_mesh()
    x = sharding.shard_batch(jnp.arange(16.0).reshape(8, 2), mesh)
    tree = {"a": x, "b": 3, "k": jnp.float32(2.5)}
    host = distributed.to_host(tree)
    assert isinstance(host["a"], np.ndarray) and host["b"] == 3 and host["k"] == 2.5
    np.testing.assert_array_equal(host["a"], np.arange(16.0).reshape(8, 2))
    assert distributed.agree({"x": 1}) == {"x": 1}
    distributed.check_same("config", {"seed": float("nan")})        # no-op, no false alarm
    distributed.barrier("nothing")
    assert distributed.is_main() and distributed.describe(mesh).startswith(
        f"process 0 of 1: {jax.local_device_count()} local")
    assert "mesh data=8" in distributed.describe(mesh)


def test_put_keeps_values_and_keys():
    mesh = sharding.data_mesh()
    k = jax.random.key(3)
    placed = sharding.replicate({"k": k, "v": np.float32([np.nan, 1.0])}, mesh)
    assert jax.random.key_data(placed["k"]).tolist() == jax.random.key_data(k).tolist()
    np.testing.assert_array_equal(np.asarray(placed["v"]), [np.nan, 1.0])
    assert placed["v"].sharding.is_fully_replicated and len(placed["v"].devices()) == 8
