"""`jaxdiff evaluate`: train fresh networks on a labelled set, test them on the real test split.

The training set is one of
* `full`      — the whole real training split;
* `random`    — `ipc` random real images per class (the random-selection baseline);
* `synthetic` — a saved set (`synthetic.npz`, see `jaxdiff.distill.synset`) from a distillation run.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import data as jdata
from jaxdiff.config_utils import require_choice
from jaxdiff.distill.evaluate import EvalResult, train_and_test
from jaxdiff.distill.synset import LabelledSet, load_synset, save_synset
from jaxdiff.images import save_grid
from jaxdiff.pipelines import common

SOURCES = ("full", "random", "synthetic")


def load_split_pair(data_cfg):
    """(train Dataset, test Dataset) for the config's dataset."""
    kw = dict(data_dir=data_cfg.data_dir or None, image_size=data_cfg.image_size or None)
    return jdata.load(data_cfg.name, "train", **kw), jdata.load(data_cfg.name, "test", **kw)


def build_training_set(config, train, info) -> LabelledSet:
    source = require_choice(config.source, SOURCES, "source")
    mean, std = np.asarray(info.mean, np.float32), np.asarray(info.std, np.float32)
    if source == "full":
        return LabelledSet(jdata.normalize(train.images, info), train.labels, info.name, mean, std,
                           method="full training set")
    if source == "random":
        if config.ipc < 1:
            raise ValueError(f"config key 'ipc' must be >= 1 for source=random, got {config.ipc}")
        idx = jdata.sample_per_class(config.seed, train.labels, info.num_classes, config.ipc)
        return LabelledSet(jdata.normalize(train.images[idx], info), train.labels[idx], info.name,
                           mean, std, method=f"random real, {config.ipc} per class")
    if not config.synthetic_path:
        raise ValueError("source=synthetic needs --config.synthetic_path=RUN_DIR_OR_NPZ")
    s = load_synset(config.synthetic_path)
    if s.dataset != info.name:
        raise ValueError(f"synthetic set at {config.synthetic_path} was made from {s.dataset!r}, "
                         f"but data.name is {info.name!r}")
    if tuple(s.images.shape[1:]) != tuple(info.image_shape):
        raise ValueError(f"synthetic images have shape {s.images.shape[1:]}, the dataset's are "
                         f"{tuple(info.image_shape)}")
    if s.zca:
        raise NotImplementedError("evaluating ZCA-space sets: transform the test split with the "
                                  "training ZCA first (not wired into `jaxdiff evaluate` yet)")
    return s


def run(config: ml_collections.ConfigDict) -> dict:
    """Run the evaluation described by `config`; returns (and saves) the results dict."""
    timer = common.Timer()
    train, test = load_split_pair(config.data)
    info = train.info
    labelled = build_training_set(config, train, info)
    run_dir = common.make_run_dir(config.run_dir)
    common.save_config(run_dir, config)
    if config.source != "synthetic":
        save_synset(run_dir, labelled)
    lr = config.train.lr
    if config.train.use_saved_lr and np.isfinite(labelled.lr):
        lr = float(labelled.lr)

    make_model = common.model_factory(config.model, info.image_shape, info.num_classes)
    augment = common.make_augment(info.name, config.train.dsa_strategy)
    test_x = jdata.normalize(test.images, info)
    print(f"[jaxdiff evaluate] {info.name}: training on {len(labelled.labels)} images "
          f"({labelled.method}), testing on {len(test.labels)}; {config.train.num_runs} runs x "
          f"{config.train.epochs + 1} epochs on {common.describe_devices()}", flush=True)
    result: EvalResult = train_and_test(
        jax.random.key(config.seed), labelled.images, labelled.labels, test_x, test.labels,
        make_model=make_model, num_runs=config.train.num_runs, epochs=config.train.epochs,
        lr=lr, batch_size=config.train.batch_size, augment=augment,
        eval_epochs=tuple(config.train.eval_epochs), progress=config.progress)
    out = {
        "dataset": info.name,
        "source": config.source,
        "method": labelled.method,
        "train_images": int(len(labelled.labels)),
        "accuracy_mean": result.mean,
        "accuracy_std": result.std,
        "accuracy_runs": result.accuracy.tolist(),
        "eval_epochs": list(result.eval_epochs),
        "accuracy_at_epochs": result.accuracy_at.tolist(),
        "best_over_checkpoints_mean": result.best_over_checkpoints,
        "figure": "final epoch (best_over_checkpoints is test-set model selection, for comparison)",
        "epochs": config.train.epochs,
        "lr": float(lr),
        "seconds": timer.elapsed(),
        "devices": common.describe_devices(),
    }
    common.write_json(os.path.join(run_dir, "results.json"), out)
    grid = save_grid(os.path.join(run_dir, "train_images.png"),
                     _display(labelled), ncol=_grid_cols(labelled.labels), scale=_scale(info))
    print(f"[jaxdiff evaluate] accuracy {result.summary()} in {out['seconds']:.0f} s", flush=True)
    print(f"[jaxdiff evaluate] results: {os.path.join(run_dir, 'results.json')}; images: {grid}")
    return out


def _display(s: LabelledSet, max_images: int = 400) -> np.ndarray:
    x = np.asarray(s.images[:max_images]) * s.std + s.mean
    return np.clip(x, 0.0, 1.0)


def _grid_cols(labels) -> int:
    counts = np.bincount(np.asarray(labels))
    return int(min(counts.max() if counts.max() > 1 else len(counts), 20))


def _scale(info) -> int:
    return max(1, 64 // info.image_shape[0])
