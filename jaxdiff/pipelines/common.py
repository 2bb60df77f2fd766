"""What every pipeline shares: the run directory's start, a timer, the data mesh check, a line
describing the devices."""

from __future__ import annotations

import os
import time

import jax

from jaxdiff import distributed, sharding
from jaxdiff.specs.base import Resolution, SpecError, print_resolved, write_config


def make_run_dir(path: str) -> str:
    """`path` made absolute and created (with its parents)."""
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    return path


def open_run_dir(run_dir: str, resolution: Resolution) -> str:
    """Make `run_dir`, print the resolved block and write `config.json` (the resolved config and
    how it was resolved); returns the absolute path. With several processes: process 0 prints
    and writes, and every process must see the directory (a `UserError` otherwise)."""
    path = make_run_dir(run_dir)
    distributed.check_shared_dir(path)
    if distributed.is_main():
        print_resolved(resolution)
    write_config(path, resolution)
    return path


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
