"""`jaxdiff experts`: train expert trajectories for trajectory matching (dd-common.md §8.1).

The path (config -> `jaxdiff.specs.experts.resolve` -> here): train/test splits ->
`distill.experts.expert_data` (uint8, a memory map of the data cache, or ZCA space, on the host)
-> `make_expert_trainer` (SGD lr 0.01, no momentum or weight decay, batch 256, per-sample DSA;
`parallel` experts vmapped in one compiled step, results independent of `parallel`; each step's
batch rows drawn from the experts' epoch keys and read on the host, each process only its own
experts' rows, `feeding.HostBatches`) -> E + 1 parameter snapshots per expert in an
`ExpertStore` at `buffer_dir`.

Resuming (`--resume`): complete experts are kept; an expert in training restarts from its last
per-epoch snapshot (momentum-free SGD: the snapshot is the whole state), and its remaining epochs
draw the same randomness, so the result equals an uninterrupted run. Snapshots are host arrays,
so a resume may use another `num_devices` (a group split over it: equal within 1e-6, a device's
share of the group compiles differently). Raising `num_experts` with `--resume` adds experts to
an existing store. A store made with a different config is refused.

`buffer_dir` also receives `config.json`, `metrics.jsonl` (mean train loss per expert-epoch) and
`results.json` (per-expert final train loss and test accuracy).
"""

from __future__ import annotations

import functools
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding
from tqdm.auto import tqdm

from jaxdiff import data as jdata
from jaxdiff import distributed
from jaxdiff import sharding as shd
from jaxdiff.distill import augment as dsa
from jaxdiff.distill import experts as distill_experts
from jaxdiff.distill.experts import ExpertStore, expert_data, make_expert_trainer, param_layout
from jaxdiff.distributed import to_host
from jaxdiff.feeding import HostBatches
from jaxdiff.files import atomic_write_json
from jaxdiff.metrics import MetricWriter, check_finite, check_growth
from jaxdiff.pipelines import common
from jaxdiff.pipelines.plan import Plan, PlanOptions, Program, make_plan, per_device_bytes
from jaxdiff.specs.experts import ExpertsSpec


def store_meta(spec: ExpertsSpec, info, layout) -> dict:
    """The fields that define the experts (everything that changes their parameters)."""
    return {
        "dataset": info.name, "image_shape": list(info.image_shape),
        "num_classes": int(info.num_classes), "zca": spec.zca,
        "zca_reg": float(spec.zca_reg) if spec.zca else None,
        "mean": list(info.mean), "std": list(info.std), "model": spec.model_config,
        "lr": float(spec.lr), "batch_size": int(spec.batch_size),
        "dsa_strategy": spec.dsa_strategy, "seed": int(spec.run.seed), **layout,
    }


def run(spec: ExpertsSpec, plan_options: PlanOptions | None = None) -> dict:
    """Train (or resume) the experts described by `spec`; returns the results dict. The fit
    check (`plan`) runs before the store is opened: a group that does not fit stops there."""
    timer = common.Timer()
    train, test = spec.data.load("train", mmap=True), spec.data.load("test")
    info = train.info
    d = expert_data(train, test, zca=spec.zca, zca_reg=spec.zca_reg)
    make_model = spec.model.factory(info.image_shape, info.num_classes)
    init_key = jax.random.split(jax.random.key(spec.run.seed))[0]   # as `_trainer`'s
    layout = param_layout(make_model, init_key)
    trainer = _trainer(spec, make_model, int(d.train_x.shape[0]), d.transform)
    planned = plan(spec, plan_options or PlanOptions(), for_run=True, trainer=trainer,
                   num_test=int(d.test_x.shape[0]))
    planned.plan.check()
    print(f"[jaxdiff experts] {planned.plan.summary()}", flush=True)
    run_dir = common.open_run_dir(spec.run.run_dir, spec.resolution, resume=spec.run.resume,
                                  key="buffer_dir")
    store = ExpertStore.create(run_dir, num_params=sum(int(np.prod(s)) for s in
                                                       layout["param_shapes"]),
                               epochs=spec.epochs, meta=store_meta(spec, info, layout),
                               exist_ok=spec.run.resume)
    if d.zca is not None:
        store.save_zca(d.zca)
    results_path = os.path.join(run_dir, "results.json")
    per_expert = {}
    if spec.run.resume and os.path.exists(results_path):
        with open(results_path) as f:
            per_expert = {int(k): v for k, v in json.load(f).get("experts", {}).items()}
    E, N = spec.epochs, spec.num_experts
    todo = [i for i in range(N) if not store.is_complete(i)]
    pool = _PoolPlacement(d, common.data_mesh_checked(spec.run.num_devices)[0])
    print(f"[jaxdiff experts] {info.name}: {N} experts x {E} epochs "
          f"({N - len(todo)} already complete), {spec.parallel} in parallel "
          f"({pool.describe(spec.parallel)}), "
          f"{trainer.num_params} parameters, zca={spec.zca}, on "
          f"{common.describe_devices()}; store: {run_dir}", flush=True)
    writer = MetricWriter(run_dir)
    bar = tqdm(total=N * E, initial=sum(E for i in range(N) if store.is_complete(i)),
               desc="experts", unit="expert-epoch", disable=not spec.run.progress)
    try:
        for g in range(0, len(todo), spec.parallel):
            ids = todo[g:g + spec.parallel]
            per_expert.update(_train_group(trainer, store, d, ids, pool, writer, bar,
                                           divergence=(spec.run.divergence_limit,
                                                       float(np.log(info.num_classes)))))
            atomic_write_json(results_path, _results(info, store, per_expert, timer))
    finally:
        bar.close()
        writer.close()
    distributed.barrier("experts_done")   # process 0 has merged the trajectories
    out = _results(info, store, per_expert, timer)
    atomic_write_json(results_path, out)
    accs = [v["test_accuracy"] for v in per_expert.values()]
    if accs:
        print(f"[jaxdiff experts] {len(store)} experts; final test accuracy "
              f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs):.2f} % in "
              f"{timer.elapsed():.0f} s", flush=True)
    return out


