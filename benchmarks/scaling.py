"""Weak scaling over 1-8 devices and 1 vs 2 processes: per-step time, per-device throughput and
the host time per step spent outside compiled code (issue 17 item 7).

    python -m benchmarks.scaling --out rows.jsonl     # devices 1,2,4,8; 1 and 2 processes
    python -m benchmarks.scaling --quick               # tiny sizes, 3 repeats (~1-2 min)
    python -m benchmarks.scaling --quick --fast-compile --concurrent --devices 1,2  # the test
    python -m benchmarks.scaling --workloads ddif_dm,diffrs --processes 1

Sizes per device (`FULL`; `--quick`: `QUICK`, width-16 ConvNets, 2 TM steps, a small MLP
denoiser on a 4-step grid and no DSA - a harness check, not a figure) are multiplied by the
device count; see `Sizes`.

Workloads (each built the way its pipeline builds it, at CPU-sized settings on the 8x8 digits):

* `ddif_dm`: the DDiF distillation step with the DM loss (`distill.dm.make_dm_step`, the DDiF
  parameterisation without warm-up, the DM/DDiF optimiser row of `distill.presets`, ConvNet
  embeddings, siamese DSA, `distill.placement.Placement` over the mesh) - as
  `pipelines/distill.py::build`. Global batch: `batch_real` real images per class and the
  synthetic instances (fields), both `per device x devices`.
* `pixel_tm`: the TM step on pixels (`distill.tm.make_tm_step`, `trajectory.flat_student`, remat
  unroll, per-image DSA, the pixel/TM optimiser row), fed by `distill.tm.segment_feeder` (the
  pipeline's host-side feed, replicating one expert segment per step) from an in-memory store of
  random "expert" snapshots. Global batch: `batch_syn` images per student step and the IPC, both
  `per device x devices`.
* `eval_train`: one SGD step of the evaluation protocol (`distill/evaluate.py`: ConvNet, coupled
  weight decay 5e-4 then momentum 0.9, a batch of the epoch's permutation (`batching.
  epoch_batches`), per-image DSA, masked cross-entropy) vmapped over independently initialised
  runs (`models.functional.init_pool`), the runs axis sharded over the mesh. Global batch: the
  runs, `per device x devices` (each run trains on its own batch).
* `diffrs`: one batch of `jaxdiff.diffusion.rejection.diffrs_sample` as `pipelines/sample.py`
  draws it (`batch_samplers.diffrs_sampler`: `num_samples = batch_size = B` pool slots sharded
  over the mesh, offset advancing by B per call) with the digits U-Net denoiser and the digits
  discriminator (randomly initialised: the work per step, not the samples, is measured; tables
  from `rejection_tables(warmup_logits(...), 0.75)`; the random discriminator accepts every
  transition, so this times the state machine's rounds, not the rejection cascade). Global
  batch: B = `per device x devices`.

Weak scaling: the global batch grows with the device count, so constant step time means perfect
scaling. Items per step (`items_per_step`, defined per workload in `item`) divided by the median
step time and the device count is `items_per_s_per_device`.

Devices and processes. Every measurement runs in a fresh worker process (this module with
`--worker`) on fake CPU devices (`JAX_PLATFORMS=cpu`,
`XLA_FLAGS=--xla_force_host_platform_device_count=K`). One process: K = max(devices) and the mesh
of each row is `jaxdiff.sharding.data_mesh(n)` (the first n devices). Two processes: two workers
with K = max(devices) / 2 each join with `jax.distributed.initialize(coordinator_address=
"127.0.0.1:<free port>", num_processes=2, process_id=i)` and build the global mesh over all
devices (`data_mesh()`: `jax.make_mesh` over `jax.devices()`, AxisType.Auto); every input is
assembled with `jax.make_array_from_process_local_data` from each process's rows (sharded
leaves, `sharding.local_batch_to_global`) or whole array (replicated leaves; see `_put_rows`
for why not `jax.device_put`); only process 0
reports (its own timings, with both processes' step and host times in `*_per_process`). When
one worker dies the other blocks forever in a collective and ignores SIGTERM, so workers are
killed with SIGKILL as soon as one fails or the timeout passes. On one machine the two processes
share its cores: this measures the multi-process overhead (gloo collectives over TCP between
processes instead of in-process copies, two hosts' dispatch), not a speed-up.

Timing (per row, after AOT compilation, `compile_s`, one checked step and one warm-up step):

* `step_ms`: median over `repeats` iterations of the wall time of one loop iteration as the
  pipeline's loop runs it - the host-side feed (step index; TM's segment feed), the call of the
  compiled step, then `jax.block_until_ready` on its outputs (IQR and min beside it);
* `host_ms`: median time of the same iterations *before* the wait, i.e. the host's feed plus the
  asynchronous dispatch (`dispatch_ms`: the call alone; `feed_ms`: the feed alone). XLA:CPU
  dispatches asynchronously, so this is the time per step the host spends outside compiled code;
  `host_fraction` = host_ms / step_ms;
* `pipelined_step_ms`: wall time of `repeats` steps dispatched back to back without blocking
  (one `block_until_ready` at the end), per step - what the loop costs when host work overlaps
  the device's; `step_ms - pipelined_step_ms` is the overlap won.

Check: every row carries `checksum` of the first step from the initial state (loss, the sum and
absolute sum of the parameter update and of the new optimiser state in float64; DiffRS: of the
samples, and its integer counters); the
driver compares each two-process row with the one-process row at the same device count (same
global program, same data) and reports `checksum_equal` (floats to rtol 1e-5 - a signed sum
relative to its absolute sum -, integers exactly)
with `checksum_max_rel_diff`, and the two-process overhead (`overhead_ms`, `overhead_pct`,
`host_overhead_ms`).

`--rounds K` runs everything K times, alternating the one- and two-process workers, and reports
per row the median over rounds (`round_step_ms`, `round_host_ms`, `round_loadavg` list them): on
a shared machine the load drifts between the workers' runs, and alternation lets the drift hit
both sides of the comparison alike.

Output: JSON lines (one per (workload, processes, devices), `"bench": "scaling"`) on stdout and
in `--out FILE`; a Markdown table on stderr at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple

WORKLOADS = ("ddif_dm", "pixel_tm", "eval_train", "diffrs")
ITEMS = {
    "ddif_dm": "images embedded per step (C x (batch_real + instances per class))",
    "pixel_tm": "synthetic images through the student per step (syn_steps x batch_syn)",
    "eval_train": "training images per step (runs x batch)",
    "diffrs": "samples per call (pool slots B)",
}
FLOAT_RTOL = 1e-5
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")
PROGRESS = "[scaling]"


class Sizes(NamedTuple):
    """Per-device sizes of the workloads (weak scaling: the global size is these x devices)."""

    repeats: int
    # ddif_dm
    dm_width: int           # ConvNet embedding width
    dm_real_pd: int         # real images per class per device
    dm_inst_pd: int         # synthetic instances (fields) per class per device
    # pixel_tm
    tm_width: int
    tm_ipc_pd: int          # images per class per device
    tm_batch_pd: int        # batch_syn per device
    tm_syn_steps: int
    # eval_train
    ev_width: int
    ev_runs_pd: int         # runs per device
    ev_batch: int           # batch per run (the protocol's 256)
    # diffrs
    rs_denoiser: tuple      # `models.denoisers.denoiser_spec` model mapping, as items
    rs_disc_width: int
    rs_disc_depth: int
    rs_steps: int           # Karras steps (NFE of the base Heun sampler: 2 steps - 1)
    rs_slots_pd: int        # pool slots per device
    rs_warmup: int          # warm-up trajectories for the tables
    dsa: str = "auto"       # DSA strategy of ddif_dm, pixel_tm, eval_train ("auto": digits')


FULL = Sizes(repeats=7, dm_width=128, dm_real_pd=16, dm_inst_pd=1,
             tm_width=128, tm_ipc_pd=2, tm_batch_pd=16, tm_syn_steps=10,
             ev_width=128, ev_runs_pd=1, ev_batch=256,
             rs_denoiser=(("name", "unet"), ("base_channels", 32), ("channel_mult", (1, 2)),
                          ("num_blocks", 1), ("attention", True)),
             rs_disc_width=32, rs_disc_depth=2, rs_steps=18, rs_slots_pd=16, rs_warmup=64)
QUICK = Sizes(repeats=3, dm_width=16, dm_real_pd=4, dm_inst_pd=1,
              tm_width=16, tm_ipc_pd=1, tm_batch_pd=4, tm_syn_steps=2,
              ev_width=16, ev_runs_pd=1, ev_batch=32,
              rs_denoiser=(("name", "mlp"), ("hidden", 64), ("depth", 2), ("emb_dim", 32)),
              rs_disc_width=8, rs_disc_depth=1, rs_steps=4, rs_slots_pd=4, rs_warmup=8,
              dsa="none")


def _log(msg: str) -> None:
    print(f"{PROGRESS} {msg}", file=sys.stderr, flush=True)


# ============================================================================================
# Worker: builds and times the workloads on this process's view of the devices
# ============================================================================================


def _host(x) -> Any:
    """A (possibly multi-process) array on this host as numpy, without touching remote shards
    of replicated arrays; sharded arrays are gathered (a collective: call on every process)."""
    import numpy as np
    from jax.experimental import multihost_utils

    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_shards[0].data)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _put_rows(tree, mesh, sharded: Callable[[Any], bool]):
    """Place a host pytree on the mesh the multi-host way: every leaf goes through
    `jax.make_array_from_process_local_data`, each process passing only the rows its devices
    hold - the leading-axis block for leaves where `sharded(leaf)` holds (`sharding.
    local_batch_to_global`), the whole array for the replicated rest.

    (Not `jax.device_put` for the replicated leaves: in a multi-process run it first checks with
    a collective that every process passed equal values, and NaN != NaN - DDiF's `warmup_mse`
    without warm-up is all NaN - fails that check.)"""
    import jax
    import numpy as np

    from jaxdiff import sharding as shd

    bsh, rep = shd.batch_sharding(mesh), shd.replicated(mesh)

    def put(x):
        x = np.asarray(x)
        if not sharded(x):
            return jax.make_array_from_process_local_data(rep, x, x.shape)
        idx = bsh.addressable_devices_indices_map(x.shape)
        rows = sorted({(s[0].start or 0, x.shape[0] if s[0].stop is None else s[0].stop)
                       for s in idx.values()})
        lo, hi = rows[0][0], rows[-1][1]
        if sum(b - a for a, b in rows) != hi - lo:
            raise ValueError(f"this process's rows {rows} are not contiguous")
        return shd.local_batch_to_global(x[lo:hi], mesh)

    return jax.tree.map(put, tree)


def _instance_rule(n: int):
    """`Placement`'s rule (distill/placement.py): the leading (instance / run) axis is split over
    the mesh when it divides evenly, otherwise the array is replicated."""
    return lambda x: n > 1 and x.ndim > 0 and x.shape[0] % n == 0


def _tree_host_f64(tree) -> list:
    import numpy as np
    import jax

    return [np.asarray(_host(leaf), np.float64) for leaf in jax.tree.leaves(tree)]


def _delta_checksum(before: list, after_tree, opt_tree=None) -> dict:
    """Sum and absolute sum (float64) of the parameter update of the checked step and of the
    new optimiser state's float leaves (Adam's first update is nearly sign(g) * lr, so the
    update alone hardly depends on the gradient's values; its moments do)."""
    import numpy as np

    after = _tree_host_f64(after_tree)
    d = [a - b for a, b in zip(after, before)]
    out = {"update_sum": float(sum(np.sum(x) for x in d)),
           "update_abs_sum": float(sum(np.sum(np.abs(x)) for x in d))}
    if opt_tree is not None:
        import jax

        leaves = [x for x in jax.tree.leaves(opt_tree)
                  if np.issubdtype(np.dtype(x.dtype), np.floating)]
        o = _tree_host_f64(leaves)
        out.update(opt_sum=float(sum(np.sum(x) for x in o)),
                   opt_abs_sum=float(sum(np.sum(np.abs(x)) for x in o)))
    return out


