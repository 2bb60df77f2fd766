"""`jaxdiff distill`: distil a dataset into a parameterised synthetic set.

Any parameterisation (pixel, FreD, DDiF) x any loss: DM, DC/DSA, TM (MTT over stored experts) or
LCMat-C (DC's machinery with curvature matching; inferred from the paper, see
`jaxdiff.distill.curvature`). One distillation step is one
jitted function — decode, loss, gradient, per-instance optax update — run by the resumable loop
(`jaxdiff.pipelines.loop`). The run directory receives:

* `checkpoints/`      Orbax checkpoints of the full state (parameters, optimiser state, step);
* `synthetic.npz`     the decoded set in the documented format (`jaxdiff.distill.synset`);
* `params.npz`        the raw parameters and frozen arrays of the parameterisation;
* `static.npz`        the frozen arrays as initialised (a resume reuses them);
* `init.png`, `final.png`  grids of the decoded images (one class per row);
* `metrics.jsonl`, `results.json`, `config.json`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff import data as jdata
from jaxdiff import sharding
from jaxdiff.config_utils import require_choice
from jaxdiff.distill import losses as L
from jaxdiff.distill import trajectory as T
from jaxdiff.distill.curvature import lcmat_loss
from jaxdiff.distill.experts import ExpertStore
from jaxdiff.distill.evaluate import train_and_test
from jaxdiff.distill.optim import per_instance, plain
from jaxdiff.distill.params import get_parameterisation
from jaxdiff.distill.presets import resolve_auto
from jaxdiff.distill.synset import LabelledSet, save_synset
from jaxdiff.images import save_grid
from jaxdiff.models.functional import apply
from jaxdiff.pipelines import common
from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.pipelines.loop import run_loop

LOSSES = ("dm", "dc", "tm", "lcmat")
OPTIMIZERS = ("adam", "sgd")


# ----------------------------------------------------------------------------- real data on device
class RealPool:
    """Real training images by class on device, uint8 `[C, n, H, W, Ch]` (n = smallest class size),
    normalised per sampled batch so the pool costs a quarter of float32."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, info):
        self.num_classes = info.num_classes
        per_class = jdata.class_indices(labels, info.num_classes)
        n = min(len(i) for i in per_class)
        if n == 0:
            raise ValueError(f"{info.name}: some class has no training images")
        self.images = jnp.asarray(np.stack([images[i[:n]] for i in per_class]))
        self.mean = jnp.asarray(info.mean, jnp.float32)
        self.std = jnp.asarray(info.std, jnp.float32)
        self.per_class = n

    def normalise(self, x):
        return (x.astype(jnp.float32) / 255.0 - self.mean) / self.std


def sample_real(pool_images, mean, std, key, batch):
    """`[C, batch, H, W, Ch]` normalised real images, drawn per class without replacement."""
    num_classes, n = pool_images.shape[:2]

    def one(c, k):
        idx = jax.random.permutation(k, n)[:batch]
        return pool_images[c, idx]

    x = jax.vmap(one)(jnp.arange(num_classes), jax.random.split(key, num_classes))
    return (x.astype(jnp.float32) / 255.0 - mean) / std


# ----------------------------------------------------------------------------- building blocks
def parameterisation_from_config(config, skip_warmup: bool = False):
    name = require_choice(config.param.name, ("pixel", "fred", "ddif"), "param.name")
    options = dict(config.param[name]) if name in config.param else {}
    if skip_warmup and name == "ddif":
        options["warmup_steps"] = 0
    return get_parameterisation(name, ipc=config.ipc, **options)


