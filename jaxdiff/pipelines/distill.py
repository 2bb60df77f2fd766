"""`jaxdiff distill`: distil a dataset into a parameterised synthetic set, then evaluate it.

The path (config -> `jaxdiff.specs.distill.resolve` -> here):

    train split -> real-image pool -> parameterisation init (DDiF: warm-up fit)
    -> the method's step (`distill.dm` / `dc` (DC, LCMat-C) / `tm`) -> `run_loop`
    -> decoded set, images -> evaluation (train on synthetic, test on real)

Any parameterisation (pixel, FreD, DDiF) x any loss (DM, DC/DSA, TM over stored experts, LCMat-C).
One distillation step is one jitted function — decode, loss, gradient, per-instance optax
update. The run directory receives:

* `checkpoints/`      Orbax checkpoints of the full state (parameters, optimiser state, key);
* `synthetic.npz`     the decoded set in the documented format (`jaxdiff.distill.synset`);
* `params.npz`        the raw parameters and frozen arrays of the parameterisation;
* `static.npz`        the frozen arrays as initialised (a resume reuses them);
* `init.png`, `final.png`  grids of the decoded images (one class per row);
* `metrics.jsonl`, `results.json`, `config.json` (the resolved config and what was filled in).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff import sharding
from jaxdiff.distill import augment as dsa
from jaxdiff.distill import dc, dm, tm
from jaxdiff.distill.curvature import lcmat_loss
from jaxdiff.distill.evaluate import train_and_test
from jaxdiff.distill.optim import make_optimizer
from jaxdiff.distill.params import PARAM_GROUPS, get_parameterisation
from jaxdiff.distill.placement import Placement
from jaxdiff.distill.real_pool import NormalisedPool, make_real_pool, real_batches
from jaxdiff.distill.synset import LabelledSet, save_synset
from jaxdiff.distill.trajectory import flat_student
from jaxdiff.distributed import agree, to_host
from jaxdiff.errors import UserError
from jaxdiff.files import atomic_savez, atomic_write_json
from jaxdiff.metrics import DivergenceError
from jaxdiff.images import save_grid
from jaxdiff.models.classifiers import classifier_factory
from jaxdiff.pipelines import common
from jaxdiff.pipelines.loop import run_loop
from jaxdiff.pipelines.plan import (Plan, PlanOptions, Program, divisors, largest_fitting,
                                    make_plan, per_device_bytes)
from jaxdiff.specs.distill import DistillSpec


class Built(NamedTuple):
    """Everything a distillation run (or a benchmark of its step) needs."""

    param: Any            # the Parameterisation
    static: dict          # its frozen arrays
    state: Any            # the loop state at step 0 (`DistillState` / `TMState`)
    step: Callable        # jitted `update(state, step, *step_args, *extra_args(step))`
    step_args: tuple      # (static, mean, std) or (static,), placed on the mesh
    report: Any           # BudgetReport
    info: Any             # DatasetInfo
    make_model: Callable  # the classifier factory (distillation networks and evaluation)
    extra_args: Callable | None = None  # step -> (real batches,) or TM's expert snapshots

    def step_fn(self, state, i):
        extra = self.extra_args(i) if self.extra_args is not None else ()
        return self.step(state, i, *self.step_args, *extra)


def parameterisation(spec: DistillSpec, *, skip_warmup: bool = False):
    """The spec's parameterisation; `skip_warmup`: DDiF fields without the warm-up fit (a resume
    restores the fitted parameters anyway, so re-fitting them would be wasted work)."""
    options = dict(spec.param.options)
    if skip_warmup and spec.param.name == "ddif":
        options["warmup_steps"] = 0
    return get_parameterisation(spec.param.name, ipc=spec.ipc, **options)


def build(spec: DistillSpec, train: jdata.Dataset, *, skip_warmup: bool = False,
          program: StepProgram | None = None) -> Built:
    """Parameterisation, initial state and the jitted step of `spec` on the training split;
    `program`: the step as the fit check compiled it (`plan`), so the run reuses that compile."""
    info, loss = train.info, spec.loss
    if program is None:   # TM: the expert buffer is checked before any work (DDiF's warm-up)
        program = step_program(spec, experts=_open_experts(spec))
    step, place, experts = program.step, program.place, program.experts
    param = parameterisation(spec, skip_warmup=skip_warmup)
    pool = make_real_pool(train.images, train.labels, info.num_classes, info.mean, info.std)
    if pool.per_class < loss.batch_real:
        raise UserError(f"{info.name}'s training data has {pool.per_class} images in its smallest "
                        f"class, fewer than loss.batch_real = {loss.batch_real} (the registry "
                        "expected more: is the prepared dataset complete?)")
    k_init, k_loop = program.k_init, program.k_loop
    params, static = param.init(k_init, NormalisedPool(pool))  # reads only the chosen images
    state = place.put_state(step.init(place.put_instances(params), k_loop))
    jitted, make_model = program.jitted, program.make_model
    report = spec.param.budget
    if loss.name == "tm":
        feed = tm.segment_feeder(experts, max_start_epoch=loss.tm.max_start_epoch,
                                 expert_epochs=loss.tm.expert_epochs, seed=spec.run.seed,
                                 place=place)
        return Built(param, static, state, jitted, place.replicate((static,)), report, info,
                     make_model, feed)
    shape = real_batch_shape(spec, step)
    feed = real_batches(pool, loss.batch_real, k_loop, step.real_keys, place.real_batches(shape))
    step_args = place.replicate((static, pool.mean, pool.std))
    return Built(param, static, state, jitted, step_args, report, info, make_model, feed)


class StepProgram(NamedTuple):
    """The distillation step built without data: what `build` runs and `plan` compiles with
    abstract inputs (the same jitted function, so the run reuses the fit check's compile)."""

    step: Any             # the method's `DistillStep`
    jitted: Callable      # `jax.jit(step.update, donate_argnums=0)`
    place: Placement
    make_model: Callable  # the classifier factory (distillation networks and evaluation)
    experts: Any          # TM's `ExpertStore`; None otherwise (or when planning without one)
    k_init: jax.Array     # the parameterisation's init key (and TM's student init)
    k_loop: jax.Array     # the loop key the state carries


def step_program(spec: DistillSpec, *, experts=None) -> StepProgram:
    """The method's step for `spec` on the mesh of `spec.run.num_devices`; reads no data. TM:
    the student is the `experts` store's model (None: the spec's `model` section, for a plan
    made without the store)."""
    info = spec.data.info
    k_init, k_loop = jax.random.split(jax.random.key(spec.run.seed), 3)[:2]
    param = parameterisation(spec, skip_warmup=True)   # the step only decodes: no warm-up here
    o = spec.opt
    opt = make_optimizer(o.name, o.lr, momentum=o.momentum, groups=PARAM_GROUPS[param.name],
                         group_lr=o.group_lr, masked=o.masked)
    place = Placement(sharding.data_mesh(spec.run.num_devices or None))
    make_model = spec.model.factory(info.image_shape, info.num_classes)
    step = _method_step(spec, param, opt, make_model, place, experts, k_init)
    return StepProgram(step, jax.jit(step.update, donate_argnums=0), place, make_model,
                       experts, k_init, k_loop)


def real_batch_shape(spec: DistillSpec, step) -> tuple[int, ...]:
    """`[R, C, batch_real, H, W, Ch]`: the real batches one DM/DC/LCMat-C update reads."""
    info = spec.data.info
    batches = jax.eval_shape(step.real_keys, jax.random.key(0)).shape[0]  # per step (R)
    return (batches, info.num_classes, spec.loss.batch_real, *info.image_shape)


def _open_experts(spec: DistillSpec):
    t = spec.loss.tm
    if spec.loss.name != "tm":
        return None
    return tm.open_experts(t.buffer_dir, spec.data.name, spec.data.info.image_shape,
                           stats=spec.data.info.stats, max_start_epoch=t.max_start_epoch,
                           expert_epochs=t.expert_epochs)


def _method_step(spec: DistillSpec, param, opt, make_model, place, experts, k_init):
    """The `DistillStep` of the spec's loss (DM, DC, LCMat-C or TM)."""
    loss, info = spec.loss, spec.data.info
    n_pc = spec.param.budget.instances_per_class
    per_sample = dsa.per_sample_augment(loss.dsa_strategy)
    if loss.name == "tm":
        t = loss.tm
        m = experts.meta["model"] if experts is not None else spec.model.as_config()
        student_model = classifier_factory(m["name"], info.image_shape, info.num_classes,
                                           depth=m["depth"], width=m["width"], norm=m["norm"])
        student = flat_student(student_model, k_init)
        if experts is not None and student.init_flat.size != experts.num_params:
            raise ValueError(f"the experts in {t.buffer_dir} have {experts.num_params} "
                             f"parameters, their model config builds {student.init_flat.size}")
        return tm.make_tm_step(param, opt, student, per_sample, syn_steps=t.syn_steps,
                               batch_syn=t.batch_syn, mode=t.mode, lr_lr=t.lr_lr,
                               lr_teacher=t.lr_teacher, min_syn_lr=t.min_syn_lr, place=place)
    common_args = dict(batch_real=loss.batch_real, num_classes=info.num_classes, per_class=n_pc,
                       place=place)
    siamese = dsa.siamese_augment(loss.dsa_strategy)
    if loss.name == "dm":
        return dm.make_dm_step(param, opt, make_model, siamese, class_chunk=loss.class_chunk,
                               **common_args)
    match = functools.partial(dc.losses.gradient_matching_loss, class_chunk=loss.class_chunk)
    if loss.name == "lcmat":
        lc = loss.lcmat
        match = functools.partial(lcmat_loss, rho=lc.rho, weight=lc.weight,
                                  perturbation=lc.perturbation)
    d = loss.dc
    return dc.make_dc_step(param, opt, make_model, siamese, per_sample, outer=d.outer,
                           inner=d.inner, metric=d.metric, lr_net=d.lr_net,
                           batch_train=d.batch_train, match_loss=match, **common_args)


def run(spec: DistillSpec, plan_options: PlanOptions | None = None) -> dict:
    """Distil, write the set and its images, evaluate; returns (and saves) the results dict.
    First the fit check (`plan`: the step compiled without data, `class_chunk` 0 chosen by
    it): a run that does not fit stops here (`PlanError`), before data, warm-up or run dir."""
    timer = common.Timer()
    planned = plan(spec, plan_options or PlanOptions(), for_run=True)
    planned.plan.check()
    spec = planned.spec
    print(f"[jaxdiff distill] {planned.plan.summary()}", flush=True)
    train = spec.data.load("train", mmap=True)  # each step reads only its real batches' rows
    run_dir = common.open_run_dir(spec.run.run_dir, spec.resolution,
                                  resume=spec.run.resume)
    resuming = spec.run.resume and _has_checkpoint(run_dir)
    b = build(spec, train, skip_warmup=resuming, program=planned.program)
    static = _frozen_arrays(run_dir, b.static, resuming)
    decode_all = jax.jit(lambda p, st: b.param.decode(p, st))
    labels = to_host(b.param.labels(static))
    evaluate = _evaluator(spec, b.make_model, train.info)
    if not resuming:
        _save_grid(run_dir, "init.png", decode_all(b.state.params, static), spec)

    def on_log(done, state, row):
        _check_divergence(spec, done, decode_all(state.params, static))
        if spec.eval_every and done % spec.eval_every == 0 and done != spec.iterations:
            r = evaluate(decode_all(state.params, static), labels, done, _eval_lr(spec, state))
            print(f"\n[jaxdiff distill] step {done}: accuracy {r.summary()}", flush=True)
            return {"eval_accuracy": r.mean, "eval_accuracy_std": r.std}
        return {}

    method = f"{b.param.name}/{spec.loss.name} ipc{spec.ipc}"
    state, history = run_loop(b.step_fn, b.state, spec.iterations, run_dir=run_dir,
                              fingerprint=spec.resolution.resume_fingerprints,
                              checkpoint_every=spec.run.checkpoint_every,
                              log_every=spec.run.log_every, resume=spec.run.resume,
                              desc=f"distill {b.param.name}/{spec.loss.name}", on_log=on_log,
                              progress=spec.run.progress)
    images = to_host(decode_all(state.params, static))
    out = _write_outputs(spec, run_dir, b, state, static, images, labels, method, history)
    out["distill_seconds"] = timer.elapsed()
    if spec.eval.num_runs > 0:
        out.update(_final_evaluation(spec, evaluate, train, images, labels, out["eval_lr"],
                                     method))
    out["seconds"] = timer.elapsed()
    atomic_write_json(os.path.join(run_dir, "results.json"), out)
    print(f"[jaxdiff distill] done in {out['seconds']:.0f} s. Results: {run_dir}/results.json; "
          f"images: {run_dir}/final.png; metrics: {run_dir}/metrics.jsonl", flush=True)
    return out


# ----------------------------------------------------------------------------- fit check
class Planned(NamedTuple):
    """`plan`'s result: the figures, the compiled step's program (the run reuses it) and the
    spec with `class_chunk` as chosen (a note in its resolved block)."""

    plan: Plan
    program: StepProgram
    spec: DistillSpec


def abstract_inputs(spec: DistillSpec, program: StepProgram) -> tuple:
    """The arguments `program.jitted` receives in the run, as `ShapeDtypeStruct`s with the
    run's shardings: `(state, step, static, [mean, std, real] | [start, target])`. No data is
    read and no initialisation runs (`jax.eval_shape` of the parameterisation's init on an
    abstract real pool)."""
    info, place = spec.data.info, program.place
    param = parameterisation(spec, skip_warmup=True)
    pool = jax.ShapeDtypeStruct((info.num_classes, spec.param.budget.instances_per_class,
                                 *info.image_shape), jnp.float32)
    params, static = jax.eval_shape(param.init, program.k_init, pool)
    state = jax.eval_shape(program.step.init, params, program.k_loop)
    rep = jax.sharding.NamedSharding(place.mesh, jax.sharding.PartitionSpec())

    def by_instance(a):   # `Placement.put_instances`: the instance axis over the mesh if it splits
        split = a.ndim and place.n > 1 and a.shape[0] % place.n == 0
        s = jax.sharding.NamedSharding(place.mesh, jax.sharding.PartitionSpec(
            sharding.DATA_AXIS)) if split else rep
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

    def replicated(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), tree)

    state = state._replace(**{k: jax.tree.map(by_instance, v) if k in ("params", "opt")
                              else replicated(v) for k, v in state._asdict().items()})
    step = jax.ShapeDtypeStruct((), jnp.int32)
    if spec.loss.name == "tm":
        size = flat_size(program)
        return (state, step, replicated(static),
                *replicated((jax.ShapeDtypeStruct((size,), jnp.float32),) * 2))
    shape = real_batch_shape(spec, program.step)
    ch = info.image_shape[-1]
    return (state, step, *replicated((static, jax.ShapeDtypeStruct((ch,), jnp.float32),
                                      jax.ShapeDtypeStruct((ch,), jnp.float32))),
            jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=place.real_batches(shape)))


