"""Several processes (multi-host): start-up, agreement checks and the host side of sharded arrays.

jaxdiff is multi-controller JAX: every process runs the same program, owns the devices of its
host, and the jitted steps see one global mesh over all of them. This module is everything that
differs from one process:

* `initialize` starts the distributed runtime from `--coordinator/--num-processes/--process-id`
  (or `JAXDIFF_COORDINATOR`, `JAXDIFF_NUM_PROCESSES`, `JAXDIFF_PROCESS_ID`), or from jax's own
  cluster detection where a cluster environment is present (SLURM with more than one task, Open
  MPI, a multi-worker Cloud TPU slice, a Kubernetes indexed job); one process: a no-op. It must
  run before anything touches a device.
* `to_host` is the one way arrays reach numpy: a sharded array that this process cannot address
  in full is gathered from all processes (`multihost_utils.process_allgather`); a replicated one
  is read from a local copy. `np.asarray` on such an array raises in multi-process runs.
* `is_main`, `barrier`: process 0 writes every file that is not an Orbax checkpoint (the writers
  of `jaxdiff.files` and `jaxdiff.images` check it); a barrier orders it before others read.
* `check_same` compares a JSON-able value across processes (e.g. the resolved config) and
  raises on every process, naming what differs, when they disagree; `agree` makes every
  process use process 0's value of a host-side decision (e.g. "is there a cache file?").

Every function is cheap and a no-op (or the identity) with one process, so library code calls
them unconditionally.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxdiff.errors import UserError

ENV_COORDINATOR = "JAXDIFF_COORDINATOR"
ENV_NUM_PROCESSES = "JAXDIFF_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXDIFF_PROCESS_ID"
ENV_INIT_TIMEOUT = "JAXDIFF_INIT_TIMEOUT"            # seconds to wait for all processes (300)
ENV_HEARTBEAT_TIMEOUT = "JAXDIFF_HEARTBEAT_TIMEOUT"  # seconds before a silent process is dead (100)


class Launch(NamedTuple):
    """How this process joins a run: explicit settings, a detected cluster, or alone."""

    coordinator: str | None    # "HOST:PORT" (None: the cluster environment provides it)
    num_processes: int | None
    process_id: int | None
    source: str                # "flags", "environment", "cluster: SLURM", ..., or "single"


def _int_setting(name: str, value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} = {value!r} is not an integer") from None


def detect_cluster() -> str | None:
    """The name of a multi-process cluster environment jax can initialise from, or None.

    Only environments that launch more than one process count: a one-task SLURM job runs alone.
    """
    env = os.environ
    if all(k in env for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                              "SLURM_PROCID", "SLURM_LOCALID")):
        if int(env.get("SLURM_NTASKS", "1")) > 1:
            return "SLURM"
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "Cloud TPU"
    if "KUBERNETES_SERVICE_HOST" in env and "JOB_COMPLETION_INDEX" in env:
        return "Kubernetes"
    return None


def launch_settings(coordinator: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None) -> Launch:
    """Resolve how to start: command-line values, else `JAXDIFF_*` variables, else a detected
    cluster, else one process. Raises `UserError` for incomplete or inconsistent settings."""
    source = "flags" if any(v is not None for v in (coordinator, num_processes, process_id)) \
        else "environment"
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = _int_setting("--num-processes",
                                 num_processes if num_processes is not None
                                 else os.environ.get(ENV_NUM_PROCESSES))
    process_id = _int_setting("--process-id", process_id if process_id is not None
                              else os.environ.get(ENV_PROCESS_ID))
    if coordinator is None and num_processes is None and process_id is None:
        cluster = detect_cluster()
        return Launch(None, None, None, f"cluster: {cluster}" if cluster else "single")
    if num_processes == 1 and process_id in (None, 0):
        return Launch(None, None, None, "single")
    missing = [flag for flag, v in (("--coordinator HOST:PORT", coordinator),
                                    ("--num-processes N", num_processes),
                                    ("--process-id I", process_id)) if v is None]
    if missing:
        raise UserError(f"a multi-process start needs all three of --coordinator, "
                        f"--num-processes and --process-id (or {ENV_COORDINATOR}, "
                        f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); missing: {', '.join(missing)}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise UserError(f"--process-id {process_id} must be in [0, {num_processes}) and "
                        f"--num-processes {num_processes} at least 1")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--coordinator {coordinator!r} must be HOST:PORT, e.g. 127.0.0.1:8476")
    return Launch(coordinator, num_processes, process_id, source)


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> Launch:
    """Start the distributed runtime if this is a multi-process run (see the module docstring).

    Must run before any device is used. A coordinator on a loopback address binds to loopback
    only (a local test run opens no port to the network). The waits are bounded: joining waits
    `JAXDIFF_INIT_TIMEOUT` seconds (300) for all processes, and a process that stops sending
    heartbeats for `JAXDIFF_HEARTBEAT_TIMEOUT` seconds (100) stops the others.
    Raises `UserError` naming the coordinator when the processes cannot meet.
    """
    launch = launch_settings(coordinator, num_processes, process_id)
    if launch.source == "single" or jax.distributed.is_initialized():
        return launch
    init_timeout = _int_setting(ENV_INIT_TIMEOUT, os.environ.get(ENV_INIT_TIMEOUT)) or 300
    heartbeat = _int_setting(ENV_HEARTBEAT_TIMEOUT, os.environ.get(ENV_HEARTBEAT_TIMEOUT)) or 100
    kwargs: dict[str, Any] = dict(initialization_timeout=init_timeout,
                                  heartbeat_timeout_seconds=heartbeat,
                                  shutdown_timeout_seconds=max(heartbeat, 30))
    if launch.coordinator is not None:
        kwargs.update(coordinator_address=launch.coordinator,
                      num_processes=launch.num_processes, process_id=launch.process_id)
        host, _, port = launch.coordinator.rpartition(":")
        bind = "127.0.0.1" if _is_loopback(host) else "0.0.0.0"
        if bind == "127.0.0.1":
            kwargs["coordinator_bind_address"] = f"127.0.0.1:{port}"
        # jax aborts the process (no exception) when it cannot reach the coordinator or bind its
        # port; checking first turns both into errors that name the address
        if launch.process_id == 0:
            _check_port_free(bind, int(port), launch.coordinator)
        else:
            _wait_for_coordinator(host, int(port), init_timeout, launch)
    where = launch.coordinator or launch.source
    advice = ("Check that every process got the same --coordinator and --num-processes, a "
              "distinct --process-id, that process 0 started, and that the port is free.")
    # When not every process joins in time jax aborts the process from C++ (no exception):
    # say why first, naming the address.
    import threading
    watchdog = threading.Timer(max(init_timeout - 1.0, 0.5), lambda: print(
        f"jaxdiff: process {launch.process_id} of {launch.num_processes}: not all processes "
        f"joined the coordinator at {where} within {init_timeout} s; stopping. {advice}",
        flush=True))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:   # jax raises RuntimeError/XlaRuntimeError/ValueError here
        raise UserError(f"could not start process {launch.process_id} of "
                        f"{launch.num_processes} with the coordinator at {where}: "
                        f"{str(e).splitlines()[0][:300]}. {advice}") from e
    finally:
        watchdog.cancel()
    if launch.num_processes is not None:
        # the coordinator's count wins silently in jax: compare what each process was told
        check_same("start-up flags", {"num_processes": launch.num_processes,
                                      "coordinator": launch.coordinator})
    return launch


def _check_port_free(bind: str, port: int, coordinator: str) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((bind, port))
        except OSError as e:
            raise UserError(f"process 0 cannot run the coordinator at {coordinator}: port {port} "
                            f"is busy ({e.strerror}); choose a free port with --coordinator "
                            "HOST:PORT (the same on every process)") from None


def _wait_for_coordinator(host: str, port: int, timeout: float, launch: Launch) -> None:
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host.strip("[]"), port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(
                    f"process {launch.process_id} of {launch.num_processes}: no coordinator "
                    f"answered at {launch.coordinator} within {timeout:g} s "
                    f"({ENV_INIT_TIMEOUT}); start process 0 with the same --coordinator, or "
                    "check the address and the firewall") from None
            time.sleep(0.5)


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_main() -> bool:
    """True on the process that writes files (process 0)."""
    return jax.process_index() == 0


def describe(mesh: jax.sharding.Mesh | None = None) -> str:
    """One line: "process i of N: L local / G global devices (platform)[, mesh axis=size]"."""
    d = jax.devices()
    line = (f"process {jax.process_index()} of {jax.process_count()}: "
            f"{jax.local_device_count()} local / {len(d)} global devices ({d[0].platform})")
    if mesh is not None:
        line += ", mesh " + " x ".join(f"{a}={n}" for a, n in mesh.shape.items())
    return line


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier called `name` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def main_first(fn, name: str):
    """`fn()` on process 0, then (after a barrier called `name`) on the others: work with a
    shared on-disk result, such as building a data cache entry, is done once and read by the
    rest instead of every process racing to build it. Every process must call this at the same
    point. A failure on process 0 still releases the others (they then run `fn` themselves, and
    fail or succeed on their own)."""
    if jax.process_count() == 1:
        return fn()
    if jax.process_index() == 0:
        try:
            return fn()
        finally:
            barrier(name)
    barrier(name)
    return fn()


def to_host(tree: Any) -> Any:
    """Every array leaf of `tree` as a numpy array holding its full global value.

    Fully addressable arrays are copied; replicated ones are read from a local shard;
    sharded ones spanning other processes are gathered (a collective: every process must call
    this with the same arrays in the same order). Non-array leaves pass through unchanged.
    """
    def one(x):
        if not isinstance(x, jax.Array):
            return x
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_shards[0].data)
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def _allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's `data` (variable length), in process order."""
    from jax.experimental import multihost_utils
    n = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int64)))
    size = int(n.max())
    buf = np.zeros(size, np.uint8)
    buf[:len(data)] = np.frombuffer(data, np.uint8)
    allb = np.asarray(multihost_utils.process_allgather(buf)).reshape(-1, size)
    return [bytes(allb[i, :int(n.reshape(-1)[i])]) for i in range(allb.shape[0])]


