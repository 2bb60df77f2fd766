"""`jaxdiff select`: class-balanced data selection (LCMat-S and baselines) and its evaluation.

One run produces a whole results table: for every seed it pre-trains (or reloads) a selection
model, extracts its features once, and then, for every fraction and every method, selects a
class-balanced subset, saves it and trains fresh evaluation networks on it.

    jaxdiff select --config select_digits
    jaxdiff select --config select_cifar10 --config.select.methods="('uniform','lcmat_s')"

Stages (lcmat.md §3 Step 0, §6, §9; the evaluation is the CPU-sized protocol of the preset):

1. **Pre-training** of the selection model on the whole, un-augmented training split: SGD
   (momentum, optional Nesterov, coupled weight decay), constant learning rate, a fresh
   permutation every epoch (last batch masked, not dropped). The loop is
   `jaxdiff.pipelines.loop.run_loop`, so it is checkpointed with Orbax and resumable; the
   checkpoint directory is a cache keyed by a fingerprint of (data, model, pre-training
   settings, seed): any later run with the same settings, any method, reuses it (lcmat.md
   §10.3) and an interrupted pre-training continues where it stopped. The state also records,
   for every epoch, whether each sample was classified correctly when it was presented
   (`correct [E, N]`), so `forgetting` counts the events of this very training run even when
   the model comes from the cache.
2. **Features** (eval mode): penultimate embeddings `[N, D]` and logits `[N, C]`, saved as
   `features.npz` in the cache directory and reused.
3. **Selection** with `jaxdiff.select.methods.select` for each (method, fraction): indices and
   weights saved to `selections/<method>_f<fraction>_s<seed>.{npz,json}`.
4. **Evaluation** with `jaxdiff.distill.evaluate.train_and_test`: `eval.num_runs` networks
   vmapped in one program, trained on the subset — unweighted by default, or with the
   methods' weights (CRAIG/GradMatch) as per-sample loss weights when `eval.use_weights` —
   tested on the whole test split, final-epoch accuracy. All methods of one seed use the same evaluation key (paired
   comparison).

Outputs in `run_dir`: `config.json`, `selections/`, `results.json` (one row per (method,
fraction, seed) plus a summary per (method, fraction): mean ± std over seeds x runs),
`results.md` (the table). With `--resume` finished rows are kept and skipped, so an interrupted
table run continues.
"""

from __future__ import annotations

import inspect
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.config_utils import require_choice
from jaxdiff.distill.evaluate import train_and_test
from jaxdiff.models.functional import apply, with_mode
from jaxdiff.pipelines import common
from jaxdiff.pipelines.loop import run_loop
from jaxdiff.select import methods as M

_INPUT_NAMES = ("embeddings", "logits", "correct")


# ------------------------------------------------------------------------------ validation
def _as_tuple(value, name):
    if isinstance(value, (str, int, float)):
        value = (value,)
    value = tuple(value)
    if not value:
        raise ValueError(f"config key {name!r} must list at least one entry")
    return value


