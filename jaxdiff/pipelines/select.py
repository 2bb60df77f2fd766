"""`jaxdiff select`: class-balanced data selection (LCMat-S and baselines) and its evaluation.

One run produces a whole results table. The path (config -> `jaxdiff.specs.select.resolve`,
which fixes the candidate pool and the per-class budgets -> here), per seed:

1. **Pre-training** of the selection model (`jaxdiff.select.pretrain`) on the pool through
   `run_loop` (checkpointed, resumable). Its checkpoint directory is a cache keyed by a
   fingerprint of (data, model, pre-training settings, seed): any later run with the same
   settings, any method, reuses it (lcmat.md §10.3), and an interrupted pre-training continues.
2. **Features** (eval mode): embeddings `[N, D]` and logits `[N, C]`, cached as `features.npz`.
3. **Selection** (`jaxdiff.select.methods.select`) for each (method, fraction): indices and
   weights saved to `selections/<method>_f<fraction>_s<seed>.{npz,json}`.
4. **Evaluation** (`jaxdiff.distill.evaluate.train_and_test`): `eval.num_runs` networks vmapped,
   trained on the subset (with the methods' weights as per-sample loss weights when
   `eval.use_weights`), tested on the test split; all methods of a seed share the evaluation key.

Outputs in `run_dir`: `config.json`, `selections/`, `results.json` (a row per (method, fraction,
seed) plus a summary per (method, fraction): mean ± std over seeds x runs), `results.md`. With
`--resume` finished rows are kept and skipped, so an interrupted table run continues.
"""

from __future__ import annotations

import inspect
import json
import os
import time

import jax
import numpy as np

from jaxdiff import data as jdata
from jaxdiff import distributed, sharding
from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.distill import augment as dsa
from jaxdiff.distill.evaluate import train_and_test
from jaxdiff.feeding import HostBatches
from jaxdiff.files import atomic_savez, atomic_write_json, atomic_write_text
from jaxdiff.pipelines import common
from jaxdiff.pipelines.loop import run_loop
from jaxdiff.select import methods as M
from jaxdiff.select.pretrain import (extract_features, init_pretrain_state, make_pretrain_step,
                                     pretrain_optimizer, pretrain_rows)
from jaxdiff.select.report import results_table, summarise
from jaxdiff.specs.select import SelectSpec


def pretrain_cache_dir(spec: SelectSpec, seed: int) -> tuple[str, dict]:
    """The cache directory of the selection model for `seed`, and the dict it is keyed by (the
    config sections as written, so existing caches are found again)."""
    pc = spec.resolution.config["pretrain"]
    keyed = {"data": spec.data_config, "model": spec.pretrain.model_config,
             "epochs": pc["epochs"], "batch_size": pc["batch_size"], "lr": pc["lr"],
             "momentum": pc["momentum"], "nesterov": pc["nesterov"],
             "weight_decay": pc["weight_decay"], "pool_per_class": spec.pool_per_class,
             "seed": int(seed)}
    name = (f"{spec.data.name}_{spec.pretrain.model.name}_ep{spec.pretrain.epochs}_seed{seed}_"
            f"{config_fingerprint(keyed)}")
    root = spec.pretrain.cache_dir or os.path.join(spec.run.run_dir, "pretrained")
    return os.path.abspath(os.path.join(root, name)), keyed


