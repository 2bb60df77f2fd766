"""`jaxdiff experts`: train expert trajectories for trajectory matching (dd-common.md §8.1).

Trains `num_experts` classifiers on the real training split with SGD (lr 0.01, no momentum, no
weight decay), batch 256, per-sample DSA, and stores E + 1 parameter snapshots per expert in an
`ExpertStore` at `buffer_dir` (layout: `jaxdiff.distill.experts.ExpertStore`). `parallel` experts
train together in one compiled, vmapped program; the results do not depend on `parallel`.

Resuming (`--resume`): complete experts are kept; an expert in training restarts from its last
per-epoch snapshot (momentum-free SGD: the snapshot is the whole state), and its remaining epochs
draw the same randomness, so the result equals an uninterrupted run. Raising `num_experts` with
`--resume` adds experts to an existing store. A store made with a different config is refused.

`buffer_dir` also receives `config.json`, `metrics.jsonl` (mean train loss per expert-epoch) and
`results.json` (per-expert final train loss and test accuracy).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxdiff import data as jdata
from jaxdiff.config_utils import require_choice
from jaxdiff.distill.experts import ExpertStore, make_expert_trainer, param_layout
from jaxdiff.metrics import MetricWriter, check_finite
from jaxdiff.pipelines import common

MODELS = ("convnet", "mlp")


def _validate(config) -> None:
    for key in ("num_experts", "parallel", "epochs", "batch_size"):
        if int(config[key]) < 1:
            raise ValueError(f"config key {key!r} must be >= 1, got {config[key]}")
    if not config.lr > 0:
        raise ValueError(f"config key 'lr' must be > 0, got {config.lr}")
    require_choice(config.model.name, MODELS, "model.name")
    if config.model.name == "convnet" and config.model.norm == "batchnorm":
        raise ValueError("config key 'model.norm' = 'batchnorm' is not supported for experts: "
                         "snapshots hold parameters only (as MTT's); use 'instancenorm'")


def prepare_data(config):
    """(train_x, train_y, test_x, test_y, info, zca, transform): device arrays in the space the
    experts train in. Without ZCA the images stay uint8 and `transform` normalises each batch."""
    kw = dict(data_dir=config.data.data_dir or None, image_size=config.data.image_size or None)
    train = jdata.load(config.data.name, "train", **kw)
    test = jdata.load(config.data.name, "test", **kw)
    info = train.info
    if config.zca:
        # MTT --zca: [0, 1] pixels (no mean/std), whitened with the train-set ZCA (dd-common §2).
        zca = jdata.fit_zca(train.images.astype(np.float32) / 255.0, reg=config.zca_reg)
        tx = jdata.zca_apply(zca, jnp.asarray(train.images, jnp.float32) / 255.0)
        ex = jdata.zca_apply(zca, jnp.asarray(test.images, jnp.float32) / 255.0)
        return tx, jnp.asarray(train.labels), ex, jnp.asarray(test.labels), info, zca, None
    mean = jnp.asarray(info.mean, jnp.float32)
    std = jnp.asarray(info.std, jnp.float32)
    transform = _Normalise(mean, std)
    return (jnp.asarray(train.images), jnp.asarray(train.labels), jnp.asarray(test.images),
            jnp.asarray(test.labels), info, None, transform)


class _Normalise:
    """uint8 -> (x / 255 - mean) / std, applied per gathered batch (keeps the set uint8)."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, x):
        return (x.astype(jnp.float32) / 255.0 - self.mean) / self.std


def store_meta(config, info, layout) -> dict:
    """The fields that define the experts (everything that changes their parameters)."""
    return {
        "dataset": info.name,
        "image_shape": list(info.image_shape),
        "num_classes": int(info.num_classes),
        "zca": bool(config.zca),
        "zca_reg": float(config.zca_reg) if config.zca else None,
        "mean": list(info.mean),
        "std": list(info.std),
        "model": config.model.to_dict(),
        "lr": float(config.lr),
        "batch_size": int(config.batch_size),
        "dsa_strategy": common.dsa_strategy_for(info.name, config.dsa_strategy),
        "seed": int(config.seed),
        **layout,
    }


