"""`jaxdiff evaluate`: config -> `EvaluateSpec`.

The training set is `source`: "full" (the whole real training split), "random" (`ipc` random
real images per class) or "synthetic" (a saved set, `synthetic_path`: a run directory or a
`synthetic.npz`). Derived: the ConvNet depth (0: by image size) and the DSA strategy ("auto": by
dataset). Checked before any work: `ipc` against the smallest class of the training split (the
registry's counts) and that `synthetic_path` holds a saved set; the set's dataset and image shape
are checked against `data` when the pipeline loads it. The saved set's learning rate (TM's
learned step size) replaces `train.lr` when `train.use_saved_lr` — the pipeline says so when it
happens. `train.run_mode` (optional, "auto") says how the runs share a device: vmapped or one
after another (`distill.evaluate`; "auto": sequential on CPU, vmapped on accelerators).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxdiff import data as jdata
from jaxdiff.distill.evaluate import RUN_MODES
from jaxdiff.distill.synset import FILENAME as SYNSET_FILE
from jaxdiff.distill.synset import load_synset
from jaxdiff.specs.base import Resolution, Resolver, SpecError
from jaxdiff.specs.common import (ClassifierSpec, DataSpec, RunSpec, classifier_spec, data_spec,
                                  dsa_strategy, run_spec)

SOURCES = ("full", "random", "synthetic")


@dataclasses.dataclass(frozen=True)
class ProtocolSpec:
    """The train-on-X / test-on-real protocol (`distill.evaluate.train_and_test`)."""

    epochs: int
    lr: float
    batch_size: int
    num_runs: int
    dsa_strategy: str               # resolved; '' = no augmentation
    eval_epochs: tuple[int, ...]    # extra test passes after these completed epochs
    use_saved_lr: bool
    run_mode: str = "auto"          # distill.evaluate.RUN_MODES: how each device trains its runs


@dataclasses.dataclass(frozen=True)
class EvaluateSpec:
    data: DataSpec
    source: str
    ipc: int
    synthetic_path: str
    model: ClassifierSpec
    train: ProtocolSpec
    run: RunSpec
    resolution: Resolution


def resolve(config) -> EvaluateSpec:
    """Resolve a `jaxdiff evaluate` config; SpecError on bad values."""
    r = Resolver("evaluate", config)
    data = data_spec(r)
    source = r.choice("source", SOURCES)
    ipc = r.integer("ipc", minimum=1 if source == "random" else 0)
    if source == "random":
        smallest = min(jdata.train_class_counts(data.name, data.data_dir))
        if ipc > smallest:
            raise SpecError(f"config key 'ipc' = {ipc} exceeds the smallest class of {data.name}'s "
                            f"training split ({smallest} images)")
    synthetic_path = r.path("synthetic_path")
    if source == "synthetic":
        _check_synset(synthetic_path, data)
    epochs = r.integer("train.epochs", minimum=0)
    eval_epochs = tuple(int(e) for e in r.get("train.eval_epochs"))
    bad = [e for e in eval_epochs if not 1 <= e <= epochs + 1]
    if bad:
        raise SpecError(f"config key 'train.eval_epochs' = {eval_epochs}: {bad} outside "
                        f"1..{epochs + 1} (train.epochs + 1 epochs are trained)")
    train = ProtocolSpec(epochs, r.number("train.lr", 0.0, strict=True),
                         r.integer("train.batch_size", minimum=1),
                         r.integer("train.num_runs", minimum=1),
                         dsa_strategy(r, "train.dsa_strategy", data.name), eval_epochs,
                         r.flag("train.use_saved_lr"), run_mode(r, "train.run_mode"))
    return EvaluateSpec(data, source, ipc, synthetic_path,
                        classifier_spec(r, "model", data.info.image_shape), train,
                        run_spec(r, loop=False), r.resolution(resumable=False))


def run_mode(r: Resolver, key: str) -> str:
    """`key` (optional, default "auto"): how each device trains its evaluation runs, "vmap",
    "sequential" or "auto" (sequential on CPU, vmapped on accelerators; `distill.evaluate`)."""
    return r.choice(key, RUN_MODES) if r.has(key) else "auto"


def _check_synset(path: str, data: DataSpec) -> None:
    """`path` (absolute) must be a saved set of `data`'s dataset and image shape: a run directory
    holding `synthetic.npz`, or the file itself."""
    if not path:
        raise SpecError("source=synthetic needs --config.synthetic_path=RUN_DIR_OR_NPZ")
    file = os.path.join(path, SYNSET_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise SpecError(f"config key 'synthetic_path' = {path!r}: no {SYNSET_FILE} there (a run "
                        "directory of `jaxdiff distill` or `jaxdiff evaluate`, or the file)")
    s = load_synset(file)
    where = f"config key 'synthetic_path': the set at {file}"
    if s.dataset != data.name:
        raise SpecError(f"{where} was made from {s.dataset!r}, but data.name is {data.name!r}; "
                        f"set --config.data.name={s.dataset}")
    if tuple(s.images.shape[1:]) != tuple(data.info.image_shape):
        raise SpecError(f"{where} has images of shape {tuple(s.images.shape[1:])}, the dataset's "
                        f"at data.image_size={data.image_size or 0} are "
                        f"{tuple(data.info.image_shape)}; set data.image_size to the set's size")
    labels = np.asarray(s.labels)
    if labels.size and (labels.min() < 0 or labels.max() >= data.info.num_classes):
        raise SpecError(f"{where} has labels in [{labels.min()}, {labels.max()}], outside the "
                        f"{data.info.num_classes} classes of {data.name}")
    if s.zca:
        raise SpecError(f"{where} is in ZCA space; evaluating ZCA-space sets (the test split "
                        "transformed with the training ZCA) is not wired into `jaxdiff evaluate`")
