"""Helpers shared by the pipelines: run directories, model factories, augmentation choice."""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np

from jaxdiff.config_utils import require_choice

# Digit datasets are not flipped (DSA README): flipping changes a digit's identity.
DIGIT_DATASETS = {"digits", "mnist", "svhn_cropped"}
DSA_FULL = "color_crop_cutout_flip_scale_rotate"
DSA_DIGITS = "color_crop_cutout_scale_rotate"


def make_run_dir(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    os.makedirs(path, exist_ok=True)
    return path


def save_config(run_dir: str, config: ml_collections.ConfigDict) -> None:
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2, default=str)


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=lambda o: np.asarray(o).tolist())
    os.replace(tmp, path)


def dsa_strategy_for(dataset: str, strategy: str) -> str:
    """Resolve `auto` to the spec's strategy for the dataset; '' or 'none' disables DSA."""
    if strategy == "auto":
        return DSA_DIGITS if dataset in DIGIT_DATASETS else DSA_FULL
    return "" if strategy == "none" else strategy


def make_augment(dataset: str, strategy: str):
    """Per-sample DSA `augment(key, images)` for evaluation/expert training, or None."""
    strategy = dsa_strategy_for(dataset, strategy)
    if not strategy:
        return None
    from jaxdiff.distill import augment as dsa
    return functools.partial(_augment_per_sample, strategy=strategy, fn=dsa.augment)


def _augment_per_sample(key, images, *, strategy, fn):
    return fn(key, images, strategy=strategy, siamese=False)


MODEL_NAMES = ("convnet", "resnet18", "mlp")


def model_factory(model_cfg: ml_collections.ConfigDict, image_shape, num_classes):
    """A hashable `make_model(rngs)` for the classifier described by `model_cfg`.

    `model_cfg.depth = 0` picks the ConvNet depth for the image size (32 -> 3, 16 -> 2, ...).
    """
    from jaxdiff import models

    name = require_choice(model_cfg.name, MODEL_NAMES, "model.name")
    h, w, c = image_shape
    if name == "convnet":
        depth = model_cfg.depth or models.convnet_depth_for(h)
        return functools.partial(models.ConvNet, in_channels=c, num_classes=num_classes,
                                 image_size=h, depth=depth, width=model_cfg.width,
                                 norm=model_cfg.norm)
    if name == "resnet18":
        return functools.partial(models.ResNet18, in_channels=c, num_classes=num_classes,
                                 norm=model_cfg.norm if model_cfg.norm != "instancenorm" else "instancenorm")
    return functools.partial(models.MLP, in_features=h * w * c, out_features=num_classes,
                             hidden=(model_cfg.width, model_cfg.width))


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
