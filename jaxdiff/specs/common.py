"""Spec sections shared by several commands: the dataset, a classifier, DSA, run control.

Each `*_spec(r, prefix, ...)` reads one config section through a `Resolver` (so every default it
fills in is printed in the command's resolved block) and returns a frozen dataclass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxdiff import data as jdata
from jaxdiff import distributed
from jaxdiff.distill import augment as dsa
from jaxdiff.metrics import LOSS_DIVERGENCE_LIMIT
from jaxdiff.models import classifiers
from jaxdiff.models.init import NORMS
from jaxdiff.models.resnet import RESNET_NORMS
from jaxdiff.specs.base import Resolver, SpecError


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A dataset as a command reads it.

    Attributes:
      name: jaxdiff dataset name (`jaxdiff.data.DATASET_NAMES`).
      data_dir: TFDS root, or None for the default search.
      image_size: side length images are resized to, or None for the native size.
      info: the training split's `DatasetInfo` (shape after resizing, classes, statistics).
      stats: other normalisation statistics (`jaxdiff.data.with_stats` names, e.g. "cifar10"
        for CIFAR-100 as MTT/DDiF normalise it), or None for the dataset's own.
    """

    name: str
    data_dir: str | None
    image_size: int | None
    info: jdata.DatasetInfo
    stats: str | None = None

    def load(self, split: str, *, mmap: bool = False) -> jdata.Dataset:
        """The whole split as host uint8 arrays (decoded once, then cached on disk); `mmap`:
        memory maps of the cache, read as they are indexed. With several processes, process 0
        loads first (building the cache entry once) and the others then read it."""
        return distributed.main_first(
            lambda: jdata.load(self.name, split, data_dir=self.data_dir,
                               image_size=self.image_size, mmap=mmap, stats=self.stats),
            f"jaxdiff data {self.name} {split}")


def data_spec(r: Resolver, prefix: str = "data") -> DataSpec:
    """The `data` section: `name`, `data_dir` ('' = default search), `image_size` (0 = native),
    `stats` ('' = the dataset's own normalisation statistics)."""
    name = r.choice(f"{prefix}.name", jdata.DATASET_NAMES)
    size = r.integer(f"{prefix}.image_size", minimum=0) if r.has(f"{prefix}.image_size") else 0
    data_dir = r.get(f"{prefix}.data_dir", "") or None
    stats = r.get(f"{prefix}.stats", "") or None
    try:
        info = jdata.get_info(name, "train", image_size=size or None, stats=stats)
    except ValueError as e:
        raise SpecError(f"config key '{prefix}.stats': {e}") from None
    jdata.check_available(name, data_dir)   # absent: refused here, naming every directory tried
    return DataSpec(name, data_dir, size or None, info, stats)


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """A classifier architecture (`jaxdiff.models.classifiers`), depth resolved.

    Attributes:
      name: "convnet" | "resnet18" | "mlp".
      depth: ConvNet blocks (resolved from the image size when the config says 0).
      width: ConvNet filters per block / MLP hidden units.
      norm: "instancenorm" | "batchnorm" | "layernorm" | "none" ...
    """

    name: str
    depth: int
    width: int
    norm: str

    def factory(self, image_shape, num_classes: int) -> Callable:
        """A `make_model(rngs)` factory for images of `image_shape` and `num_classes` classes."""
        return classifiers.classifier_factory(self.name, image_shape, num_classes,
                                              depth=self.depth, width=self.width, norm=self.norm)

    def as_config(self) -> dict:
        """The config section this spec came from (`depth` as resolved)."""
        return dataclasses.asdict(self)