def flat_items(obj: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of nested dicts by dotted key: `{"a": {"b": 1}} -> {"a.b": 1}`."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out = {}
    for k, v in obj.items():
        out.update(flat_items(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_same(what: str, value: Any) -> None:
    """Raise `UserError` on every process if `value` (JSON-able) differs between processes.

    The message names the differing keys (dotted, for nested dicts) and each process's value.
    The comparison is of canonical JSON, so NaN equals NaN (no false alarm on a NaN statistic).
    """
    if jax.process_count() == 1:
        return
    mine = json.dumps(value, sort_keys=True, default=str)
    texts = [b.decode() for b in _allgather_bytes(mine.encode())]
    if all(t == texts[0] for t in texts):
        return
    values = [flat_items(json.loads(t)) for t in texts]
    keys = sorted(set().union(*values))
    diff = [k for k in keys if len({json.dumps(v.get(k), default=str) for v in values}) > 1]
    lines = [f"  {k or what}: " + ", ".join(f"process {i}: {v.get(k, '<absent>')!r}"
                                            for i, v in enumerate(values)) for k in diff[:20]]
    raise UserError(f"the processes disagree on the {what} ({len(diff)} key(s)); every process "
                    "must run the same command with the same config:\n" + "\n".join(lines))


def agree(value: Any) -> Any:
    """Process 0's `value` (JSON-able) on every process: host-side decisions (is a cache file
    there? which checkpoint is newest?) must be taken once, or the processes would run different
    compiled programs and deadlock."""
    if jax.process_count() == 1:
        return value
    texts = _allgather_bytes(json.dumps(value, default=str).encode())
    return json.loads(texts[0].decode())


def check_shared_dir(path: str) -> None:
    """Raise `UserError` on every process unless all processes see the directory `path` that
    process 0 created (the run directory must be on a filesystem every host mounts)."""
    if jax.process_count() == 1:
        return
    token = agree(os.urandom(8).hex())          # process 0's token, known to all
    marker = os.path.join(path, f".process_check_{token}")
    if is_main():
        with open(marker, "w") as f:
            f.write(token)
    barrier(f"shared_dir_{token}")
    try:
        with open(marker) as f:
            seen = f.read() == token
    except OSError:
        seen = False
    from jax.experimental import multihost_utils
    flags = np.asarray(multihost_utils.process_allgather(np.array([seen]))).reshape(-1)
    barrier(f"shared_dir_read_{token}")
    if is_main():
        os.remove(marker)
    if not flags.all():
        blind = [str(i) for i in np.flatnonzero(~flags)]
        raise UserError(f"run directory {path} is not visible to process(es) {', '.join(blind)}: "
                        "run_dir must be on a filesystem that every host mounts at the same path")