def flat_size(program: StepProgram) -> int:
    """TM: parameters of the student (= of every expert snapshot)."""
    if program.experts is not None:
        return int(program.experts.num_params)
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(
        nnx.state(program.make_model(nnx.Rngs(0)), nnx.Param))))


def plan(spec: DistillSpec, options: PlanOptions = PlanOptions(), *, for_run: bool = False
         ) -> Planned:
    """The fit check of `spec`'s distillation step (compiled, never run; no data read).
    `class_chunk` 0 (DM, DC) is chosen here: on CPU devices 1 (one class's real batch at a
    time: on XLA:CPU the fastest and 5x smaller than all classes at once,
    benchmarks/results/class_chunk_memory.md); on accelerators the largest divisor of the class
    count whose step fits, by binary search (all classes at once when that fits; chunk 1 is
    reported when nothing does). `for_run`: TM needs its expert store (a plan without it uses
    the spec's `model`)."""
    experts = _open_experts(spec) if for_run else _experts_if_present(spec)
    loss, classes = spec.loss, spec.data.info.num_classes
    if loss.class_chunk or loss.name not in ("dm", "dc"):
        return _plan_at(spec, options, experts, for_run)
    tried: dict[int, Planned] = {}

    def fits(chunk: int) -> bool:
        at = _with_chunk(spec, 0 if chunk == classes else chunk)
        tried[chunk] = _plan_at(at, options, experts, for_run)
        return bool(agree(tried[chunk].plan.fits))

    one_class = small_chunks_first(jax.devices())
    chosen = (1 if fits(1) else None) if one_class else largest_fitting(divisors(classes), fits)
    if chosen is None:
        why = "auto: no chunk fits, not even one class at a time"
    elif one_class:
        why = "auto on CPU: one class at a time, fastest and smallest on XLA:CPU"
    else:
        why = (f"auto: the largest divisor of {classes} classes whose step fits "
               f"{tried[chosen].plan.budget.source}")
    got = tried[chosen if chosen is not None else 1]
    note = f"class_chunk -> {chosen or 1}  ({why}; {len(tried)} compiled)"
    resolution = dataclasses.replace(got.spec.resolution,
                                     notes=got.spec.resolution.notes + (note,))
    return got._replace(spec=dataclasses.replace(got.spec, resolution=resolution))


