"""Helpers shared by the pipelines: run directories, model factories, augmentation choice."""

from __future__ import annotations

import os
import time

import jax
import ml_collections

from jaxdiff.distill import augment as dsa
from jaxdiff.files import atomic_write_json
from jaxdiff.models import classifiers
from jaxdiff.specs.base import Resolution, print_resolved, write_config


def make_run_dir(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    return path


def open_run_dir(run_dir: str, resolution: Resolution) -> str:
    """Make `run_dir`, print the resolved block and write `config.json` (the resolved config and
    how it was resolved); returns the absolute path."""
    path = make_run_dir(run_dir)
    print_resolved(resolution)
    write_config(path, resolution)
    return path


def save_config(run_dir: str, config: ml_collections.ConfigDict) -> None:
    atomic_write_json(os.path.join(run_dir, "config.json"), config.to_dict())


def write_json(path: str, obj) -> None:
    atomic_write_json(path, obj)


# Transitional: the commands still on ConfigDicts build these from their config sections.
MODEL_NAMES = classifiers.CLASSIFIERS


def dsa_strategy_for(dataset: str, strategy: str) -> str:
    return dsa.strategy_for(dataset, strategy)


def make_augment(dataset: str, strategy: str):
    return dsa.per_sample_augment(dsa.strategy_for(dataset, strategy))


def model_factory(model_cfg, image_shape, num_classes):
    return classifiers.classifier_factory(model_cfg.name, image_shape, num_classes,
                                          depth=model_cfg.depth, width=model_cfg.width,
                                          norm=model_cfg.norm)


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def data_mesh_checked(num_devices: int, **batch_sizes: int):
    """`(mesh, n)`: a 1-D data mesh over `num_devices` (0 = all) and its size, after checking that
    every named batch size (config key -> value) splits evenly over it."""
    from jaxdiff import sharding

    mesh = sharding.data_mesh(num_devices or None)
    n = mesh.shape[sharding.DATA_AXIS]
    for key, size in batch_sizes.items():
        if size % n:
            raise ValueError(f"config key {key.replace('__', '.')!r} = {size} must be a multiple "
                             f"of the number of devices ({n})")
    return mesh, n


def describe_devices() -> str:
    d = jax.devices()
    return f"{len(d)} x {d[0].platform} ({d[0].device_kind})"
