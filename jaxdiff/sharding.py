"""Device meshes and data placement.

Meshes come from `jax.make_mesh` with `axis_types` always given (the default changed to Explicit
in jax 0.9). jaxdiff uses `AxisType.Auto` for its data-parallel axis: arrays are placed with a
`NamedSharding` and XLA's partitioner propagates it through jitted code, which keeps library
functions free of sharding annotations. Per-device code that needs explicit collectives uses
`jax.shard_map` over the same mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def put(x: Any, target: jax.sharding.Sharding) -> jax.Array:
    """`jax.device_put(x, target)` that also works when `target` spans several processes.

    There every process must pass the same value (from the same seed or file). jax's own check
    of that compares with `==`, which fails on NaN (DDiF's warm-up statistics hold NaN), and a
    jax.Array on one process's devices cannot move across hosts; so host values (and host-local
    arrays, via numpy) are assembled from each process's addressable pieces instead.
    """
    if jax.process_count() == 1 or target.is_fully_addressable:
        return jax.device_put(x, target)
    if isinstance(x, jax.Array):
        if not x.is_fully_addressable:
            return jax.device_put(x, target)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x), target),
                                            impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, target, lambda idx: value[idx])


def data_mesh(num_devices: int | None = None, axis_name: str = DATA_AXIS, *,
              devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with one Auto axis over the first `num_devices` devices (all by default), or
    over the given `devices` (e.g. the first few of every process)."""
    if devices is None:
        n = jax.device_count() if num_devices is None else int(num_devices)
        if not 1 <= n <= jax.device_count():
            raise ValueError(f"num_devices={n} but only {jax.device_count()} devices are visible")
        devices = jax.devices()[:n]
    n = len(devices)
    return jax.make_mesh((n,), (axis_name,), axis_types=(AxisType.Auto,), devices=devices)


def devices_by_process(devices=None) -> list[list]:
    """The devices (default: all global ones) grouped by process, in process order, each group
    cut to the smallest group's size (a mesh takes the same share from every process)."""
    groups: dict[int, list] = {}
    for d in (jax.devices() if devices is None else devices):
        groups.setdefault(d.process_index, []).append(d)
    size = min(len(g) for g in groups.values())
    return [groups[p][:size] for p in sorted(groups)]


def batch_mesh(batch: int, axis_name: str = DATA_AXIS) -> jax.sharding.Mesh:
    """A 1-D mesh over as many global devices as split a batch of `batch` rows evenly.

    All devices when their count divides `batch`; otherwise the largest count that divides it
    and takes the same number of devices from every process (each process must hold a part of
    every program it runs), e.g. 100 rows on 8 devices -> 5, on 2 processes x 4 -> 2 + 2.
    """
    groups = devices_by_process()
    take = max((k for k in range(1, len(groups[0]) + 1) if batch % (k * len(groups)) == 0),
               default=0)
    if take == 0:
        raise ValueError(f"a batch of {batch} rows cannot be split evenly over "
                         f"{len(groups)} processes; use a multiple of {len(groups)}")
    return data_mesh(axis_name=axis_name, devices=[d for g in groups for d in g[:take]])


def batch_sharding(mesh: jax.sharding.Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Shard the leading axis over `axis_name`, replicate the rest."""
    return NamedSharding(mesh, P(axis_name))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(tree: Any, mesh: jax.sharding.Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Place every array of `tree` with its leading axis split over the mesh.

    The leading axis must divide evenly by the mesh size (a clear error otherwise: padding
    silently would change batch statistics).
    """
    n = mesh.shape[axis_name]

    def one(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0 or x.shape[0] % n:
            raise ValueError(f"cannot shard an array of shape {x.shape} over {n} devices: the "
                             f"leading axis must be a multiple of {n}")
        return put(x, batch_sharding(mesh, axis_name))

    return jax.tree.map(one, tree)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Place every array of `tree` on every device of the mesh."""
    target = replicated(mesh)
    return jax.tree.map(lambda x: put(x, target), tree)


def local_batch_to_global(local: Any, mesh: jax.sharding.Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Multi-host: assemble a global batch from each process's local shard of the data."""
    sharding = batch_sharding(mesh, axis_name)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def all_cpu(devices) -> bool:
    """True when every device in `devices` is an XLA:CPU device (the CPU-specific choices:
    evaluation runs in sequence, `class_chunk` auto 1, one step in flight)."""
    return all(d.platform == "cpu" for d in devices)


def settle_cpu_step(outputs: Any) -> None:
    """Wait for a training step's `outputs` when they span several CPU devices; otherwise return
    at once (one device, or an accelerator: dispatch stays asynchronous).

    Why: with several (e.g. fake) CPU devices, a data-parallel step dispatched while earlier
    steps are still queued can deadlock in XLA:CPU: its all-reduce waits for the parts of the
    highest-numbered devices, which never start, and XLA aborts the process after its 40 s
    rendezvous timeout (seen in 4 of about 90 runs of an 8-device quality-net training with
    steps queued ahead, in none of 50 with one step in flight). Keeping one step in flight costs
    little on CPU, where the host and the devices share the same cores anyway.
    """
    leaves = [x for x in jax.tree.leaves(outputs) if isinstance(x, jax.Array)]
    if not leaves:
        return
    devices = leaves[0].sharding.device_set
    if len(devices) > 1 and all_cpu(devices):
        jax.block_until_ready(leaves)