def _trainer(spec: ExpertsSpec, make_model, num_train: int, transform, factory=None):
    """The expert trainer of `spec` (its jitted step is what the fit check compiles);
    `factory`: `make_expert_trainer` (looked up when called) or another."""
    init_key, data_key = jax.random.split(jax.random.key(spec.run.seed))
    return (factory or make_expert_trainer)(
        make_model, init_key=init_key, data_key=data_key, num_train=num_train, lr=spec.lr,
        batch_size=spec.batch_size, augment=dsa.per_sample_augment(spec.dsa_strategy),
        transform=transform)


class Planned(NamedTuple):
    plan: Plan
    spec: ExpertsSpec


def plan(spec: ExpertsSpec, options: PlanOptions = PlanOptions(), *, for_run: bool = False,
         trainer=None, num_test: int = 0) -> Planned:
    """The fit check of one group of `parallel` experts: its SGD step (run `steps_per_epoch`
    times per epoch: one iteration here is an epoch of the group) and its test pass, compiled
    with abstract inputs placed as `_PoolPlacement` places them; no data read (the registry's
    split sizes; `trainer`/`num_test`: the run's, built on its data)."""
    info = spec.data.info
    notes = ["an iteration is one epoch of a group of experts (its steps x the step's FLOPs)"]
    if trainer is not None and not hasattr(trainer.step, "trace"):
        trainer = None   # a wrapped step (Python logic around the jitted one): plan a plain one
    if trainer is None:
        num_train = info.num_examples or spec.batch_size
        if not info.num_examples:
            notes.append(f"{info.name}'s train size is known only from its data: one batch per "
                         "epoch assumed (FLOPs per iteration are per step)")
        transform = None if spec.zca else functools.partial(
            jdata.normalize_with, mean=jnp.asarray(info.mean, jnp.float32),
            std=jnp.asarray(info.std, jnp.float32))
        trainer = _trainer(spec, spec.model.factory(info.image_shape, info.num_classes),
                           num_train, transform, factory=distill_experts.make_expert_trainer)
    num_test = num_test or jdata.get_info(spec.data.name, "test").num_examples or 1
    mesh = common.data_mesh_checked(spec.run.num_devices)[0]
    n = mesh.shape[shd.DATA_AXIS]
    group = min(spec.parallel, spec.num_experts)
    split = n > 1 and group % n == 0          # `_PoolPlacement.place`
    where = shd.batch_sharding(mesh) if split else SingleDeviceSharding(jax.local_devices()[0])
    sds = lambda shape, dtype, s=where: jax.ShapeDtypeStruct(shape, dtype, sharding=s)  # noqa: E731
    pixels = jnp.float32 if spec.zca else jnp.uint8
    b, shape = spec.batch_size, info.image_shape
    # on one device the ids (jnp.asarray) and the test split (host arrays) are uncommitted
    loose = shd.replicated(mesh) if split else None
    flat, ids = sds((group, trainer.num_params), jnp.float32), sds((group,), jnp.int32, where if
                                                                    split else None)
    x, y = sds((group, b, *shape), pixels), sds((group, b), jnp.int32)
    test = (sds((num_test, *shape), pixels, loose), sds((num_test,), jnp.int32, loose))
    programs = [Program(f"expert step ({group} experts x {b} images)", trainer.step,
                        (flat, ids, jax.ShapeDtypeStruct((), jnp.int32), x, y),
                        per_iteration=trainer.steps_per_epoch),
                Program("test accuracy (once per group)", trainer.accuracy, (flat, *test),
                        per_iteration=0)]
    sections = [(f"expert parameters ({group} x {trainer.num_params} float32)",
                 per_device_bytes(flat)),
                (f"real batch ({group} x {b} images)", per_device_bytes((x, y))),
                (f"test split ({num_test} images)", per_device_bytes(test))]
    knobs = [f"parallel (now {group} experts per group)",
             f"more devices (now {n}; a group whose size is a multiple of the device count is "
             "split over them)", f"batch_size (now {b}; the references' is 256)"]
    p = make_plan("experts", programs, sections, options, knobs=knobs, notes=notes,
                  for_run=for_run, num_devices=n if split else 1, devices=f"{common.describe_devices()}, mesh data={n}")
    return Planned(p, spec)


