"""Orbax checkpoints for long loops: full loop state, absolute paths, async saves, safe resume.

One thin module over Orbax's V0 `CheckpointManager` (jax-practice.md §5.3), so moving to the V1
API is a one-file change. A checkpoint holds two items:

* `state` — a pytree of arrays: parameters, optimiser state, step, RNG key data, ...
* `meta`  — JSON: the run's config fingerprint (to refuse resuming from another config), the
  mesh the state lived on (`describe_mesh`), metrics so far.

Saves are asynchronous; Orbax writes into a temporary directory and renames it only when the
write has finished, so a crash mid-save never destroys the last good checkpoint.

Several processes: every process calls `save`/`restore` (Orbax's multi-host protocol: each
writes the shards it owns, process 0 the metadata). Arrays that live on one process's devices
only (a loop state on the default device) cannot be saved that way; they are saved as arrays
replicated over all devices, and restored back onto the devices of `like`.

Another mesh: `restore` places every leaf as `like`'s leaf is placed, whatever mesh wrote it (a
state saved on 8 devices restores onto 4, or from 2 processes x 4 onto 1 x 8). The device count
(`MESH_KEYS`) is therefore left out of the fingerprint new checkpoints record
(`resume_fingerprints`), and the checkpoint names the mesh it was written on, so a resume on
another one can say so (`pipelines.loop.run_loop`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from jaxdiff import sharding
from jaxdiff.errors import UserError
from jaxdiff.files import fingerprint


# Top-level keys that control how a run is driven, not what it computes: a resume may change
# them (e.g. raise `iterations` to continue a finished run). Pipelines whose step depends on the
# total length (an lr schedule over `iterations`) must pass their own `ignore`.
RUN_CONTROL_KEYS = ("resume", "progress", "log_every", "checkpoint_every", "run_dir",
                    "iterations", "num_steps", "eval", "eval_every", "sample_every",
                    "divergence_limit", "class_chunk")


# Config keys that choose the devices a run computes on, not what it computes: a checkpoint is
# restored onto any mesh, so a resume may change them (the result then equals an uninterrupted
# run's up to the rounding of reductions split over another number of devices).
MESH_KEYS = ("num_devices",)


def config_fingerprint(config: Any, ignore: tuple[str, ...] = RUN_CONTROL_KEYS) -> str:
    """A stable short hash of a JSON-able config (dicts, ConfigDicts, lists, numbers, strings),
    leaving out the top-level keys in `ignore`."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in ignore}
    return fingerprint(config)


def resume_fingerprints(config: Any, ignore: tuple[str, ...] = RUN_CONTROL_KEYS) -> tuple[str, ...]:
    """The fingerprints a checkpoint may carry to resume with `config`. First the one new
    checkpoints record: `config` without `ignore` and `MESH_KEYS`, so a resume may change the
    device count. Then, when the config has mesh keys, `config_fingerprint(config, ignore)`:
    what checkpoints written before the mesh was recorded carry (they resume on the same
    device count only)."""
    new, old = config_fingerprint(config, ignore + MESH_KEYS), config_fingerprint(config, ignore)
    return (new,) if new == old else (new, old)


def describe_mesh(tree: Any) -> str | None:
    """Where `tree`'s arrays live, e.g. "8 devices (data=8)", "8 devices in 2 processes
    (data=8)", "1 device"; None without jax arrays. The first leaf placed on a mesh names it (a
    loop state lives on one mesh)."""
    arrays = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
    if not arrays:
        return None
    named = [x.sharding.mesh for x in arrays if isinstance(x.sharding, NamedSharding)]
    if named:
        devices = list(named[0].devices.flat)
        axes = " (" + ", ".join(f"{k}={v}" for k, v in named[0].shape.items()) + ")"
    else:
        devices, axes = list(arrays[0].sharding.device_set), ""
    processes = len({d.process_index for d in devices})
    where = f" in {processes} processes" if processes > 1 else ""
    return f"{len(devices)} device{'s' if len(devices) > 1 else ''}{where}{axes}"


def _replicated_everywhere() -> NamedSharding:
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("all",))
    return NamedSharding(mesh, PartitionSpec())


def _host_local(x) -> bool:
    """A leaf Orbax cannot save in a multi-process run: an array on this process's devices only."""
    return isinstance(x, jax.Array) and jax.process_count() > 1 and x.is_fully_addressable