def _has_checkpoint(run_dir: str) -> bool:
    d = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def parse_group_lr(spec: str, groups) -> dict[str, float]:
    """`"W1=1e-4,bo=1e-3"` -> {"W1": 1e-4, "bo": 1e-3}; names must be parameter groups."""
    out = {}
    for item in filter(None, (t.strip() for t in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"opt.group_lr entry {item!r} is not NAME=LR")
        if name not in groups:
            raise ValueError(f"opt.group_lr names {name!r}, but the parameter groups are "
                             f"{sorted(groups)}")
        out[name] = float(value)
    return out


def optimizer_from_config(opt_cfg, groups=()):
    """The synthetic-set optimiser: one optax optimiser per parameter group (all at `opt.lr`
    unless `opt.group_lr` gives a group its own rate), per-instance masked unless `opt.masked`
    is off (see `jaxdiff.distill.optim`)."""
    name = require_choice(opt_cfg.name, OPTIMIZERS, "opt.name")

    def make(lr):
        return (optax.adam(lr) if name == "adam"
                else optax.sgd(lr, momentum=opt_cfg.momentum or None))

    group_lr = parse_group_lr(opt_cfg.group_lr, groups)
    if group_lr:
        rates = {g: group_lr.get(g, opt_cfg.lr) for g in groups}
        tx = optax.multi_transform({g: make(lr) for g, lr in rates.items()},
                                   {g: g for g in groups})
    else:
        tx = make(opt_cfg.lr)
    return per_instance(tx) if opt_cfg.masked else plain(tx)


def _net_fns(make_model):
    """Functional forms of a freshly initialised classifier: (init(key) -> (graphdef, params, rest))."""
    def init(key):
        model = make_model(nnx.Rngs(key))
        return nnx.split(model, nnx.Param, ...)
    return init


def make_dm_step(param, opt, make_model, augment, batch_real, num_classes, n_pc, place):
    """DM (dd-common.md §7): a fresh frozen network per iteration, per-class mean embeddings."""
    init_net = _net_fns(make_model)

    def step(state, step_idx, static, pool, mean, std):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step_idx)
        k_net, k_real, k_aug = jax.random.split(key, 3)
        graphdef, net_params, rest = init_net(k_net)   # a fresh, frozen network every iteration
        embed = lambda x: apply(graphdef, (net_params, rest), x, method="embed")[0]
        real = place.real(sample_real(pool, mean, std, k_real, batch_real))

        def loss_fn(p):
            syn = place.syn(param.decode(p, static)).reshape(num_classes, n_pc, *real.shape[2:])
            return L.distribution_matching_loss(embed, syn, real, k_aug, augment)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {**state, "params": params, "opt": opt_state}, {"loss": loss}

    return step


def make_dc_step(param, opt, make_model, augment, per_sample_augment, batch_real, num_classes,
                 n_pc, outer, inner, metric, lr_net, batch_train, place,
                 match_loss=L.gradient_matching_loss):
    """DC/DSA (dd-common.md §5.3): `outer` image updates per iteration, each followed (except the
    last) by `inner` epochs of SGD training of the network on the current synthetic set.

    `match_loss` has `gradient_matching_loss`'s signature; LCMat-C passes its curvature-matching
    loss (`jaxdiff.distill.curvature.lcmat_loss`) and reuses everything else."""
    init_net = _net_fns(make_model)

    def step(state, step_idx, static, pool, mean, std):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step_idx)
        k_net, k_loop = jax.random.split(key)
        graphdef, net_params, rest = init_net(k_net)
        labels = param.labels(static)

        def net(p, x):
            return apply(graphdef, (p, rest), x)[0]

        def ce(p, x, y, w):
            logits = net(p, x)
            per = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(per * w) / jnp.sum(w)

        def train_net(theta, images, k):
            n = images.shape[0]
            b = min(batch_train, n)
            steps = -(-n // b)

            def epoch(theta, e):
                ke = jax.random.fold_in(k, e)
                perm = jax.random.permutation(ke, n)
                pad = steps * b - n
                idx = jnp.concatenate([perm, jnp.zeros(pad, perm.dtype)]).reshape(steps, b)
                wts = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)]).reshape(steps, b)

                def sgd(theta, s):
                    x = images[idx[s]]
                    if per_sample_augment is not None:
                        x = per_sample_augment(jax.random.fold_in(ke, s + 1), x)
                    g = jax.grad(ce)(theta, x, labels[idx[s]], wts[s])
                    return jax.tree.map(lambda t, gi: t - lr_net * gi, theta, g), None

                return jax.lax.scan(sgd, theta, jnp.arange(steps))[0], None

            return jax.lax.scan(epoch, theta, jnp.arange(inner))[0]

        def outer_step(carry, ol):
            params, opt_state, theta, _ = carry
            k = jax.random.fold_in(k_loop, ol)
            k_real, k_aug, k_train = jax.random.split(k, 3)
            real = place.real(sample_real(pool, mean, std, k_real, batch_real))

            def loss_fn(p):
                syn = place.syn(param.decode(p, static)).reshape(num_classes, n_pc, *real.shape[2:])
                return match_loss(net, theta, syn, real, k_aug, augment, metric)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            syn_all = jax.lax.stop_gradient(param.decode(params, static))
            theta = jax.lax.cond(ol < outer - 1, lambda: train_net(theta, syn_all, k_train),
                                 lambda: theta)
            return (params, opt_state, theta, loss), loss

        (params, opt_state, _, _), losses = jax.lax.scan(
            outer_step, (state["params"], state["opt"], net_params, jnp.float32(0)), jnp.arange(outer))
        return {**state, "params": params, "opt": opt_state}, {"loss": jnp.mean(losses)}

    return step