def small_chunks_first(devices) -> bool:
    """`class_chunk` auto takes one class at a time (True: CPU devices) rather than the most
    classes that fit (accelerators, where a larger call fills the chip)."""
    return sharding.all_cpu(devices)


def _plan_at(spec: DistillSpec, options: PlanOptions, experts, for_run: bool) -> Planned:
    program = step_program(spec, experts=experts)
    args = abstract_inputs(spec, program)
    state, info, loss = args[0], spec.data.info, spec.loss
    n = program.place.n
    decoded = (spec.param.budget.instances_per_class * info.num_classes, *info.image_shape)
    split = n > 1 and decoded[0] % n == 0
    sections = [(f"parameters ({spec.param.name}, {spec.param.budget.total_instances} "
                 "instances)", per_device_bytes(state.params)),
                ("optimiser state (+ key, TM step size)",
                 per_device_bytes(state) - per_device_bytes(state.params)),
                ("frozen arrays (static)", per_device_bytes(args[2])),
                ("synthetic set (decoded, float32)",
                 int(np.prod(decoded)) * 4 // (n if split else 1))]
    if loss.name == "tm":
        sections.append(("expert segment (start + target)", per_device_bytes(args[3:])))
    else:
        sections.append((f"real batch ({loss.batch_real} per class, uint8)",
                         per_device_bytes(args[-1])))
    notes = []
    if loss.name == "tm" and experts is None:
        notes.append(f"no expert store at {loss.tm.buffer_dir}: the student is the spec's "
                     "`model` section")
    p = make_plan("distill", [Program(f"distill step ({spec.param.name}/{loss.name})",
                                      program.jitted, args)],
                  sections, options, knobs=_knobs(spec, n), notes=notes, for_run=for_run,
                  num_devices=n, devices=f"{common.describe_devices()}, mesh data={n}")
    return Planned(p, program, spec)


def _with_chunk(spec: DistillSpec, chunk: int) -> DistillSpec:
    return dataclasses.replace(spec, loss=dataclasses.replace(spec.loss, class_chunk=chunk))


def _experts_if_present(spec: DistillSpec):
    try:
        return _open_experts(spec)
    except UserError:
        return None


def _knobs(spec: DistillSpec, devices: int) -> list[str]:
    """What lowers the memory per device, with the current values."""
    loss = spec.loss
    out = []
    if loss.name == "tm":
        t = loss.tm
        out.append(f"loss.tm.batch_syn (now {t.batch_syn or 'all'}: instances per student step)")
        out.append(f"loss.tm.syn_steps (now {t.syn_steps}) with loss.tm.mode=remat or tesla "
                   f"(now {t.mode}; tesla's memory does not grow with syn_steps)")
    else:
        out.append(f"loss.batch_real (now {loss.batch_real})")
        if loss.name in ("dm", "dc"):
            out.append(f"class_chunk (now {loss.class_chunk or 'auto'}; 1 = one class's real "
                       "batch at a time)")
    out.append(f"more devices (now {devices}; num_devices=0 takes all, several processes add "
               "theirs: the synthetic set and the real batches split over them)")
    out.append(f"ipc (now {spec.ipc})")
    return out


def _check_divergence(spec: DistillSpec, step: int, images) -> None:
    """Stop when a decoded value leaves `[-divergence_limit, divergence_limit]` (normalised
    units; NaN and Inf included): a run that blows up but stays finite would otherwise finish
    and write a useless set. Called at log steps, before the checkpoint of the same step."""
    limit = spec.divergence_limit
    if not limit:
        return
    worst = float(to_host(jnp.max(jnp.abs(images))))
    if not worst <= limit:
        raise DivergenceError(
            f"the synthetic set diverged at step {step}: max |value| = {worst:.3g} (normalised "
            f"units; real data lie within about +-3) > divergence_limit = {limit:g}. Nothing "
            "final was written; the last checkpoint before it is kept. Lower opt.lr (or "
            "--config.divergence_limit=0 to never stop)")


def _has_checkpoint(run_dir: str) -> bool:
    d = os.path.join(run_dir, "checkpoints")   # process 0's view decides for all processes
    return agree(os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d)))