class Built(NamedTuple):
    """One workload on one mesh, ready to time.

    `step(carry, args) -> (carry, out)` calls the compiled program; `feed(i) -> args` is the
    host-side work of iteration i; `check(carry0_host, carry1, out1) -> dict` the checksum of
    the first step; `before(carry) -> host copy` taken before the (donating) first step."""

    step: Callable
    feed: Callable
    carry: Any
    compile_s: float
    items: int
    sizes: dict
    before: Callable
    check: Callable


@functools.cache
def _digits_pool():
    from jaxdiff import data as jdata
    from jaxdiff.distill.real_pool import make_real_pool

    train = jdata.load("digits", "train", cache=False)  # no cache writes racing between workers
    info = train.info
    return train, info, make_real_pool(train.images, train.labels, info.num_classes, info.mean,
                                       info.std)


def build_ddif_dm(mesh, z: Sizes) -> Built:
    import jax
    import numpy as np

    from jaxdiff.distill import augment as dsa
    from jaxdiff.distill import dm
    from jaxdiff.distill.optim import make_optimizer
    from jaxdiff.distill.params import PARAM_GROUPS, get_parameterisation
    from jaxdiff.distill.params.neural_field import DDIF_PRESETS
    from jaxdiff.distill.placement import Placement
    from jaxdiff.distill.presets import optimizer_default
    from jaxdiff.distill.real_pool import real_batches
    from jaxdiff.models.classifiers import classifier_factory

    n = mesh.size
    train, info, pool = _digits_pool()
    batch_real, n_pc = z.dm_real_pd * n, z.dm_inst_pd * n
    if batch_real > pool.per_class:
        raise ValueError(f"batch_real {batch_real} > {pool.per_class} digits in the smallest "
                         "class; lower the per-device size")
    siren = DDIF_PRESETS[("cifar10", 1)]
    # An 8x8x1 image holds 64 floats, one CIFAR-10 IPC-1 field 67: budget 2 images per field.
    param = get_parameterisation("ddif", ipc=2 * n_pc, depth=siren.depth, width=siren.width,
                                 w0_initial=siren.w0_initial, w0=siren.w0, warmup_steps=0,
                                 instances_per_class=n_pc)
    k_init, k_loop = jax.random.split(jax.random.key(0), 3)[:2]
    # Initialisations are jitted (one compile instead of one per eager op: seconds on CPU).
    params, static = jax.jit(param.init)(k_init, pool.normalised())
    name, lr, momentum = optimizer_default("ddif", "dm")
    opt = make_optimizer(name, lr, momentum=momentum, groups=PARAM_GROUPS["ddif"])
    place = Placement(mesh)
    make_model = classifier_factory("convnet", info.image_shape, info.num_classes,
                                    width=z.dm_width)
    siamese = dsa.siamese_augment(dsa.strategy_for("digits", z.dsa))
    step = dm.make_dm_step(param, opt, make_model, siamese, batch_real=batch_real,
                           num_classes=info.num_classes, per_class=n_pc, place=place)
    state = jax.device_get(jax.jit(step.init)(params, k_loop))
    rule = _instance_rule(n)
    state = state._replace(params=_put_rows(state.params, mesh, rule),
                           opt=_put_rows(state.opt, mesh, rule),
                           key=_put_rows(state.key, mesh, lambda x: False))
    args = _put_rows((jax.device_get(static), np.asarray(pool.mean), np.asarray(pool.std)),
                     mesh, lambda x: False)
    # The real batches are read on the host every step (each process its share), as in a run.
    real = real_batches(pool, batch_real, k_loop, step.real_keys,
                       place.real_batches((1, info.num_classes, batch_real, *info.image_shape)))
    t0 = time.perf_counter()
    compiled = jax.jit(step.update, donate_argnums=0).lower(state, np.int32(0), *args,
                                                            *real(0)).compile()
    compile_s = time.perf_counter() - t0

    def check(before, carry, out):
        return {"loss": float(_host(out["loss"])),
                **_delta_checksum(before, carry.params, carry.opt)}

    return Built(step=lambda c, a: compiled(c, *a),
                 feed=lambda i: (np.int32(i), *args, *real(i)),
                 carry=state, compile_s=compile_s,
                 items=info.num_classes * (batch_real + n_pc),
                 sizes={"batch_real": batch_real, "instances_per_class": n_pc,
                        "instances": info.num_classes * n_pc, "convnet_width": z.dm_width,
                        "siren": [siren.depth, siren.width]},
                 before=lambda c: _tree_host_f64(c.params), check=check)