def make_tm_step(param, opt, student, augment, syn_steps, batch_syn, mode, lr_opt, min_syn_lr,
                 place):
    """Trajectory matching (dd-common.md §8): decode, unroll `syn_steps` student SGD steps from
    the expert snapshot `start`, loss ‖θ_N − θ*‖² / ‖θ₀ − θ*‖², update the set and the learned
    student step size α (its own optimiser, clipped below at `min_syn_lr`).

    Instances the minibatch schedule did not use this iteration (DDiF with
    `syn_steps * batch_syn < N`) get an all-zero gradient; they are marked unused so the
    per-instance optimiser leaves their state untouched, as PyTorch does for a None gradient.
    """

    def step(state, step_idx, static, start, target):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step_idx)
        labels = param.labels(static)

        def loss_fn(p, syn_lr):
            images = place.syn(param.decode(p, static))
            return T.mtt_loss(images, labels, syn_lr, start, target, key,
                              apply_fn=student.apply_fn, syn_steps=syn_steps,
                              batch_syn=batch_syn or None, augment=augment, mode=mode)

        loss, (g, g_lr) = jax.value_and_grad(loss_fn, argnums=(0, 1))(state["params"],
                                                                      state["syn_lr"])
        used = jnp.zeros(labels.shape[0], bool)
        for leaf in jax.tree.leaves(g):
            used = used | jnp.any(leaf.reshape(leaf.shape[0], -1) != 0, axis=1)
        updates, opt_state = opt.update(g, state["opt"], state["params"], used)
        params = optax.apply_updates(state["params"], updates)
        lr_updates, lr_state = lr_opt.update(g_lr, state["lr_opt"], state["syn_lr"])
        syn_lr = T.clip_syn_lr(optax.apply_updates(state["syn_lr"], lr_updates), min_syn_lr)
        return ({**state, "params": params, "opt": opt_state, "syn_lr": syn_lr,
                 "lr_opt": lr_state}, {"loss": loss, "syn_lr": syn_lr})

    return step


class Placement:
    """Sharding of the distillation step over a 1-D data mesh (DESIGN.md §2 Sharding).

    Synthetic instances (decoded `[N, ...]` and the parameters' leading axis) and the real batch
    of every class (`[C, B, ...]`, axis 1) are split over the mesh's data axis when the axis
    length divides evenly, and replicated otherwise; XLA's partitioner shards the networks'
    batch computations accordingly. On one device every constraint is a no-op.
    """

    def __init__(self, mesh):
        self.mesh = mesh
        self.n = mesh.shape[sharding.DATA_AXIS]

    def _spec(self, shape, axis):
        if self.n > 1 and shape[axis] % self.n == 0:
            return NamedSharding(self.mesh, P(*([None] * axis), sharding.DATA_AXIS))
        return NamedSharding(self.mesh, P())

    def real(self, x):  # [C, B, H, W, Ch]
        return jax.lax.with_sharding_constraint(x, self._spec(x.shape, 1)) if self.n > 1 else x

    def syn(self, x):   # [N, H, W, Ch]
        return jax.lax.with_sharding_constraint(x, self._spec(x.shape, 0)) if self.n > 1 else x

    def put_instances(self, tree):
        """Place a pytree whose leaves have the instance axis first (params, optimiser state)."""
        return jax.tree.map(
            lambda a: jax.device_put(a, self._spec(a.shape, 0) if a.ndim else
                                     NamedSharding(self.mesh, P())), tree)

    def replicate(self, tree):
        return sharding.replicate(tree, self.mesh)