class _PoolPlacement:
    """Where a group of experts trains: split over every device of `mesh` (all processes)
    when the group size is a multiple of the device count, each expert on one device's share;
    otherwise the whole group on this process's default device (as with one device: in a
    multi-process run every process then computes the same group)."""

    def __init__(self, d, mesh):
        self.mesh = mesh
        self.n = self.mesh.shape[shd.DATA_AXIS]
        self.test, self._replicated_test = (d.test_x, d.test_y), None

    def describe(self, group: int) -> str:
        if self.n > 1 and group % self.n == 0:
            return f"split over {self.n} devices"
        return "on one device" + (" per process" if distributed.process_count() > 1 else "")

    def place(self, ids: list[int]):
        """`(put, batches, test)`: a function placing `[len(ids), ...]` arrays, the sharding of
        a step's batch `[len(ids), b, ...]`, and the test split `(x, y)` where it is used."""
        if self.n == 1 or len(ids) % self.n:
            return jnp.asarray, SingleDeviceSharding(jax.local_devices()[0]), self.test
        if self._replicated_test is None:
            self._replicated_test = shd.replicate(self.test, self.mesh)
        return (lambda x: shd.shard_batch(np.asarray(x), self.mesh),
                shd.batch_sharding(self.mesh), self._replicated_test)


def _train_group(trainer, store: ExpertStore, d, ids: list[int], pool: _PoolPlacement, writer,
                 bar, divergence: tuple[float, float] = (0.0, 0.0)) -> dict:
    """Train experts `ids` together (vmapped; split over the devices when `pool` allows) from
    scratch or from their last common snapshot, one step per batch (each process reads the
    batch rows of its own experts, `feeding.HostBatches`), writing a snapshot per epoch;
    returns their {id: {test_accuracy, final_train_loss}}.

    `divergence = (limit, reference)`: an epoch whose mean train loss exceeds `limit` times
    `reference` (the chance-level cross-entropy log C, what a fresh network scores) stops the
    run before that epoch's snapshot is written (`metrics.DivergenceError`)."""
    E, S = store.epochs, trainer.steps_per_epoch
    put, target, (test_x, test_y) = pool.place(ids)
    ids_arr = put(np.asarray(ids, np.int32))
    batches = HostBatches((d.train_x, d.train_y), trainer.rows_of(np.asarray(ids, np.int32)),
                          (target, target))
    resume_at = [store.resume_epoch(i) for i in ids]
    if any(r is None for r in resume_at):
        e0 = 0
        flat = trainer.init(ids_arr)
        host = to_host(flat)
        for j, i in enumerate(ids):
            store.save_snapshot(i, 0, host[j])
    else:
        e0 = min(resume_at)
        flat = put(np.stack([store.load_snapshot(i, e0) for i in ids]))
    bar.update(e0 * len(ids))
    loss = None
    for e in range(e0, E):
        total = 0.0
        for t in range(e * S, (e + 1) * S):
            flat, losses = trainer.step(flat, ids_arr, np.int32(t), *batches(t))
            shd.settle_cpu_step(losses)   # one step in flight on several CPU devices
            total = total + losses
        host, loss = to_host((flat, total / S))   # one host sync per epoch
        step = ids[0] * E + e + 1
        check_finite(step, train_loss=loss)
        for j, i in enumerate(ids):
            check_growth(step, f"the mean train loss of expert {i} in epoch {e + 1}",
                         float(loss[j]), divergence[1], divergence[0],
                         reference_is="the chance-level cross-entropy log(num_classes)")
        for j, i in enumerate(ids):
            store.save_snapshot(i, e + 1, host[j])
        writer.write(step, {"experts": list(ids), "epoch": e + 1,
                            "train_loss_mean": float(loss.mean()), "train_loss": loss.tolist()})
        bar.update(len(ids))
        bar.set_postfix(loss=f"{loss.mean():.4f}")
    acc = to_host(trainer.accuracy(flat, test_x, test_y))
    out = {}
    for j, i in enumerate(ids):
        store.finalize(i)
        out[i] = {"test_accuracy": float(acc[j]),
                  "final_train_loss": None if loss is None else float(loss[j])}
    return out


def _results(info, store: ExpertStore, per_expert: dict, timer) -> dict:
    accs = [v["test_accuracy"] for v in per_expert.values()]
    return {
        "dataset": info.name,
        "undecodable_images": int(info.undecodable),   # photos skipped by the loader
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