class _MemoryStore:
    """The part of `distill.experts.ExpertStore` that `tm.segment_feeder` reads, in memory:
    `len`, `completed()` and `segment(expert, epoch, length) -> (start, target)`."""

    def __init__(self, snapshots):  # [E, epochs + 1, P] float32
        self.snapshots = snapshots

    def __len__(self):
        return self.snapshots.shape[0]

    def completed(self):
        return list(range(len(self)))

    def segment(self, expert, epoch, length):
        return self.snapshots[expert, epoch], self.snapshots[expert, epoch + length]


def build_pixel_tm(mesh, z: Sizes) -> Built:
    import jax
    import numpy as np

    from jaxdiff.distill import augment as dsa
    from jaxdiff.distill import tm
    from jaxdiff.distill.optim import make_optimizer
    from jaxdiff.distill.params import PARAM_GROUPS, get_parameterisation
    from jaxdiff.distill.placement import Placement
    from jaxdiff.distill.presets import optimizer_default
    from jaxdiff.distill.trajectory import flat_student
    from jaxdiff.models.classifiers import classifier_factory

    n = mesh.size
    train, info, pool = _digits_pool()
    ipc, batch_syn = z.tm_ipc_pd * n, z.tm_batch_pd * n
    param = get_parameterisation("pixel", ipc=ipc, init="real")
    k_init, k_loop = jax.random.split(jax.random.key(0), 3)[:2]
    # Initialisations are jitted (one compile instead of one per eager op: seconds on CPU).
    params, static = jax.jit(param.init)(k_init, pool.normalised())
    name, lr, momentum = optimizer_default("pixel", "tm")
    opt = make_optimizer(name, lr, momentum=momentum, groups=PARAM_GROUPS["pixel"])
    place = Placement(mesh)
    student = flat_student(classifier_factory("convnet", info.image_shape, info.num_classes,
                                              width=z.tm_width), k_init)
    # Random "experts": 2 trajectories of 3 snapshots drifting from the student's init.
    rng = np.random.default_rng(0)
    p0 = np.asarray(student.init_flat, np.float32)
    snaps = p0 + np.cumsum(0.01 * rng.standard_normal((2, 3, p0.size)).astype(np.float32), 1)
    feeder = tm.segment_feeder(_MemoryStore(snaps.astype(np.float32)), max_start_epoch=1,
                               expert_epochs=2, seed=0, place=place)
    step = tm.make_tm_step(param, opt, student, dsa.per_sample_augment(
        dsa.strategy_for("digits", z.dsa)), syn_steps=z.tm_syn_steps, batch_syn=batch_syn,
        mode="remat", lr_lr=1e-5, lr_teacher=0.01, min_syn_lr=1e-3, place=place)
    state = jax.device_get(jax.jit(step.init)(params, k_loop))
    rule = _instance_rule(n)
    state = state._replace(params=_put_rows(state.params, mesh, rule),
                           opt=_put_rows(state.opt, mesh, rule),
                           **{f: _put_rows(getattr(state, f), mesh, lambda x: False)
                              for f in ("key", "syn_lr", "lr_opt")})
    (static_p,) = _put_rows((jax.device_get(static),), mesh, lambda x: False)
    seg = feeder(0)
    t0 = time.perf_counter()
    compiled = jax.jit(step.update, donate_argnums=0).lower(
        state, np.int32(0), static_p, *seg).compile()
    compile_s = time.perf_counter() - t0

    def check(before, carry, out):
        return {"loss": float(_host(out["loss"])), "syn_lr": float(_host(out["syn_lr"])),
                **_delta_checksum(before, carry.params, carry.opt)}

    return Built(step=lambda c, a: compiled(c, *a),
                 feed=lambda i: (np.int32(i), static_p, *feeder(i)),
                 carry=state, compile_s=compile_s, items=z.tm_syn_steps * batch_syn,
                 sizes={"ipc": ipc, "instances": info.num_classes * ipc, "batch_syn": batch_syn,
                        "syn_steps": z.tm_syn_steps, "convnet_width": z.tm_width,
                        "student_params": int(p0.size), "mode": "remat"},
                 before=lambda c: _tree_host_f64(c.params), check=check)