# ----------------------------------------------------------------------------- the pipeline
class Built(NamedTuple):
    """Everything a distillation run (or a benchmark of its step) needs."""

    param: Any            # the Parameterisation
    static: dict          # its frozen arrays (host/default placement)
    state: dict           # {"params", "opt", "key"}: the loop state at step 0
    step: Callable        # jitted `(state, step, static, pool, mean, std) -> (state, metrics)`
    step_args: tuple      # (static, pool, mean, std) placed on the mesh
    report: Any           # BudgetReport
    info: Any             # DatasetInfo
    make_model: Callable  # the classifier factory (distillation networks and evaluation)
    extra_args: Callable | None = None  # TM: step -> (start, target) expert snapshots

    def step_fn(self, state, i):
        extra = self.extra_args(i) if self.extra_args is not None else ()
        return self.step(state, i, *self.step_args, *extra)


def open_experts(buffer_dir: str, info):
    """The expert store for TM, checked against the dataset being distilled."""
    if not buffer_dir:
        raise ValueError("loss.name=tm needs --config.loss.tm.buffer_dir=DIR (made by "
                         "`jaxdiff experts`)")
    store = ExpertStore(buffer_dir)
    store.check(dataset=info.name, image_shape=list(info.image_shape))
    if store.meta.get("zca"):
        raise NotImplementedError(f"the experts in {buffer_dir} were trained on ZCA-whitened "
                                  "images; distilling in ZCA space is not wired into "
                                  "`jaxdiff distill` yet")
    if len(store) == 0:
        raise ValueError(f"{buffer_dir} holds no complete expert yet")
    return store


def _check_segments(store, tm):
    if tm.max_start_epoch + tm.expert_epochs > store.epochs:
        raise ValueError(f"max_start_epoch ({tm.max_start_epoch}) + expert_epochs "
                         f"({tm.expert_epochs}) exceeds the {store.epochs} epochs stored in "
                         f"{store.root}")


def _segment_feeder(store, tm, seed, place):
    """`step -> (start, target)`: expert e ~ U{experts}, start epoch t ~ U[0, max_start_epoch),
    drawn from the step index (so a resumed run draws the same segments), read lazily."""
    key = jax.random.fold_in(jax.random.key(seed), 0x7E5)

    def feed(step):
        e, t = T.sample_segment(jax.random.fold_in(key, step), len(store), tm.max_start_epoch)
        start, target = store.segment(store.completed()[int(e)], int(t), tm.expert_epochs)
        return place.replicate((jnp.asarray(start), jnp.asarray(target)))

    return feed