def run(config: ml_collections.ConfigDict) -> dict:
    """Train (or resume) the experts described by `config`; returns the results dict."""
    _validate(config)
    timer = common.Timer()
    train_x, train_y, test_x, test_y, info, zca, transform = prepare_data(config)
    make_model = common.model_factory(config.model, info.image_shape, info.num_classes)
    key = jax.random.key(config.seed)
    init_key, data_key = jax.random.split(key)
    layout = param_layout(make_model, init_key)
    run_dir = common.make_run_dir(config.buffer_dir)
    store = ExpertStore.create(run_dir, num_params=sum(int(np.prod(s)) for s in
                                                       layout["param_shapes"]),
                               epochs=config.epochs, meta=store_meta(config, info, layout),
                               exist_ok=bool(config.resume))
    common.save_config(run_dir, config)
    if zca is not None:
        store.save_zca(zca)
    trainer = make_expert_trainer(
        make_model, init_key=init_key, data_key=data_key, num_train=int(train_x.shape[0]),
        lr=config.lr, batch_size=config.batch_size,
        augment=common.make_augment(info.name, config.dsa_strategy), transform=transform)

    results_path = os.path.join(run_dir, "results.json")
    per_expert = {}
    if config.resume and os.path.exists(results_path):
        import json
        with open(results_path) as f:
            per_expert = {int(k): v for k, v in json.load(f).get("experts", {}).items()}

    E, N = int(config.epochs), int(config.num_experts)
    todo = [i for i in range(N) if not store.is_complete(i)]
    print(f"[jaxdiff experts] {info.name}: {N} experts x {E} epochs "
          f"({N - len(todo)} already complete), {config.parallel} in parallel, "
          f"{trainer.num_params} parameters, zca={bool(config.zca)}, on "
          f"{common.describe_devices()}; store: {run_dir}", flush=True)
    writer = MetricWriter(run_dir)
    done_epochs = sum(E for i in range(N) if store.is_complete(i))
    bar = tqdm(total=N * E, initial=done_epochs, desc="experts", unit="expert-epoch",
               disable=not config.progress)
    try:
        for g in range(0, len(todo), int(config.parallel)):
            ids = todo[g:g + int(config.parallel)]
            resume_at = [store.resume_epoch(i) for i in ids]
            if any(r is None for r in resume_at):
                e0 = 0
                flat = trainer.init(jnp.asarray(ids))
                host = np.asarray(flat)
                for j, i in enumerate(ids):
                    store.save_snapshot(i, 0, host[j])
            else:
                e0 = min(resume_at)
                flat = jnp.asarray(np.stack([store.load_snapshot(i, e0) for i in ids]))
            bar.update(e0 * len(ids))
            ids_arr = jnp.asarray(ids)
            loss = None
            for e in range(e0, E):
                flat, loss = trainer.epoch(flat, ids_arr, e, train_x, train_y)
                host, loss = np.asarray(flat), np.asarray(loss)   # one host sync per epoch
                step = ids[0] * E + e + 1
                check_finite(step, train_loss=loss)
                for j, i in enumerate(ids):
                    store.save_snapshot(i, e + 1, host[j])
                writer.write(step, {"experts": list(ids), "epoch": e + 1,
                                    "train_loss_mean": float(loss.mean()),
                                    "train_loss": loss.tolist()})
                bar.update(len(ids))
                bar.set_postfix(loss=f"{loss.mean():.4f}")
            acc = np.asarray(trainer.accuracy(flat, test_x, test_y))
            for j, i in enumerate(ids):
                store.finalize(i)
                per_expert[i] = {"test_accuracy": float(acc[j]),
                                 "final_train_loss": None if loss is None else float(loss[j])}
            common.write_json(results_path, _results(config, info, store, per_expert, timer))
    finally:
        bar.close()
        writer.close()
    out = _results(config, info, store, per_expert, timer)
    common.write_json(results_path, out)
    accs = [v["test_accuracy"] for v in per_expert.values()]
    if accs:
        print(f"[jaxdiff experts] {len(store)} experts; final test accuracy "
              f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs):.2f} % in "
              f"{timer.elapsed():.0f} s", flush=True)
    return out


def _results(config, info, store, per_expert, timer) -> dict:
    accs = [v["test_accuracy"] for v in per_expert.values()]
    return {
        "dataset": info.name,
        "buffer_dir": store.root,
        "num_experts_complete": len(store),
        "epochs": store.epochs,
        "num_params": store.num_params,
        "test_accuracy_mean": float(np.mean(accs)) if accs else None,
        "test_accuracy_std": float(np.std(accs)) if accs else None,
        "experts": {str(k): v for k, v in sorted(per_expert.items())},
        "seconds_this_session": timer.elapsed(),
        "devices": common.describe_devices(),
    }