def make_eval_train_step(make_model, augment, *, n_train: int, batch_size: int,
                         momentum: float = 0.9, weight_decay: float = 5e-4):
    """`(init(keys [R]) -> state, update(state, step, train_x, train_y, lr) -> (state, metrics))`:
    step `step` of the evaluation protocol (`distill/evaluate.py`, epoch `step // S`, batch
    `step % S` of that epoch's permutation) for R independently initialised runs, vmapped.

    The same update as the protocol's inner step: DSA on the batch, masked cross-entropy
    (padding of the last batch weighted 0), coupled weight decay then momentum, `p -= lr * u`.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jaxdiff.batching import epoch_batches, num_batches
    from jaxdiff.models.functional import apply, init_pool, masked_cross_entropy

    tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum))
    steps_per_epoch = num_batches(n_train, batch_size)[0]
    graphdef_box = []

    def init(keys):
        init_keys, data_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        graphdef, params, rest = init_pool(make_model, init_keys, nnx.Param, ...)
        graphdef_box.append(graphdef)
        opt = jax.vmap(tx.init)(params)
        return (params, rest, opt, jax.random.key_data(data_keys))

    def one(params, rest, opt_state, data_key, step, train_x, train_y, lr):
        graphdef = graphdef_box[0]
        e, s = step // steps_per_epoch, step % steps_per_epoch
        ekey = jax.random.fold_in(jax.random.wrap_key_data(data_key), e)
        idx, wts = epoch_batches(jax.random.fold_in(ekey, 0), n_train, batch_size)
        x = train_x[idx[s]]
        if augment is not None:
            x = augment(jax.random.fold_in(ekey, s + 1), x)

        def loss_fn(params, rest):
            logits, (_, new_rest) = apply(graphdef, (params, rest), x)
            return masked_cross_entropy(logits, train_y[idx[s]], wts[s]), new_rest

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
        return params, rest, opt_state, loss

    def update(state, step, train_x, train_y, lr):
        params, rest, opt, keys = state
        params, rest, opt, loss = jax.vmap(one, in_axes=(0, 0, 0, 0, None, None, None, None))(
            params, rest, opt, keys, step, train_x, train_y, lr)
        return (params, rest, opt, keys), {"loss": jnp.mean(loss), "loss_runs": loss}

    return init, update


def build_eval_train(mesh, z: Sizes) -> Built:
    import jax
    import numpy as np

    from jaxdiff import data as jdata
    from jaxdiff.distill import augment as dsa
    from jaxdiff.models.classifiers import classifier_factory
    from jaxdiff.random import sample_keys

    n = mesh.size
    train, info, _ = _digits_pool()
    runs = z.ev_runs_pd * n
    make_model = classifier_factory("convnet", info.image_shape, info.num_classes,
                                    width=z.ev_width)
    augment = dsa.per_sample_augment(dsa.strategy_for("digits", z.dsa))
    init, update = make_eval_train_step(make_model, augment, n_train=len(train.labels),
                                        batch_size=z.ev_batch)
    state = jax.device_get(init(sample_keys(jax.random.key(0), runs)))
    state = _put_rows(state, mesh, _instance_rule(n))
    args = _put_rows((np.asarray(jdata.normalize(train.images, info), np.float32),
                      np.asarray(train.labels, np.int32), np.float32(0.01)), mesh,
                     lambda x: False)
    t0 = time.perf_counter()
    compiled = jax.jit(update, donate_argnums=0).lower(state, np.int32(0), *args).compile()
    compile_s = time.perf_counter() - t0

    def check(before, carry, out):
        return {"loss": float(_host(out["loss"])),
                **_delta_checksum(before, carry[0], carry[2])}

    return Built(step=lambda c, a: compiled(c, *a), feed=lambda i: (np.int32(i), *args),
                 carry=state, compile_s=compile_s, items=runs * z.ev_batch,
                 sizes={"runs": runs, "batch": z.ev_batch, "n_train": int(len(train.labels)),
                        "convnet_width": z.ev_width},
                 before=lambda c: _tree_host_f64(c[0]), check=check)


@functools.cache
def _diffrs_models(z: Sizes) -> dict:
    """The denoiser and discriminator (random init, jitted: eager NNX init costs seconds on CPU),
    their sampler callables, the sigma grid and the tables - on this process's first device,
    identical in every process and for every mesh."""
    import jax
    import numpy as np
    from flax import nnx

    from jaxdiff.diffusion import discriminator as D
    from jaxdiff.diffusion import rejection as R
    from jaxdiff.diffusion import schedules
    from jaxdiff.diffusion.saved import build_discriminator, discriminator_spec
    from jaxdiff.diffusion.train import nnx_denoiser
    from jaxdiff.models.denoisers import build_denoiser, denoiser_spec
    from jaxdiff.models.functional import init_pool

    shape = (8, 8, 1)
    dspec = denoiser_spec(dict(z.rs_denoiser), shape, 0)
    cspec = discriminator_spec(extractor="none", width=z.rs_disc_width, depth=z.rs_disc_depth,
                               emb_dim=32, num_classes=0, image_shape=shape, dataset="digits",
                               image_size=8)
    first = lambda t: jax.device_get(jax.tree.map(lambda a: a[0], t))  # noqa: E731
    gd, *dn = init_pool(lambda r: build_denoiser(dspec, r), jax.random.key(1)[None],
                        nnx.Param, ...)
    dgd, *dc = init_pool(lambda r: build_discriminator(cspec, r), jax.random.key(2)[None],
                         D.head_filter, ...)
    sigma_data = 0.75  # configs/train_denoiser_digits.py

    def make_denoise(st):
        return nnx_denoiser(gd, st[0], st[1], sigma_data)

    def make_logit(st):
        return D.logit_fn(dgd, st[0], st[1])

    dn, dc = first(tuple(dn)), first(tuple(dc))
    sigmas = schedules.karras_sigmas(z.rs_steps, 0.002, 80.0, 7.0)
    logits = jax.jit(lambda a, b: R.warmup_logits(
        make_denoise(a), make_logit(b), sigmas, jax.random.key(0), z.rs_warmup, shape))(dn, dc)
    tab = jax.device_get(R.rejection_tables(logits, 0.75))
    return {"make_denoise": make_denoise, "make_logit": make_logit, "sigmas": sigmas,
            "denoiser": dn, "disc": dc, "log_m": np.asarray(tab.log_m),
            "log_m_prime": np.asarray(tab.log_m_prime)}


def build_diffrs(mesh, z: Sizes) -> Built:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff import sharding as shd
    from jaxdiff.diffusion import rejection as R

    n = mesh.size
    shape = (8, 8, 1)
    b = z.rs_slots_pd * n
    m = _diffrs_models(z)
    make_denoise, make_logit, sigmas = m["make_denoise"], m["make_logit"], m["sigmas"]
    max_iter = 3 * (2 * z.rs_steps - 1)  # the reference's CIFAR-10 budget: 3 x base NFE
    bsh = shd.batch_sharding(mesh)

    def run(dn, ds, log_m, log_mp, key_data, offset):
        key = jax.random.wrap_key_data(key_data)
        x, info = R.diffrs_sample(make_denoise(dn), make_logit(ds), sigmas,
                                  R.DiffRSTables(log_m, log_mp), key, num_samples=b,
                                  batch_size=b, sample_shape=shape, max_iter=max_iter,
                                  offset=offset, sharding=bsh)
        return x, {"algorithmic_nfe": info.algorithmic_nfe, "executed_nfe": info.executed_nfe,
                   "rounds": info.rounds, "restarts": info.restarts, "complete": info.complete}

    consts = _put_rows((m["denoiser"], m["disc"], m["log_m"], m["log_m_prime"],
                        np.asarray(jax.random.key_data(jax.random.key(3)))), mesh,
                       lambda x: False)
    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(*consts, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t0

    def check(before, carry, out):
        x, info = out
        xh = np.asarray(_host(x), np.float64)
        return {"sample_sum": float(xh.sum()), "sample_abs_sum": float(np.abs(xh).sum()),
                **{k: int(_host(v)) for k, v in info.items()}}

    def step(carry, args):
        return carry, compiled(*carry, *args)

    return Built(step=step, feed=lambda i: (np.int32(i * b),), carry=consts,
                 compile_s=compile_s, items=b,
                 sizes={"batch_size": b, "num_samples": b, "steps": z.rs_steps,
                        "base_nfe": 2 * z.rs_steps - 1, "max_iter": max_iter,
                        "denoiser": dict(z.rs_denoiser)["name"], "warmup": z.rs_warmup,
                        "gamma": 0.75},
                 before=lambda c: None, check=check)


BUILDERS = {"ddif_dm": build_ddif_dm, "pixel_tm": build_pixel_tm, "eval_train": build_eval_train,
            "diffrs": build_diffrs}


def time_built(w: Built, repeats: int) -> dict:
    """Check step, warm-up step, `repeats` blocked iterations, then `repeats` pipelined ones."""
    import jax

    before = w.before(w.carry)
    carry, out = w.step(w.carry, w.feed(0))
    checksum = w.check(before, carry, out)
    carry, out = w.step(carry, w.feed(1))
    jax.block_until_ready((carry, out))
    step_s, host_s, disp_s, feed_s = [], [], [], []
    for i in range(2, 2 + repeats):
        t0 = time.perf_counter()
        args = w.feed(i)
        t1 = time.perf_counter()
        carry, out = w.step(carry, args)
        t2 = time.perf_counter()
        jax.block_until_ready((carry, out))
        t3 = time.perf_counter()
        step_s.append(t3 - t0)
        host_s.append(t2 - t0)
        disp_s.append(t2 - t1)
        feed_s.append(t1 - t0)
    outs = []
    t0 = time.perf_counter()
    for i in range(2 + repeats, 2 + 2 * repeats):
        carry, out = w.step(carry, w.feed(i))
        outs.append(out)
    jax.block_until_ready((carry, outs))
    pipelined = (time.perf_counter() - t0) / repeats
    q = statistics.quantiles(step_s, n=4) if len(step_s) >= 2 else [step_s[0]] * 3
    med = statistics.median
    return {"step_s": med(step_s), "step_iqr_s": q[2] - q[0], "step_min_s": min(step_s),
            "host_s": med(host_s), "dispatch_s": med(disp_s), "feed_s": med(feed_s),
            "pipelined_step_s": pipelined, "checksum": checksum, "times_s": step_s}


def worker(args) -> int:
    """One process of a measurement: joins the distributed runtime when there are several,
    then builds and times every (workload, device count); process 0 prints JSON lines."""
    import jax

    nproc, pid = args.num_processes, args.process_id
    if nproc > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}",
                                   num_processes=nproc, process_id=pid,
                                   initialization_timeout=60)
    import numpy as np
    from jax.experimental import multihost_utils

    from benchmarks.common import environment
    from jaxdiff import sharding as shd

    z = QUICK if args.quick else FULL
    repeats = args.repeats or z.repeats
    devices = [int(d) for d in args.devices.split(",")] if nproc == 1 else [jax.device_count()]
    env = environment()
    for name in args.workloads.split(","):
        for n in devices:
            mesh = shd.data_mesh(n)
            t0 = time.perf_counter()
            w = BUILDERS[name](mesh, z)
            build_s = time.perf_counter() - t0
            _log(f"{name}: {nproc} process(es) x {n // nproc} device(s): built in {build_s:.1f} s "
                 f"(compile {w.compile_s:.1f} s); timing {repeats} steps")
            t = time_built(w, repeats)
            per = np.array([t["step_s"], t["host_s"], t["dispatch_s"]], np.float64)
            if nproc > 1:
                per = np.asarray(multihost_utils.process_allgather(per))  # [P, 3]
            per = per.reshape(nproc, 3)
            row = {
                "bench": "scaling", "workload": name, "processes": nproc, "devices": n,
                "devices_per_process": n // nproc, "item": ITEMS[name],
                "items_per_step": w.items, **w.sizes,
                "compile_s": round(w.compile_s, 2), "repeats": repeats,
                "step_ms": round(1e3 * t["step_s"], 3),
                "step_iqr_ms": round(1e3 * t["step_iqr_s"], 3),
                "step_min_ms": round(1e3 * t["step_min_s"], 3),
                "items_per_s": round(w.items / t["step_s"], 2),
                "items_per_s_per_device": round(w.items / t["step_s"] / n, 2),
                "host_ms": round(1e3 * t["host_s"], 3),
                "host_fraction": round(t["host_s"] / t["step_s"], 4),
                "dispatch_ms": round(1e3 * t["dispatch_s"], 3),
                "feed_ms": round(1e3 * t["feed_s"], 3),
                "pipelined_step_ms": round(1e3 * t["pipelined_step_s"], 3),
                "step_ms_per_process": [round(1e3 * float(v), 3) for v in per[:, 0]],
                "host_ms_per_process": [round(1e3 * float(v), 3) for v in per[:, 1]],
                "times_ms": [round(1e3 * v, 3) for v in t["times_s"]],
                "checksum": t["checksum"],
            }
            if pid == 0:
                print(json.dumps({**row, "env": env}), flush=True)
            del w
    return 0


# ============================================================================================
# Driver: spawns the workers, compares 2-process rows with 1-process rows, writes the output
# ============================================================================================


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_env(devices_per_process: int, fast_compile: bool = False) -> dict:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    if fast_compile:
        flags = " ".join([flags, *FAST_COMPILE_FLAGS])
    env["XLA_FLAGS"] = f"{flags.strip()} --xla_force_host_platform_device_count=" \
                       f"{devices_per_process}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = str(devices_per_process)  # tests' conftest sets 8
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_workers(jobs: list[tuple[list[str], dict]], timeout_s: float,
                leaders: tuple[int, ...] = (0,)) -> list[str]:
    """Start every `(command, environment)` of `jobs` at once; return the JSON lines the
    `leaders` (indices into `jobs`) printed, and forward their progress lines to stderr as they
    come. If any job fails or the timeout passes, every job still running is killed with SIGKILL
    (a process blocked in a collective ignores SIGTERM) and RuntimeError is raised with the tail
    of each one's stderr."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="scaling_") as tmp:
        outs = [open(os.path.join(tmp, f"out{i}"), "w+") for i in range(len(jobs))]
        errs = [open(os.path.join(tmp, f"err{i}"), "w+") for i in range(len(jobs))]
        procs = [subprocess.Popen(cmd, stdout=o, stderr=e, env=env, cwd=root)
                 for (cmd, env), o, e in zip(jobs, outs, errs)]
        deadline, failure = time.monotonic() + timeout_s, None
        pos = dict.fromkeys(leaders, 0)
        try:
            while True:
                for i in leaders:  # forward the leaders' progress lines
                    with open(errs[i].name) as f:
                        f.seek(pos[i])
                        chunk = f.read()
                    chunk = chunk[:chunk.rfind("\n") + 1]
                    pos[i] += len(chunk.encode())
                    for line in chunk.splitlines():
                        if line.startswith(PROGRESS):
                            print(line, file=sys.stderr, flush=True)
                codes = [p.poll() for p in procs]
                if any(c not in (None, 0) for c in codes):
                    failure = f"worker exited with status {codes}"
                    break
                if all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    failure = f"timeout after {timeout_s:.0f} s"
                    break
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for f in outs + errs:
                f.close()
        if failure:
            tails = []
            for i, e in enumerate(errs):
                with open(e.name) as f:
                    lines = [ln for ln in f.read().splitlines() if not ln.startswith("[Gloo]")]
                tails.append(f"--- worker {i}: {' '.join(jobs[i][0])}\n" + "\n".join(lines[-30:]))
            raise RuntimeError(f"{failure}\n" + "\n".join(tails))
        lines = []
        for i in leaders:
            with open(outs[i].name) as f:
                lines += [ln for ln in f.read().splitlines() if ln.startswith("{")]
        return lines