def build(config: ml_collections.ConfigDict, train, *, skip_warmup: bool = False) -> Built:
    """Parameterisation, initial state and the jitted step of `config` on the training split.

    `skip_warmup`: initialise DDiF fields without the warm-up fit (a resume restores the fitted
    parameters anyway, so re-fitting them would be wasted work).
    """
    loss_name = require_choice(config.loss.name, LOSSES, "loss.name")
    param = parameterisation_from_config(config, skip_warmup=skip_warmup)
    info = train.info
    report = param.plan(info.image_shape, info.num_classes)   # fails here, before any work
    experts = None
    if loss_name == "tm":  # check the expert buffer before any work (e.g. DDiF's warm-up)
        experts = open_experts(config.loss.tm.buffer_dir, info)
        _check_segments(experts, config.loss.tm)
    n_pc = report.instances_per_class
    pool = RealPool(train.images, train.labels, info)

    k_init, k_loop = jax.random.split(jax.random.key(config.seed), 3)[:2]
    real_by_class = pool.normalise(pool.images)
    params, static = param.init(k_init, real_by_class)
    del real_by_class
    opt = optimizer_from_config(config.opt, groups=tuple(params))
    place = Placement(sharding.data_mesh(config.num_devices or None))
    state = {"params": place.put_instances(params), "key": jax.random.key_data(k_loop)}
    state["opt"] = place.put_instances(opt.init(params))

    make_model = common.model_factory(config.model, info.image_shape, info.num_classes)
    strategy = common.dsa_strategy_for(info.name, config.loss.dsa_strategy)
    siamese_aug = _siamese_augment(strategy)
    batch_real = min(config.loss.batch_real, pool.per_class)
    if loss_name == "tm":
        tm = config.loss.tm
        student = T.flat_student(
            common.model_factory(ml_collections.ConfigDict(experts.meta["model"]),
                                 info.image_shape, info.num_classes), k_init)
        if student.init_flat.size != experts.num_params:
            raise ValueError(f"the experts in {tm.buffer_dir} have {experts.num_params} "
                             f"parameters, their model config builds {student.init_flat.size}")
        lr_opt = T.syn_lr_optimizer(tm.lr_lr)
        syn_lr = jnp.asarray(tm.lr_teacher, jnp.float32)
        state["syn_lr"], state["lr_opt"] = syn_lr, lr_opt.init(syn_lr)
        step = make_tm_step(param, opt, student, common.make_augment(info.name, strategy or "none"),
                            tm.syn_steps, tm.batch_syn, tm.mode, lr_opt, tm.min_syn_lr or None,
                            place)
        return Built(param, static, state, jax.jit(step, donate_argnums=0),
                     place.replicate((static,)), report, info, make_model,
                     _segment_feeder(experts, tm, config.seed, place))
    if loss_name == "dm":
        step = make_dm_step(param, opt, make_model, siamese_aug, batch_real, info.num_classes, n_pc,
                            place)
    else:
        outer, inner = (config.loss.dc.outer, config.loss.dc.inner)
        if not outer:
            outer, inner = L.dc_loops(config.ipc)
        match = L.gradient_matching_loss
        if loss_name == "lcmat":
            lc = config.loss.lcmat
            match = functools.partial(lcmat_loss, rho=lc.rho, weight=lc.weight,
                                      perturbation=lc.perturbation)
        step = make_dc_step(param, opt, make_model, siamese_aug,
                            common.make_augment(info.name, strategy or "none"),
                            batch_real, info.num_classes, n_pc, outer, inner, config.loss.dc.metric,
                            config.loss.dc.lr_net, config.loss.dc.batch_train, place, match)
    step_args = place.replicate((static, pool.images, pool.mean, pool.std))
    return Built(param, static, state, jax.jit(step, donate_argnums=0), step_args, report, info,
                 make_model)


