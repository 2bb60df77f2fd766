"""What every pipeline shares: the run directory's start, a timer, the data mesh check, a line
describing the devices."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax

from jaxdiff import distributed, sharding
from jaxdiff.errors import UserError
from jaxdiff.files import json_default
from jaxdiff.specs.base import Resolution, SpecError, print_resolved, write_config


def make_run_dir(path: str) -> str:
    """`path` made absolute and created (with its parents)."""
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    return path


class RunDirError(UserError, FileExistsError):
    """`run_dir` holds a run this one must not write over (refused before anything is written)."""


def open_run_dir(run_dir: str, resolution: Resolution, *, resume: bool = False,
                 key: str = "run_dir") -> str:
    """Check what `run_dir` holds, then make it, print the resolved block and write
    `config.json` (the resolved config and how it was resolved); returns the absolute path.

    Refused before a byte is written (`UserError`): a path that is a file; a directory holding
    another command's run; an earlier run of this command without `--resume` (unless the command
    does not resume: evaluate and sample write again); `--resume` where there is no run, or with
    a config that differs in keys other than `resolution.resume_safe` (each differing key named
    with both values). With several processes: process 0 looks, prints and writes, and every
    process must see the directory. `key`: the config key naming the directory, for messages.
    """
    path = os.path.abspath(os.path.expanduser(run_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"config key {key!r} = {path!r} is a file; choose a directory")
    check_run_dir(path, distributed.agree(previous_run(path)), resolution, resume)
    make_run_dir(path)
    distributed.check_shared_dir(path)
    if distributed.is_main():
        print_resolved(resolution)
    write_config(path, resolution)
    return path


def previous_run(path: str) -> dict | None:
    """`{"command", "config"}` of the run recorded in `<path>/config.json`, or None."""
    file = os.path.join(path, "config.json")
    if not os.path.exists(file):
        return None
    try:
        with open(file) as f:
            recorded = json.load(f)
        return {"command": recorded["command"], "config": recorded["config"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{file} is not a jaxdiff config.json ({e}); choose another run_dir") from None


def check_run_dir(path: str, previous: dict | None, resolution: Resolution, resume: bool) -> None:
    """Raise a `UserError` if this run may not write into `path` (see `open_run_dir`)."""
    cmd = resolution.command
    if previous is None:
        if resume and resolution.resumable:
            raise UserError(f"--resume: {path} holds no {cmd} run to continue (no config.json); "
                            "run without --resume to start one there")
        return
    if previous["command"] != cmd:
        raise RunDirError(f"{path} holds a `jaxdiff {previous['command']}` run, not a {cmd} run; "
                          "choose another run_dir")
    if not resolution.resumable:
        return
    if not resume:
        raise RunDirError(f"{path} already holds a {cmd} run; pass --resume to continue it, or "
                          "choose another run_dir")
    # as config.json holds it (tuples become lists), so equal values compare equal
    current = json.loads(json.dumps(resolution.config, default=json_default))
    changed = config_changes(previous["config"], current, resolution.resume_safe)
    if changed:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changed)
        safe = ", ".join(dict.fromkeys(resolution.resume_safe))
        raise UserError(f"--resume: {path} was run with another config ({listed}). Resume with "
                        f"its values (a resume may change only {safe}), or choose another "
                        "run_dir")


def config_changes(old: dict, new: dict, safe: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """`(dotted key, old value, new value)` for every leaf that differs between two configs,
    leaving out the keys in `safe` and everything under them."""
    a, b = distributed.flat_items(old), distributed.flat_items(new)
    missing = object()
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)
            and not any(k == s or k.startswith(s + ".") for s in safe)]


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def data_mesh_checked(num_devices: int, **batch_sizes: int):
    """`(mesh, n)`: a 1-D data mesh over `num_devices` (0 = all) and its size, after checking that
    every named batch size (config key, `__` for `.` -> value) splits evenly over it."""
    if distributed.process_count() > 1 and num_devices not in (0, jax.device_count()):
        raise SpecError(f"config key 'num_devices' = {num_devices}: a run over "
                        f"{distributed.process_count()} processes uses all "
                        f"{jax.device_count()} devices; set num_devices=0")
    mesh = sharding.data_mesh(num_devices or None)
    n = mesh.shape[sharding.DATA_AXIS]
    for key, size in batch_sizes.items():
        if size % n:
            raise SpecError(f"config key {key.replace('__', '.')!r} = {size} must be a multiple "
                            f"of the number of devices ({n})")
    return mesh, n


def describe_devices() -> str:
    """E.g. "8 x cpu (cpu)"."""
    d = jax.devices()
    return f"{len(d)} x {d[0].platform} ({d[0].device_kind})"