def _to_global(tree: Any) -> Any:
    """Host-local leaves as arrays replicated over all devices (same value on every process)."""
    if jax.process_count() == 1:
        return tree
    target = _replicated_everywhere()
    return jax.tree.map(lambda x: sharding.put(x, target) if _host_local(x) else x, tree)


def _abstract(like: Any) -> Any:
    """Restore targets: `like`'s shapes/dtypes/shardings, host-local leaves replicated globally."""
    sharding = _replicated_everywhere() if jax.process_count() > 1 else None

    def one(x):
        if _host_local(x):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return ocp.utils.to_shape_dtype_struct(x)

    return jax.tree.map(one, like)


def _to_local(restored: Any, like: Any) -> Any:
    """Undo `_to_global`: restored leaves whose `like` was host-local go back onto its devices."""
    if jax.process_count() == 1:
        return restored

    def one(r, x):
        if not _host_local(x):
            return r
        return jax.device_put(r.addressable_shards[0].data, x.sharding)

    return jax.tree.map(one, restored, like)


class CorruptCheckpointError(UserError):
    """Raised when no checkpoint of a directory can be read back."""


class ConfigMismatchError(UserError):
    """Raised when resuming from a checkpoint written by a run with a different config."""


class Checkpointer:
    """Save and restore a loop's full state under `directory/<step>/`.

    Args:
      directory: where checkpoints live (made absolute; Orbax requires absolute paths).
      max_to_keep: how many recent checkpoints to keep.
      fingerprint: the config fingerprint of this run (see `config_fingerprint`), or several
        (`resume_fingerprints`): saves record the first; restore refuses checkpoints carrying
        none of them.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2,
                 fingerprint: str | tuple[str, ...] | None = None):
        self.directory = os.path.abspath(os.fspath(directory))
        self.accepted = (fingerprint,) if isinstance(fingerprint, str) else fingerprint
        self.fingerprint = self.accepted[0] if self.accepted else None
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict | None = None, *, wait: bool = False) -> None:
        """Start an asynchronous save of `state` (pytree of arrays) and `meta` (JSON) at `step`;
        the meta also records the fingerprint, the step and the mesh (`describe_mesh(state)`)."""
        meta = dict(meta or {})
        meta["config_fingerprint"] = self.fingerprint
        meta["mesh"] = describe_mesh(state)
        meta["step"] = int(step)
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(_to_global(state)),
                                    meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        if wait:
            self._manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[int, Any, dict]:
        """Restore `(step, state, meta)`; `like` is a pytree with the target shapes/dtypes/shardings
        (on any mesh: `meta["mesh"]` names the one the checkpoint was written on, None for
        checkpoints older than that record).

        Without `step`, the newest checkpoint that reads back: an unreadable one (a damaged
        disk, a truncated copy) is skipped with a warning naming it and the one used instead.

        Raises:
          FileNotFoundError: no checkpoint in the directory.
          CorruptCheckpointError: no checkpoint reads back (each one's error named).
          ConfigMismatchError: the checkpoint was written with another config.
        """
        self._manager.wait_until_finished()
        if step is not None:
            return self._restore_step(like, step)
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        failed = []
        for s in steps:
            try:
                restored = self._restore_step(like, s)
            except ConfigMismatchError:
                raise
            except Exception as e:  # noqa: BLE001  (Orbax raises many kinds on damaged files)
                failed.append(f"{self.directory}/{s}: {type(e).__name__}: {e}"[:400])
                continue
            if failed:
                warnings.warn(f"checkpoint {self.directory}/{steps[0]} does not read back; "
                              f"resuming from {self.directory}/{s} instead. Unreadable: "
                              + " | ".join(failed), stacklevel=2)
            return restored
        raise CorruptCheckpointError(f"no checkpoint in {self.directory} reads back: "
                                     + " | ".join(failed) + ". Start a fresh run directory.")

    def _restore_step(self, like: Any, step: int) -> tuple[int, Any, dict]:
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        found = meta.get("config_fingerprint")
        if self.accepted and found not in self.accepted:
            devices = (" (the device count may differ, except from checkpoints written before "
                       "they recorded their mesh)" if len(self.accepted) > 1 else "")
            raise ConfigMismatchError(
                f"checkpoint {self.directory}/{step} was written by a run with config fingerprint "
                f"{found}, but this run's config has fingerprint {self.fingerprint}. Resume with the "
                f"same config{devices}, or start a fresh run directory.")
        meta.setdefault("mesh", None)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(like))))
        return step, _to_local(restored.state, like), meta

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