def run(config: ml_collections.ConfigDict) -> dict:
    timer = common.Timer()
    loss_name = require_choice(config.loss.name, LOSSES, "loss.name")
    require_choice(config.param.name, ("pixel", "fred", "ddif"), "param.name")
    for filled in resolve_auto(config):
        print(f"[jaxdiff distill] spec default: {filled}", flush=True)
    kw = dict(data_dir=config.data.data_dir or None, image_size=config.data.image_size or None)
    train = jdata.load(config.data.name, "train", **kw)
    run_dir = common.make_run_dir(config.run_dir)
    resuming = bool(config.resume) and _has_checkpoint(run_dir)
    b = build(config, train, skip_warmup=resuming)
    param, static, info, make_model, report = b.param, b.static, b.info, b.make_model, b.report
    n_pc = report.instances_per_class
    print(f"[jaxdiff distill] {report}", flush=True)
    common.save_config(run_dir, config)
    params, state, step_fn = b.state["params"], b.state, b.step_fn
    k_eval = jax.random.split(jax.random.key(config.seed), 3)[2]
    static_path = os.path.join(run_dir, "static.npz")
    if resuming and os.path.exists(static_path):
        # The frozen arrays of the original init (e.g. DDiF's warm-up errors), not the re-init's.
        with np.load(static_path) as f:
            static = {k: jnp.asarray(f[k]) for k in f.files}
    else:
        np.savez(static_path, **{k: np.asarray(v) for k, v in static.items()})

    decode_all = jax.jit(lambda p, st: param.decode(p, st))
    test = jdata.load(config.data.name, "test", **kw)
    test_x = jdata.normalize(test.images, info)
    eval_aug = common.make_augment(info.name, config.eval.dsa_strategy)

    def evaluate(images, labels, k, lr=config.eval.lr):
        return train_and_test(k, images, labels, test_x, test.labels, make_model=make_model,
                              num_runs=config.eval.num_runs, epochs=config.eval.epochs,
                              lr=lr, batch_size=config.eval.batch_size, augment=eval_aug,
                              progress=False)

    labels = np.asarray(param.labels(static))
    scale = max(1, 64 // info.image_shape[0])
    if not resuming:
        save_grid(os.path.join(run_dir, "init.png"), _display(decode_all(params, static), info),
                  ncol=_ncol(n_pc, info.num_classes), scale=scale)

    def on_log(done, state, row):
        if config.eval_every and done % config.eval_every == 0 and done != config.iterations:
            lr = float(state["syn_lr"]) if "syn_lr" in state else config.eval.lr
            r = evaluate(decode_all(state["params"], static), labels,
                         jax.random.fold_in(k_eval, done), lr=lr)
            print(f"\n[jaxdiff distill] step {done}: accuracy {r.summary()}", flush=True)
            return {"eval_accuracy": r.mean, "eval_accuracy_std": r.std}
        return {}

    state, history = run_loop(step_fn, state, config.iterations, run_dir=run_dir,
                              fingerprint=config_fingerprint(config),
                              checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                              resume=config.resume, desc=f"distill {param.name}/{loss_name}",
                              on_log=on_log, progress=config.progress)
    images = np.asarray(decode_all(state["params"], static))
    method = f"{param.name}/{loss_name} ipc{config.ipc}"
    # TM learns the student's step size α; the references evaluate with it (dd-common.md §8).
    eval_lr = float(state["syn_lr"]) if "syn_lr" in state else config.eval.lr
    save_synset(run_dir, LabelledSet(images, labels, info.name, np.asarray(info.mean, np.float32),
                                     np.asarray(info.std, np.float32), method=method,
                                     lr=eval_lr if "syn_lr" in state else float("nan")))
    np.savez(os.path.join(run_dir, "params.npz"),
             **{f"params/{k}": np.asarray(v) for k, v in state["params"].items()},
             **{f"static/{k}": np.asarray(v) for k, v in static.items()})
    final_png = save_grid(os.path.join(run_dir, "final.png"), _display(images, info),
                          ncol=_ncol(n_pc, info.num_classes), scale=scale)
    distill_seconds = timer.elapsed()
    out = {"method": method, "dataset": info.name, "budget": str(report),
           "instances": int(len(labels)), "storage_floats": int(param.storage_floats(state["params"], static)),
           "iterations": config.iterations, "final_loss": history[-1]["loss"] if history else None,
           "distill_seconds": distill_seconds, "devices": common.describe_devices(),
           "eval_lr": eval_lr}
    if config.eval.num_runs > 0:
        r = evaluate(images, labels, k_eval, lr=eval_lr)
        out.update(accuracy_mean=r.mean, accuracy_std=r.std, accuracy_runs=r.accuracy.tolist())
        print(f"[jaxdiff distill] {method}: accuracy {r.summary()}", flush=True)
        if config.eval.compare_random:
            idx = jdata.sample_per_class(config.seed, train.labels, info.num_classes, config.ipc)
            rr = evaluate(jdata.normalize(train.images[idx], info), train.labels[idx], k_eval)
            out.update(random_accuracy_mean=rr.mean, random_accuracy_std=rr.std,
                       random_accuracy_runs=rr.accuracy.tolist())
            print(f"[jaxdiff distill] random real, {config.ipc} per class (same budget): "
                  f"accuracy {rr.summary()}", flush=True)
    out["seconds"] = timer.elapsed()
    common.write_json(os.path.join(run_dir, "results.json"), out)
    print(f"[jaxdiff distill] done in {out['seconds']:.0f} s. Results: {run_dir}/results.json; "
          f"images: {final_png}; metrics: {run_dir}/metrics.jsonl", flush=True)
    return out


def _siamese_augment(strategy):
    if not strategy:
        return None
    from jaxdiff.distill import augment as dsa
    return functools.partial(_siamese_call, strategy=strategy, fn=dsa.augment)


def _siamese_call(key, images, siamese=True, *, strategy, fn):
    return fn(key, images, strategy=strategy, siamese=siamese)


def _display(images, info):
    x = np.asarray(images) * np.asarray(info.std) + np.asarray(info.mean)
    return np.clip(x[:400], 0, 1)


def _ncol(n_pc, num_classes):
    """One class per row (up to 50 instances per class), or all classes in one row at IPC 1."""
    return min(n_pc, 50) if n_pc > 1 else num_classes
