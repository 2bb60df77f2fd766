"""`jaxdiff evaluate`: train fresh networks on a labelled set, test them on the real test split.

The path (config -> `jaxdiff.specs.evaluate.resolve` -> here): the training set (`full` real
split, `random` real images per class, or a `synthetic` set saved by `jaxdiff distill`) ->
`distill.evaluate.train_and_test` (all runs in one program, vmapped or one after another:
`train.run_mode`) -> `results.json` and a grid of the training images.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

from jaxdiff import data as jdata
from jaxdiff.distill import augment as dsa
from jaxdiff.distill.evaluate import choose_run_mode, train_and_test
from jaxdiff.distill.synset import LabelledSet, load_synset, save_synset
from jaxdiff.files import atomic_write_json
from jaxdiff.images import save_grid
from jaxdiff.pipelines import common
from jaxdiff.specs.evaluate import EvaluateSpec


def training_set(spec: EvaluateSpec, train: jdata.Dataset) -> LabelledSet:
    """The labelled set the networks train on, normalised with the dataset's statistics."""
    info = train.info
    mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
    if spec.source == "full":
        return LabelledSet(jdata.normalize(train.images, info), train.labels, info.name, mean, std,
                           method="full training set")
    if spec.source == "random":
        idx = jdata.sample_per_class(spec.run.seed, train.labels, info.num_classes, spec.ipc)
        return LabelledSet(jdata.normalize(train.images[idx], info), train.labels[idx], info.name,
                           mean, std, method=f"random real, {spec.ipc} per class")
    return load_synset(spec.synthetic_path)   # its dataset, shape and labels: checked by resolve


def show_progress(wanted: bool, stream=None) -> bool:
    """The progress bar only where someone watches it: asked for and stderr a terminal. (It is
    a host callback inside the compiled loop; in a log file it would be noise.)"""
    stream = sys.stderr if stream is None else stream
    return bool(wanted) and hasattr(stream, "isatty") and stream.isatty()


def run(spec: EvaluateSpec) -> dict:
    """Run the evaluation described by `spec`; returns (and saves) the results dict."""
    timer = common.Timer()
    # Memory-mapped: a random subset reads only its rows (a synthetic set reads none).
    train, test = spec.data.load("train", mmap=True), spec.data.load("test")
    info = train.info
    labelled = training_set(spec, train)
    run_dir = common.open_run_dir(spec.run.run_dir, spec.resolution,
                                  resume=spec.run.resume)
    if spec.source != "synthetic":
        save_synset(run_dir, labelled)
    t = spec.train
    lr = t.lr
    if t.use_saved_lr and np.isfinite(labelled.lr):
        lr = float(labelled.lr)
        print(f"[jaxdiff evaluate] train.lr -> {lr:g} (the set's saved learning rate; "
              "train.use_saved_lr)", flush=True)
    print(f"[jaxdiff evaluate] {info.name}: training on {len(labelled.labels)} images "
          f"({labelled.method}), testing on {len(test.labels)}; {t.num_runs} runs x "
          f"{t.epochs + 1} epochs on {common.describe_devices()} "
          f"(runs {choose_run_mode(t.run_mode, jax.devices())})", flush=True)
    # The test split is normalised as the training set was: a saved set carries the statistics
    # it was made with (e.g. CIFAR-100 distilled with CIFAR-10's, as MTT/DDiF do).
    test_info = info
    if not all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in
               ((labelled.mean, info.mean), (labelled.std, info.std))):
        test_info = jdata.with_stats(info, (labelled.mean, labelled.std))
        print(f"[jaxdiff evaluate] the test split is normalised with the set's statistics "
              f"(mean {test_info.mean}, std {test_info.std})", flush=True)
    result = train_and_test(
        jax.random.key(spec.run.seed), labelled.images, labelled.labels,
        jdata.normalize(test.images, test_info), test.labels,
        make_model=spec.model.factory(info.image_shape, info.num_classes), num_runs=t.num_runs,
        epochs=t.epochs, lr=lr, batch_size=t.batch_size,
        augment=dsa.per_sample_augment(t.dsa_strategy), eval_epochs=t.eval_epochs,
        progress=show_progress(spec.run.progress), run_mode=t.run_mode)
    out = {
        "dataset": info.name, "source": spec.source, "method": labelled.method,
        "train_images": int(len(labelled.labels)),
        "accuracy_mean": result.mean, "accuracy_std": result.std,
        "accuracy_runs": result.accuracy.tolist(), "eval_epochs": list(result.eval_epochs),
        "accuracy_at_epochs": result.accuracy_at.tolist(),
        "best_over_checkpoints_mean": result.best_over_checkpoints,
        "figure": "final epoch (best_over_checkpoints is test-set model selection, for comparison)",
        "epochs": t.epochs, "lr": float(lr), "seconds": timer.elapsed(),
        "devices": common.describe_devices(),
    }
    atomic_write_json(os.path.join(run_dir, "results.json"), out)
    grid = _save_grid(run_dir, labelled, info)
    print(f"[jaxdiff evaluate] accuracy {result.summary()} in {out['seconds']:.0f} s", flush=True)
    print(f"[jaxdiff evaluate] results: {os.path.join(run_dir, 'results.json')}; images: {grid}")
    return out


def _save_grid(run_dir: str, s: LabelledSet, info, max_images: int = 400) -> str:
    """PNG of (up to 400) training images in pixel space, one class per row (up to 20)."""
    x = np.clip(np.asarray(s.images[:max_images]) * s.std + s.mean, 0.0, 1.0)
    counts = np.bincount(np.asarray(s.labels))
    ncol = int(min(counts.max() if counts.max() > 1 else len(counts), 20))
    return save_grid(os.path.join(run_dir, "train_images.png"), x, ncol=ncol,
                     scale=max(1, 64 // info.image_shape[0]))