def _frozen_arrays(run_dir: str, static: dict, resuming: bool) -> dict:
    """The frozen arrays of the original init (e.g. DDiF's warm-up errors): written at the
    start of a run, read back on resume (the re-init skipped the warm-up)."""
    path = os.path.join(run_dir, "static.npz")
    if resuming and os.path.exists(path):
        with np.load(path) as f:
            return {k: jnp.asarray(f[k]) for k in f.files}
    atomic_savez(path, **to_host(dict(static)))
    return static


def _eval_lr(spec: DistillSpec, state) -> float:
    """TM learns the student's step size α; the references evaluate with it (dd-common §8)."""
    return float(to_host(state.syn_lr)) if hasattr(state, "syn_lr") else spec.eval.lr


def _evaluator(spec: DistillSpec, make_model, info):
    """`evaluate(images, labels, key_index, lr) -> EvalResult` on the real test split; key
    index 0 is the final evaluation, a step number an intermediate one."""
    test = spec.data.load("test")
    test_x = jdata.normalize(test.images, info)
    augment = dsa.per_sample_augment(spec.eval.dsa_strategy)
    k_eval = jax.random.split(jax.random.key(spec.run.seed), 3)[2]
    e = spec.eval

    def evaluate(images, labels, at, lr):
        key = k_eval if at == 0 else jax.random.fold_in(k_eval, at)
        return train_and_test(key, images, labels, test_x, test.labels, make_model=make_model,
                              num_runs=e.num_runs, epochs=e.epochs, lr=lr,
                              batch_size=e.batch_size, augment=augment, progress=False)

    return evaluate