def validate(config, labels: np.ndarray, num_classes: int):
    """Check methods, fractions and seeds before any work; returns (methods, fractions, seeds,
    budgets {fraction: [C]})."""
    methods = []
    for m in _as_tuple(config.select.methods, "select.methods"):
        try:
            M.get_method(m)
        except ValueError as e:
            raise ValueError(f"config key 'select.methods': {e}") from None
        methods.append(str(m).lower().replace("-", "_"))
    if len(set(methods)) != len(methods):
        raise ValueError(f"config key 'select.methods' lists a method twice: {methods}")
    options = config.select.options.to_dict() if "options" in config.select else {}
    for name, opts in options.items():
        if name not in M.METHODS:
            raise ValueError(f"config key 'select.options.{name}': unknown method; valid names: "
                             f"{', '.join(sorted(M.METHODS))}")
        sig = inspect.signature(M.METHODS[name]).parameters
        bad = [k for k in opts if k not in sig or k in _INPUT_NAMES or
               sig[k].kind is not inspect.Parameter.KEYWORD_ONLY]
        if bad:
            valid = [k for k, p in sig.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
                     and k not in _INPUT_NAMES + ("mesh",)]
            raise ValueError(f"config key 'select.options.{name}': unknown option(s) {bad}; "
                             f"valid: {valid}")
    fractions = tuple(float(f) for f in _as_tuple(config.select.fractions, "select.fractions"))
    budgets = {}
    for f in fractions:
        try:
            budgets[f] = M.class_budgets(labels, num_classes, f)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config key 'select.fractions' ({f!r}): {e}") from None
    seeds = _as_tuple(config.seeds, "seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"config key 'seeds' must be non-negative integers, got {seeds}")
    if config.pretrain.epochs < 1:
        raise ValueError(f"config key 'pretrain.epochs' must be >= 1, got {config.pretrain.epochs}")
    if config.eval.num_runs < 0:
        raise ValueError(f"config key 'eval.num_runs' must be >= 0, got {config.eval.num_runs}")
    return tuple(methods), fractions, seeds, budgets, options


# ------------------------------------------------------------------------------ pre-training
def pretrain_cache_dir(config, info, seed: int) -> tuple[str, dict]:
    """The cache directory of the selection model for `seed`, and the dict it is keyed by."""
    keyed = {"data": config.data.to_dict(), "model": config.pretrain.model.to_dict(),
             "epochs": config.pretrain.epochs, "batch_size": config.pretrain.batch_size,
             "lr": config.pretrain.lr, "momentum": config.pretrain.momentum,
             "nesterov": config.pretrain.nesterov, "weight_decay": config.pretrain.weight_decay,
             "pool_per_class": config.select.pool_per_class, "seed": int(seed)}
    name = (f"{info.name}_{config.pretrain.model.name}_ep{config.pretrain.epochs}_seed{seed}_"
            f"{config_fingerprint(keyed)}")
    root = config.pretrain.cache_dir or os.path.join(config.run_dir, "pretrained")
    return os.path.abspath(os.path.join(root, name)), keyed


def make_pretrain_step(graphdef, tx, n, batch, steps_per_epoch):
    """Jitted `(state, step, images_u8, labels, mean, std) -> (state, metrics)`.

    Step s trains on batch `s % steps_per_epoch` of epoch `s // steps_per_epoch`'s permutation
    `permutation(fold_in(key, epoch), n)`, so the run is a pure function of the step index and
    resumes exactly. The last batch of an epoch is padded with index n and masked.
    """
    pad = steps_per_epoch * batch - n

    def step(state, step_idx, images, labels, mean, std):
        epoch = step_idx // steps_per_epoch
        s = step_idx % steps_per_epoch
        ekey = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), epoch)
        perm = jnp.concatenate([jax.random.permutation(ekey, n),
                                jnp.full((pad,), n, jnp.int32)])
        idx = jax.lax.dynamic_slice(perm, (s * batch,), (batch,))
        valid = idx < n
        safe = jnp.where(valid, idx, 0)
        x = (images[safe].astype(jnp.float32) / 255.0 - mean) / std
        y = labels[safe]
        w = valid.astype(jnp.float32)

        def loss_fn(params):
            logits, (_, rest) = apply(graphdef, (params, state["rest"]), x)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(ce * w) / jnp.sum(w), (rest, logits)

        (loss, (rest, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        hit = (jnp.argmax(logits, -1) == y).astype(jnp.int8)
        correct = state["correct"].at[epoch, idx].set(hit, mode="drop")  # idx n: dropped
        acc = jnp.sum(hit * w) / jnp.sum(w)
        return ({**state, "params": params, "rest": rest, "opt": opt, "correct": correct},
                {"loss": loss, "train_accuracy": acc})

    return jax.jit(step, donate_argnums=0)


def pretrain(config, train_x, train_y, info, seed: int, *, progress: bool):
    """Train (or reload) the selection model for `seed`; returns (graphdef, params, rest,
    correct [E, N] bool, cache_dir, steps_run)."""
    cache_dir, keyed = pretrain_cache_dir(config, info, seed)
    make_model = common.model_factory(config.pretrain.model, info.image_shape, info.num_classes)
    model = make_model(nnx.Rngs(jax.random.key(seed)))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n = len(train_y)
    batch = min(config.pretrain.batch_size, n)
    steps_per_epoch = -(-n // batch)
    num_steps = steps_per_epoch * config.pretrain.epochs
    tx = optax.chain(optax.add_decayed_weights(config.pretrain.weight_decay),
                     optax.sgd(config.pretrain.lr, momentum=config.pretrain.momentum or None,
                               nesterov=bool(config.pretrain.nesterov)))
    state = {"params": params, "rest": rest, "opt": tx.init(params),
             "key": jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 7)),
             "correct": jnp.zeros((config.pretrain.epochs, n), jnp.int8)}
    step = make_pretrain_step(graphdef, tx, n, batch, steps_per_epoch)
    images, labels = jnp.asarray(train_x), jnp.asarray(train_y, jnp.int32)
    mean = jnp.asarray(info.mean, jnp.float32)
    std = jnp.asarray(info.std, jnp.float32)
    counted = {"steps": 0}

    def step_fn(s, i):
        counted["steps"] += 1
        return step(s, i, images, labels, mean, std)

    state, _ = run_loop(step_fn, state, num_steps, run_dir=cache_dir, fingerprint=config_fingerprint(keyed),
                        checkpoint_every=config.pretrain.checkpoint_every,
                        log_every=min(config.pretrain.log_every, num_steps), resume=True,
                        desc=f"pretrain seed {seed}", progress=progress, max_to_keep=1)
    return (graphdef, state["params"], state["rest"], np.asarray(state["correct"]).astype(bool),
            cache_dir, counted["steps"])


def extract_features(graphdef, params, rest, train_x, info, batch_size=1000):
    """Eval-mode penultimate embeddings `[N, D]` and logits `[N, C]` (float32)."""
    mean = jnp.asarray(info.mean, jnp.float32)
    std = jnp.asarray(info.std, jnp.float32)

    @jax.jit
    def feats(params, rest, xb):
        model = with_mode(nnx.merge(graphdef, params, rest, copy=True), train=False)
        x = (xb.astype(jnp.float32) / 255.0 - mean) / std
        emb = model.embed(x)
        return emb, model.classifier(emb)

    n = len(train_x)
    embs, logits = [], []
    for s in range(0, n, batch_size):
        xb = train_x[s:s + batch_size]
        if len(xb) < batch_size:  # one compiled shape: pad the last batch
            xb = np.concatenate([xb, np.zeros((batch_size - len(xb), *xb.shape[1:]), xb.dtype)])
        e, z = feats(params, rest, jnp.asarray(xb))
        embs.append(np.asarray(e))
        logits.append(np.asarray(z))
    return (np.concatenate(embs)[:n].astype(np.float32),
            np.concatenate(logits)[:n].astype(np.float32))


def features_for_seed(config, train_x, train_y, info, seed, *, progress):
    """Pre-train (cached) and extract features (cached): dict of arrays + cache info."""
    t0 = time.perf_counter()
    graphdef, params, rest, correct, cache_dir, steps_run = pretrain(
        config, train_x, train_y, info, seed, progress=progress)
    pretrain_s = time.perf_counter() - t0
    path = os.path.join(cache_dir, "features.npz")
    t0 = time.perf_counter()
    if os.path.exists(path) and steps_run == 0:
        with np.load(path) as f:
            emb, logits = f["embeddings"], f["logits"]
        cached = True
    else:
        emb, logits = extract_features(graphdef, params, rest, train_x, info)
        tmp = path + ".tmp.npz"
        np.savez(tmp, embeddings=emb, logits=logits, labels=train_y)
        os.replace(tmp, path)
        cached = False
    acc = float(np.mean(np.argmax(logits, -1) == train_y))
    return ({"embeddings": emb, "logits": logits, "correct": correct},
            {"cache_dir": cache_dir, "pretrain_steps_run": steps_run,
             "pretrain_seconds": pretrain_s, "features_cached": cached,
             "feature_seconds": time.perf_counter() - t0, "train_accuracy_eval_mode": acc,
             "feature_dim": int(emb.shape[1])})


# ------------------------------------------------------------------------------ the pipeline
def selection_name(method, fraction, seed):
    return f"{method}_f{fraction:g}_s{seed}"


def _pool(labels, num_classes, per_class):
    """Candidate pool: the first `per_class` training indices of each class (0 = all)."""
    if not per_class:
        return np.arange(len(labels))
    idx = jdata.class_indices(labels, num_classes)
    short = [c for c, i in enumerate(idx) if len(i) < per_class]
    if short:
        raise ValueError(f"config key 'select.pool_per_class'={per_class} exceeds the size of "
                         f"classes {short}")
    return np.sort(np.concatenate([i[:per_class] for i in idx]))


def _summarise(rows, methods, fractions):
    out = []
    for f in fractions:
        for m in methods:
            accs = [a for r in rows if r["method"] == m and r["fraction"] == f
                    for a in r["accuracy_runs"]]
            seeds = sorted({r["seed"] for r in rows if r["method"] == m and r["fraction"] == f})
            if accs:
                out.append({"method": m, "fraction": f, "accuracy_mean": float(np.mean(accs)),
                            "accuracy_std": float(np.std(accs)), "num_accuracies": len(accs),
                            "seeds": seeds})
    return out


def results_table(summary, methods, fractions, budgets) -> str:
    """Markdown table: one row per method, one column per fraction (mean ± std, %)."""
    head = "| method | " + " | ".join(
        f"{100 * f:g} % ({int(budgets[f].sum())} imgs)" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for m in methods:
        cells = []
        for f in fractions:
            s = next((s for s in summary if s["method"] == m and s["fraction"] == f), None)
            cells.append("–" if s is None else
                         f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f} "
                         f"(n={s['num_accuracies']})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict) -> dict:
    """Run the selection table described by `config`; returns (and saves) the results dict."""
    timer = common.Timer()
    kw = dict(data_dir=config.data.data_dir or None, image_size=config.data.image_size or None)
    train = jdata.load(config.data.name, "train", **kw)
    info = train.info
    if config.data.stats:
        info = jdata.with_stats(info, config.data.stats)
    pool = _pool(train.labels, info.num_classes, config.select.pool_per_class)
    train_x, train_y = train.images[pool], train.labels[pool].astype(np.int32)
    methods, fractions, seeds, budgets, options = validate(config, train_y, info.num_classes)
    require_choice(config.pretrain.model.name, common.MODEL_NAMES, "pretrain.model.name")
    require_choice(config.eval.model.name, common.MODEL_NAMES, "eval.model.name")
    test = jdata.load(config.data.name, "test", **kw)
    if config.eval.test_size:
        test_x, test_y = test.images[:config.eval.test_size], test.labels[:config.eval.test_size]
    else:
        test_x, test_y = test.images, test.labels

    run_dir = common.make_run_dir(config.run_dir)
    sel_dir = common.make_run_dir(os.path.join(run_dir, "selections"))
    common.save_config(run_dir, config)
    results_path = os.path.join(run_dir, "results.json")
    rows = []
    if config.resume and os.path.exists(results_path):
        with open(results_path) as f:
            rows = json.load(f).get("rows", [])
    done = {r["name"] for r in rows}

    make_eval = common.model_factory(config.eval.model, info.image_shape, info.num_classes)
    augment = common.make_augment(info.name, config.eval.dsa_strategy)
    test_xn = jnp.asarray(jdata.normalize(test_x, info))
    print(f"[jaxdiff select] {info.name}: pool {len(train_y)} images, {info.num_classes} classes; "
          f"methods {list(methods)}; fractions {list(fractions)} "
          f"(per-class budgets {[int(budgets[f][0]) for f in fractions]}); seeds {list(seeds)}; "
          f"{common.describe_devices()}", flush=True)
    seed_info = {}
    for seed in seeds:
        todo = [(f, m) for f in fractions for m in methods
                if selection_name(m, f, seed) not in done]
        if not todo:
            continue
        pre_seed = seed if config.pretrain.per_seed else config.pretrain.seed
        inputs, finfo = features_for_seed(config, train_x, train_y, info, pre_seed,
                                          progress=config.progress)
        seed_info[str(seed)] = finfo
        print(f"[jaxdiff select] seed {seed}: selection model {finfo['cache_dir']} "
              f"({'reused' if finfo['pretrain_steps_run'] == 0 else 'trained'}, "
              f"{finfo['pretrain_seconds']:.0f} s; eval-mode train accuracy "
              f"{100 * finfo['train_accuracy_eval_mode']:.1f} %)", flush=True)
        sel_key = jax.random.fold_in(jax.random.key(seed), 0)
        eval_key = jax.random.fold_in(jax.random.key(seed), 1)
        for f, m in todo:
            fn = M.get_method(m)
            sig = inspect.signature(fn).parameters
            kwargs = {k: v for k, v in inputs.items() if k in sig}
            kwargs.update(options.get(m, {}))
            t0 = time.perf_counter()
            sel = M.select(m, sel_key, train_y, info.num_classes, f, **kwargs)
            idx_pool = np.asarray(sel.indices)
            weights = np.asarray(sel.weights)
            select_s = time.perf_counter() - t0
            idx = pool[idx_pool]  # dataset indices of the training split
            name = selection_name(m, f, seed)
            meta = {"name": name, "method": m, "fraction": f, "seed": seed,
                    "dataset": info.name, "split": "train", "num_selected": int(idx.size),
                    "per_class_budget": budgets[f].tolist(), "options": options.get(m, {})}
            np.savez(os.path.join(sel_dir, name + ".npz"), indices=idx, weights=weights,
                     labels=train.labels[idx])
            common.write_json(os.path.join(sel_dir, name + ".json"),
                              {**meta, "indices": idx.tolist(), "weights": weights.tolist()})
            row = {**meta, "select_seconds": select_s}
            if config.eval.num_runs > 0:
                t0 = time.perf_counter()
                r = train_and_test(
                    eval_key, jdata.normalize(train.images[idx], info), train.labels[idx],
                    test_xn, test_y, make_model=make_eval, num_runs=config.eval.num_runs,
                    epochs=config.eval.epochs, lr=config.eval.lr,
                    batch_size=config.eval.batch_size, augment=augment, progress=False,
                    train_weights=weights if config.eval.use_weights else None)
                row.update(accuracy_runs=r.accuracy.tolist(), accuracy_mean=r.mean,
                           accuracy_std=r.std, eval_seconds=time.perf_counter() - t0)
                acc = f"accuracy {r.summary()}, eval {row['eval_seconds']:.0f} s"
            else:
                row.update(accuracy_runs=[])
                acc = "not evaluated"
            row["loadavg"] = list(os.getloadavg())
            rows = [r for r in rows if r["name"] != name] + [row]
            print(f"[jaxdiff select] {m:>10s} fraction {f:g} seed {seed}: {idx.size} images, "
                  f"select {select_s:.1f} s; {acc}", flush=True)
            _write(results_path, run_dir, rows, methods, fractions, budgets, seed_info, config,
                   info, timer)
    out = _write(results_path, run_dir, rows, methods, fractions, budgets, seed_info, config,
                 info, timer)
    print("[jaxdiff select] results (test accuracy %, mean ± std over seeds x runs, final epoch):")
    print(out["table"])
    print(f"[jaxdiff select] done in {out['seconds']:.0f} s; results: {results_path}", flush=True)
    return out


def _write(path, run_dir, rows, methods, fractions, budgets, seed_info, config, info, timer):
    summary = _summarise(rows, methods, fractions)
    table = results_table(summary, methods, fractions, budgets)
    out = {"dataset": info.name, "methods": list(methods), "fractions": list(fractions),
           "seeds": list(config.seeds), "rows": rows, "summary": summary, "table": table,
           "figure": "test accuracy after the final epoch, mean ± std over seeds x eval runs",
           "eval": config.eval.to_dict(), "pretrain": config.pretrain.to_dict(),
           "selection_models": seed_info, "seconds": timer.elapsed(),
           "loadavg": list(os.getloadavg()), "devices": common.describe_devices()}
    common.write_json(path, out)
    with open(os.path.join(run_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    return out