def pretrain(spec: SelectSpec, train_x, train_y, seed: int):
    """Train (or reload) the selection model for `seed`, each batch split over the devices of
    `sharding.batch_mesh`; returns (graphdef, params, rest, correct [E, N] bool, cache_dir,
    steps_run); params and rest replicated on that mesh."""
    p, info = spec.pretrain, spec.data.info
    cache_dir, keyed = pretrain_cache_dir(spec, seed)
    n = len(train_y)
    batch = min(p.batch_size, n)
    steps_per_epoch = -(-n // batch)
    mesh = sharding.batch_mesh(batch)
    tx = pretrain_optimizer(p.lr, p.momentum, p.nesterov, p.weight_decay)
    graphdef, state = init_pretrain_state(p.model.factory(info.image_shape, info.num_classes),
                                          seed, tx, p.epochs, n)
    state = sharding.replicate(state, mesh)
    step = make_pretrain_step(graphdef, tx, n, batch, steps_per_epoch, mesh)
    # each step's images, labels and pool rows, read on the host: each process its devices'
    split = sharding.batch_sharding(mesh)
    batches = HostBatches((train_x, np.asarray(train_y, np.int32), np.arange(n, dtype=np.int32)),
                          pretrain_rows(state, n, batch, steps_per_epoch), (split,) * 3)
    stats = sharding.replicate((np.asarray(info.mean, np.float32),
                                np.asarray(info.std, np.float32)), mesh)
    counted = {"steps": 0}

    def step_fn(s, i):
        counted["steps"] += 1
        return step(s, i, *batches(i), *stats)

    num_steps = steps_per_epoch * p.epochs
    state, _ = run_loop(step_fn, state, num_steps, run_dir=cache_dir,
                        fingerprint=config_fingerprint(keyed),
                        checkpoint_every=p.checkpoint_every,
                        log_every=min(p.log_every, num_steps), resume=True,
                        desc=f"pretrain seed {seed}", progress=spec.run.progress, max_to_keep=1,
                        divergence_limit=spec.run.divergence_limit)
    return (graphdef, state["params"], state["rest"],
            distributed.to_host(state["correct"]).astype(bool), cache_dir, counted["steps"])


def features_for_seed(spec: SelectSpec, train_x, train_y, seed: int):
    """Pre-train (cached) and extract features (cached): dict of arrays + cache info."""
    t0 = time.perf_counter()
    graphdef, params, rest, correct, cache_dir, steps_run = pretrain(spec, train_x, train_y, seed)
    pretrain_s = time.perf_counter() - t0
    path = os.path.join(cache_dir, "features.npz")
    t0 = time.perf_counter()
    cached = distributed.agree(os.path.exists(path) and steps_run == 0)
    if cached:
        with np.load(path) as f:
            emb, logits = f["embeddings"], f["logits"]
    else:
        emb, logits = extract_features(graphdef, params, rest, train_x, spec.data.info.mean,
                                       spec.data.info.std,
                                       mesh=jax.tree.leaves(params)[0].sharding.mesh)
        atomic_savez(path, embeddings=emb, logits=logits, labels=train_y)
    acc = float(np.mean(np.argmax(logits, -1) == train_y))
    return ({"embeddings": emb, "logits": logits, "correct": correct},
            {"cache_dir": cache_dir, "pretrain_steps_run": steps_run,
             "pretrain_seconds": pretrain_s, "features_cached": cached,
             "feature_seconds": time.perf_counter() - t0, "train_accuracy_eval_mode": acc,
             "feature_dim": int(emb.shape[1])})


def selection_name(method, fraction, seed):
    return f"{method}_f{fraction:g}_s{seed}"


def run(spec: SelectSpec) -> dict:
    """Run the selection table described by `spec`; returns (and saves) the results dict."""
    timer = common.Timer()
    train, test = spec.data.load("train", mmap=True), spec.data.load("test")
    info = spec.data.info
    train_x, train_y = train.images[spec.pool], train.labels[spec.pool].astype(np.int32)
    size = spec.eval.test_size or None
    test_xn = np.asarray(jdata.normalize(test.images[:size], info))
    run_dir = common.open_run_dir(spec.run.run_dir, spec.resolution,
                                  resume=spec.run.resume)
    os.makedirs(os.path.join(run_dir, "selections"), exist_ok=True)
    results_path = os.path.join(run_dir, "results.json")
    rows = []
    if spec.run.resume and os.path.exists(results_path):
        with open(results_path) as f:
            rows = json.load(f).get("rows", [])
    rows = distributed.agree(rows)  # process 0's view of the finished rows, for every process
    mesh = sharding.data_mesh()     # the selections split their classes over all devices
    done = {r["name"] for r in rows}
    print(f"[jaxdiff select] {info.name}: pool {len(train_y)} images, {info.num_classes} classes; "
          f"methods {list(spec.methods)}; fractions {list(spec.fractions)} (per-class budgets "
          f"{[int(spec.budgets[f][0]) for f in spec.fractions]}); seeds {list(spec.seeds)}; "
          f"{common.describe_devices()}", flush=True)
    seed_info = {}
    for seed in spec.seeds:
        todo = [(f, m) for f in spec.fractions for m in spec.methods
                if selection_name(m, f, seed) not in done]
        if not todo:
            continue
        pre_seed = seed if spec.pretrain.per_seed else spec.pretrain.seed
        inputs, finfo = features_for_seed(spec, train_x, train_y, pre_seed)
        seed_info[str(seed)] = finfo
        print(f"[jaxdiff select] seed {seed}: selection model {finfo['cache_dir']} "
              f"({'reused' if finfo['pretrain_steps_run'] == 0 else 'trained'}, "
              f"{finfo['pretrain_seconds']:.0f} s; eval-mode train accuracy "
              f"{100 * finfo['train_accuracy_eval_mode']:.1f} %)", flush=True)
        for f, m in todo:
            row = _select_and_evaluate(spec, m, f, seed, inputs, train, train_y, test_xn,
                                       test.labels[:size], run_dir, mesh)
            rows = [r for r in rows if r["name"] != row["name"]] + [row]
            _write(spec, run_dir, rows, seed_info, timer)
    out = _write(spec, run_dir, rows, seed_info, timer)
    print("[jaxdiff select] results (test accuracy %, mean ± std over seeds x runs, final epoch):")
    print(out["table"])
    print(f"[jaxdiff select] done in {out['seconds']:.0f} s; results: {results_path}", flush=True)
    return out


def _select_and_evaluate(spec: SelectSpec, method, fraction, seed, inputs, train, pool_labels,
                         test_x, test_y, run_dir, mesh) -> dict:
    """Select with `method` at `fraction` for `seed`, save the selection, evaluate it: the row."""
    info = spec.data.info
    fn = M.get_method(method)
    sig = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in inputs.items() if k in sig}
    kwargs.update(spec.options.get(method, {}))
    if "mesh" in sig:
        kwargs["mesh"] = mesh
    t0 = time.perf_counter()
    sel = M.select(method, jax.random.fold_in(jax.random.key(seed), 0), pool_labels,
                   info.num_classes, fraction, **kwargs)
    weights = np.asarray(sel.weights)
    select_s = time.perf_counter() - t0  # the selection ends with its (host) weights
    idx = spec.pool[np.asarray(sel.indices)]  # dataset indices of the training split
    name = selection_name(method, fraction, seed)
    meta = {"name": name, "method": method, "fraction": fraction, "seed": seed,
            "dataset": info.name, "split": "train", "num_selected": int(idx.size),
            "per_class_budget": spec.budgets[fraction].tolist(),
            "options": spec.options.get(method, {})}
    sel_dir = os.path.join(run_dir, "selections")
    atomic_savez(os.path.join(sel_dir, name + ".npz"), indices=idx, weights=weights,
                 labels=train.labels[idx])
    atomic_write_json(os.path.join(sel_dir, name + ".json"),
                      {**meta, "indices": idx.tolist(), "weights": weights.tolist()})
    row = {**meta, "select_seconds": select_s}
    e = spec.eval
    if e.num_runs > 0:
        t0 = time.perf_counter()
        r = train_and_test(
            jax.random.fold_in(jax.random.key(seed), 1), jdata.normalize(train.images[idx], info),
            train.labels[idx], test_x, test_y,
            make_model=e.model.factory(info.image_shape, info.num_classes),
            num_runs=e.num_runs, epochs=e.epochs, lr=e.lr, batch_size=e.batch_size,
            augment=dsa.per_sample_augment(e.dsa_strategy), progress=False,
            train_weights=weights if e.use_weights else None)
        row.update(accuracy_runs=r.accuracy.tolist(), accuracy_mean=r.mean, accuracy_std=r.std,
                   eval_seconds=time.perf_counter() - t0)
        acc = f"accuracy {r.summary()}, eval {row['eval_seconds']:.0f} s"
    else:
        row.update(accuracy_runs=[])
        acc = "not evaluated"
    row["loadavg"] = list(os.getloadavg())
    print(f"[jaxdiff select] {method:>10s} fraction {fraction:g} seed {seed}: {idx.size} images, "
          f"select {select_s:.1f} s; {acc}", flush=True)
    return row


def _write(spec: SelectSpec, run_dir, rows, seed_info, timer) -> dict:
    summary = summarise(rows, spec.methods, spec.fractions)
    table = results_table(summary, spec.methods, spec.fractions, spec.budgets)
    config = spec.resolution.config
    out = {"dataset": spec.data.name, "methods": list(spec.methods),
           "fractions": list(spec.fractions), "seeds": list(spec.seeds), "rows": rows,
           "summary": summary, "table": table,
           "figure": "test accuracy after the final epoch, mean ± std over seeds x eval runs",
           "eval": config["eval"], "pretrain": config["pretrain"],
           "selection_models": seed_info, "seconds": timer.elapsed(),
           "loadavg": list(os.getloadavg()), "devices": common.describe_devices()}
    atomic_write_json(os.path.join(run_dir, "results.json"), out)
    atomic_write_text(os.path.join(run_dir, "results.md"), table + "\n")
    return out