def _write_outputs(spec, run_dir, b: Built, state, static, images, labels, method, history):
    """synthetic.npz, params.npz, final.png; returns the results dict so far."""
    info = b.info
    eval_lr = _eval_lr(spec, state)
    save_synset(run_dir, LabelledSet(images, labels, info.name, np.asarray(info.mean, np.float32),
                                     np.asarray(info.std, np.float32), method=method,
                                     lr=eval_lr if hasattr(state, "syn_lr") else float("nan")))
    atomic_savez(os.path.join(run_dir, "params.npz"),
                 **{f"params/{k}": v for k, v in to_host(dict(state.params)).items()},
                 **{f"static/{k}": v for k, v in to_host(dict(static)).items()})
    _save_grid(run_dir, "final.png", images, spec)
    return {"method": method, "dataset": info.name, "budget": str(b.report),
            "undecodable_images": int(info.undecodable), "instances": int(len(labels)),
            "storage_floats": int(b.param.storage_floats(state.params, static)),
            "iterations": spec.iterations,
            "final_loss": history[-1]["loss"] if history else None,
            "devices": common.describe_devices(), "eval_lr": eval_lr}


def _final_evaluation(spec, evaluate, train, images, labels, eval_lr, method) -> dict:
    """Accuracy of the distilled set (and of random real images at the same budget)."""
    info = train.info
    r = evaluate(images, labels, 0, eval_lr)
    out = dict(accuracy_mean=r.mean, accuracy_std=r.std, accuracy_runs=r.accuracy.tolist())
    print(f"[jaxdiff distill] {method}: accuracy {r.summary()}", flush=True)
    if spec.eval.compare_random:
        idx = jdata.sample_per_class(spec.run.seed, train.labels, info.num_classes, spec.ipc)
        rr = evaluate(jdata.normalize(train.images[idx], info), train.labels[idx], 0,
                      spec.eval.lr)
        out.update(random_accuracy_mean=rr.mean, random_accuracy_std=rr.std,
                   random_accuracy_runs=rr.accuracy.tolist())
        print(f"[jaxdiff distill] random real, {spec.ipc} per class (same budget): "
              f"accuracy {rr.summary()}", flush=True)
    return out


def _save_grid(run_dir: str, name: str, images, spec: DistillSpec) -> str:
    """A PNG grid of (up to 400) decoded images in pixel space, one class per row (up to 50
    instances per class), or all classes in one row at one instance per class."""
    info = spec.data.info
    x = np.clip((np.asarray(images) * np.asarray(info.std) + np.asarray(info.mean))[:400], 0, 1)
    n_pc = spec.param.budget.instances_per_class
    ncol = min(n_pc, 50) if n_pc > 1 else info.num_classes
    return save_grid(os.path.join(run_dir, name), x, ncol=ncol,
                     scale=max(1, 64 // info.image_shape[0]))