def classifier_spec(r: Resolver, prefix: str, image_shape) -> ClassifierSpec:
    """The `model`-style section `prefix` (`name`, `depth` 0 = by image size, `width`, `norm`)."""
    name = r.choice(f"{prefix}.name", classifiers.CLASSIFIERS)
    depth = r.integer(f"{prefix}.depth", minimum=0) if r.has(f"{prefix}.depth") else 0
    if name == "convnet" and not depth:
        try:
            by_size = classifiers.convnet_depth_for(tuple(int(s) for s in image_shape[:2]))
        except ValueError as e:
            why = str(e).removesuffix("; pass depth= explicitly")
            raise SpecError(f"config key '{prefix}.depth' = 0 (by image size): {why}; set "
                            f"--config.{prefix}.depth explicitly") from None
        depth = r.derive(f"{prefix}.depth", by_size, f"ConvNet depth for {image_shape[0]} px images")
    width = r.integer(f"{prefix}.width", minimum=1)
    norms = RESNET_NORMS if name == "resnet18" else NORMS
    norm = r.choice(f"{prefix}.norm", norms) if r.has(f"{prefix}.norm") else "instancenorm"
    return ClassifierSpec(name, depth, width, norm)


def dsa_strategy(r: Resolver, key: str, dataset: str) -> str:
    """The DSA strategy at `key`: "auto" -> the dataset's strategy (noted), "none"/"" -> ""."""
    given = str(r.get(key))
    strategy = dsa.strategy_for(dataset, given)
    if given == "auto":
        r.derive(key, strategy, f"DSA strategy for {dataset}")
    if strategy:
        try:
            dsa.parse_strategy(strategy)
        except ValueError as e:
            raise SpecError(f"config key {key!r}: {e}") from None
    return strategy


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """How a run is driven (none of it changes what the run computes).

    Attributes:
      run_dir: absolute path of the run directory.
      resume: continue from the run's last checkpoint.
      progress: show progress bars.
      seed: the run's root seed.
      num_devices: data-parallel devices (0 = all).
      log_every, checkpoint_every: loop cadence in steps (0 where a command has no loop).
      divergence_limit: a loop command stops when its training loss exceeds this many times its
        first logged value (`metrics.check_growth`; 0 = never). Distill's own limit (on the
        synthetic values) is `DistillSpec.divergence_limit`.
    """

    run_dir: str
    resume: bool
    progress: bool
    seed: int
    num_devices: int
    log_every: int = 0
    checkpoint_every: int = 0
    divergence_limit: float = 0.0


def run_spec(r: Resolver, *, run_dir_key: str = "run_dir", loop: bool = True,
             loss_divergence: bool | None = None) -> RunSpec:
    """The run-control keys: `run_dir`, `resume`, `progress`, `seed`, `num_devices`; for a
    command with a loop, `log_every` and `checkpoint_every` (both >= 1); with `loss_divergence`
    (default: `loop`), `divergence_limit` (>= 0; absent: `metrics.LOSS_DIVERGENCE_LIMIT`)."""
    run_dir = r.path(run_dir_key)
    if not run_dir:
        raise SpecError(f"config key {run_dir_key!r} must name a directory")
    log = r.integer("log_every", minimum=1) if loop else 0
    ckpt = r.integer("checkpoint_every", minimum=1) if loop else 0
    seed = r.integer("seed", minimum=0) if r.has("seed") else 0
    devices = r.integer("num_devices", minimum=0) if r.has("num_devices") else 0
    limit = 0.0
    if loop if loss_divergence is None else loss_divergence:
        limit = (r.number("divergence_limit", 0.0) if r.has("divergence_limit")
                 else LOSS_DIVERGENCE_LIMIT)
    return RunSpec(run_dir=run_dir, resume=bool(r.get("resume", False)),
                   progress=bool(r.get("progress", True)), seed=seed, num_devices=devices,
                   log_every=log, checkpoint_every=ckpt, divergence_limit=limit)


def as_tuple(value: Any, key: str) -> tuple:
    """A config value that may be one item or a sequence, as a non-empty tuple."""
    if isinstance(value, (str, int, float)):
        value = (value,)
    value = tuple(value)
    if not value:
        raise SpecError(f"config key {key!r} must list at least one entry")
    return value