def compare_checksums(a: dict, b: dict, rtol: float = FLOAT_RTOL) -> tuple[bool, float]:
    """(equal, max relative difference of the floats): floats to `rtol`, integers exactly.

    A signed sum `<x>_sum` is compared relative to its absolute sum `<x>_abs_sum` when the
    checksum has one: the terms of an update nearly cancel, so ulp-level differences of the
    terms (another reduction order in the cross-process all-reduce) would otherwise show as
    large relative differences of the small total."""
    if set(a) != set(b):
        return False, float("inf")
    ok, worst = True, 0.0
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, int) and isinstance(y, int):
            ok &= x == y
            continue
        abs_key = k[: -len("_sum")] + "_abs_sum" if k.endswith("_sum") else None
        scale = max(abs(x), abs(y), abs(a.get(abs_key, 0.0)) if abs_key else 0.0, 1e-30)
        rel = abs(x - y) / scale
        worst = max(worst, rel)
        ok &= rel <= rtol
    return bool(ok), worst


def merge_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One row per (workload, processes, devices) from several rounds: timing fields are the
    median over rounds (`step_min_ms` the minimum), throughputs recomputed from the median step,
    `round_step_ms` / `round_host_ms` list each round's; the checksums must agree (the same
    deterministic first step every round)."""
    if len(rounds) == 1:
        return rounds[0]
    med = statistics.median
    merged = []
    for first in rounds[0]:
        key = (first["workload"], first["processes"], first["devices"])
        same = [r for rows in rounds for r in rows
                if (r["workload"], r["processes"], r["devices"]) == key]
        for r in same[1:]:
            if not compare_checksums(first["checksum"], r["checksum"])[0]:
                raise RuntimeError(f"{key}: the checked step differs between rounds: "
                                   f"{first['checksum']} vs {r['checksum']}")
        m = dict(first)
        for f in ("step_ms", "step_iqr_ms", "host_ms", "dispatch_ms", "feed_ms",
                  "pipelined_step_ms", "compile_s"):
            m[f] = round(med([r[f] for r in same]), 3)
        m["step_min_ms"] = min(r["step_min_ms"] for r in same)
        for f in ("step_ms_per_process", "host_ms_per_process"):
            m[f] = [round(med(v), 3) for v in zip(*(r[f] for r in same))]
        m["items_per_s"] = round(m["items_per_step"] / (m["step_ms"] / 1e3), 2)
        m["items_per_s_per_device"] = round(m["items_per_s"] / m["devices"], 2)
        m["host_fraction"] = round(m["host_ms"] / m["step_ms"], 4)
        m["times_ms"] = [t for r in same for t in r["times_ms"]]
        m["rounds"] = len(same)
        m["round_step_ms"] = [r["step_ms"] for r in same]
        m["round_host_ms"] = [r["host_ms"] for r in same]
        m["round_loadavg"] = [r["env"]["loadavg"][0] for r in same]
        merged.append(m)
    return merged


def add_comparisons(rows: list[dict]) -> list[dict]:
    """Two-process rows: overhead and checksum against the one-process row at the same device
    count; every row: per-device throughput relative to the same workload on one device."""
    single = {(r["workload"], r["devices"]): r for r in rows if r["processes"] == 1}
    for r in rows:
        one = single.get((r["workload"], 1))
        if one is not None:
            r["per_device_throughput_vs_1_device"] = round(
                r["items_per_s_per_device"] / one["items_per_s_per_device"], 3)
        if r["processes"] == 1:
            continue
        s = single.get((r["workload"], r["devices"]))
        if s is None:
            continue
        eq, worst = compare_checksums(s["checksum"], r["checksum"])
        r["single_process_step_ms"] = s["step_ms"]
        r["overhead_ms"] = round(r["step_ms"] - s["step_ms"], 3)
        r["overhead_pct"] = round(100.0 * (r["step_ms"] / s["step_ms"] - 1.0), 1)
        r["host_overhead_ms"] = round(r["host_ms"] - s["host_ms"], 3)
        r["checksum_equal"] = eq
        r["checksum_max_rel_diff"] = worst
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ("| workload | proc x dev/proc | devices | items/step | step ms (IQR) | items/s/device "
            "| vs 1 dev | host ms (frac) | dispatch ms | pipelined ms | 2-proc overhead | "
            "checksum |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        over = (f"{r['overhead_ms']:+.1f} ms ({r['overhead_pct']:+.0f} %)"
                if "overhead_ms" in r else "")
        check = ("equal" if r.get("checksum_equal") else "DIFFERS") if "checksum_equal" in r \
            else ""
        lines.append(
            f"| {r['workload']} | {r['processes']} x {r['devices_per_process']} | {r['devices']} "
            f"| {r['items_per_step']} | {r['step_ms']:.1f} ({r['step_iqr_ms']:.1f}) "
            f"| {r['items_per_s_per_device']:.1f} "
            f"| {r.get('per_device_throughput_vs_1_device', '')} "
            f"| {r['host_ms']:.2f} ({r['host_fraction']:.3f}) | {r['dispatch_ms']:.2f} "
            f"| {r['pipelined_step_ms']:.1f} | {over} | {check} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats")
    ap.add_argument("--devices", default="1,2,4,8", help="device counts of the 1-process rows")
    ap.add_argument("--processes", default="1,2",
                    help="1 and/or 2; 2 runs 2 processes x max(devices)/2 devices each")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=0, help="default 7 (--quick: 3)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="seconds per worker group before SIGKILL (default 3600, --quick 300)")
    ap.add_argument("--out", default="", help="also write the JSON lines to this file")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run everything this many times, alternating the 1- and 2-process "
                         "workers, and report medians over rounds (load drift on a shared "
                         "machine then hits both alike)")
    ap.add_argument("--concurrent", action="store_true",
                    help="run the 1-process worker and the 2 processes at the same time: "
                         "faster on few cores, but they disturb each other's timings (tests)")
    ap.add_argument("--fast-compile", action="store_true",
                    help="workers compile with XLA:CPU's backend optimisation off (%s): about "
                         "2x faster compiles, slower programs - for tests, not for figures"
                         % " ".join(FAST_COMPILE_FLAGS))
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        try:
            return worker(a)
        except BaseException:  # noqa: BLE001 - report, then leave at once
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            # A normal exit would run jax.distributed's shutdown, which waits for the other
            # process, which waits in a collective for this one: leave without it.
            os._exit(1)

    devices = sorted({int(d) for d in a.devices.split(",")})
    processes = sorted({int(p) for p in a.processes.split(",")})
    workloads = [w for w in a.workloads.split(",") if w]
    bad = sorted(set(workloads) - set(WORKLOADS))
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {list(WORKLOADS)}")
    if not set(processes) <= {1, 2}:
        ap.error("--processes: 1 and/or 2")
    total = max(devices)
    if 2 in processes and total % 2:
        ap.error(f"2 processes need an even device count, max(--devices) is {total}")
    timeout = a.timeout or (300.0 if a.quick else 3600.0)
    base = [sys.executable, "-m", "benchmarks.scaling", "--worker",
            "--workloads", ",".join(workloads)] + (["--quick"] if a.quick else []) \
        + (["--repeats", str(a.repeats)] if a.repeats else [])
    def groups():  # (jobs, leaders): one process, then the two processes (a fresh port)
        out = []
        if 1 in processes:
            out.append(([(base + ["--devices", ",".join(map(str, devices))],
                          _worker_env(total, a.fast_compile))], (0,)))
        if 2 in processes:
            port = _free_port()
            out.append(([(base + ["--num-processes", "2", "--process-id", str(i), "--port",
                                  str(port)], _worker_env(total // 2, a.fast_compile))
                         for i in range(2)], (0,)))
        if a.concurrent and len(out) == 2:
            out = [(out[0][0] + out[1][0], (0, 1))]
        return out

    rounds: list[list[dict]] = []
    t_start = time.perf_counter()
    for r in range(a.rounds):
        if a.rounds > 1:
            _log(f"round {r + 1} of {a.rounds}")
        rows = []
        for jobs, leaders in groups():
            rows += [json.loads(ln) for ln in run_workers(jobs, timeout, leaders)]
        rounds.append(rows)
    rows = merge_rounds(rounds)
    rows = add_comparisons(rows)
    out = open(a.out, "w") if a.out else None
    try:
        for r in rows:
            line = json.dumps(r)
            print(line, flush=True)
            if out:
                print(line, file=out, flush=True)
    finally:
        if out:
            out.close()
    print(markdown_table(rows), file=sys.stderr)
    print(f"{PROGRESS} done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
    failed = [r for r in rows if r.get("checksum_equal") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
