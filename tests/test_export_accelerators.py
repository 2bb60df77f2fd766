"""Every command's compiled hot path lowers for TPU and CUDA, checked on a CPU-only machine.

What is checked. Each jitted program a command runs on its accelerator (the distillation steps,
expert training, the evaluation protocol, the selection computations, denoiser and discriminator
training, every sampler) is exported with `jax.export` for platform "tpu" and for "cuda", from
abstract arguments (`jax.ShapeDtypeStruct`: nothing is compiled or run). A program passes when
its jaxpr holds no host-callback primitive, the export succeeds, and every `custom_call` target
in the exported StableHLO is one the accelerator itself implements (`ALLOWED_TARGETS`:
partitioning markers, the platform's own linear algebra and random bits).

Why. This machine has no accelerator, so the rest of the suite only ever lowers for CPU. Two
kinds of code work there and fail (or silently fall back to the host) on a TPU or GPU:
host callbacks (`jax.debug.callback`, `io_callback`, `pure_callback`: a round trip to Python
per call inside a hot loop, and not exportable at all) and CPU-only custom calls (LAPACK
`lapack_*`, XLA:CPU kernels). Lowering for another platform does not need its hardware, so both
are caught here; `jaxdiff.ops.conv`'s "auto" convolution, which picks its CPU formulation with
`lax.platform_dependent`, is lowered through its accelerator branch.

How the programs are obtained. Each is built the way its command builds it: the distillation
steps by `pipelines.distill.build` from a resolved tiny spec (TM over a small expert store of
zeros written here), the rest from the library factories the pipelines call, with tiny models.
Programs that factories jit internally (the evaluation protocol, selection features, the batch
samplers' phases, the quality net's training loop, `select.methods.run_classes`) are taken with
`capture_programs`: while it is active, `jax.jit` records each program with the arguments of its
first call and returns ones of the output shapes instead of running it, so the host-side code
between calls proceeds without computing anything.

Progress output: the evaluation protocol's progress bar is a `jax.debug.callback` per epoch; the
commands run it with progress off on the device, which is what is exported, and
`test_evaluation_progress_callback_is_flagged` shows the check rejects it when it is on. The
negative controls show the check rejects each kind of host callback and a CPU-only custom call.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from typing import Any, Callable, NamedTuple
from unittest import mock

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import io_callback

from jaxdiff import sharding as shd
from jaxdiff.config_utils import build_config
from jaxdiff.diffusion import batch_samplers as BS
from jaxdiff.diffusion import discriminator as D
from jaxdiff.diffusion import quality_net as QN
from jaxdiff.diffusion import reward_samplers as RS
from jaxdiff.diffusion import saved, schedules
from jaxdiff.diffusion.train import (LoopState, denoiser_optimizer, init_train_state,
                                     make_loop_step)
from jaxdiff.distill import augment as dsa
from jaxdiff.distill.evaluate import train_and_test
from jaxdiff.distill.experts import ExpertStore, expert_data, make_expert_trainer, param_layout
from jaxdiff.models.convnet import convnet_depth_for
from jaxdiff.models.denoisers import build_denoiser, denoiser_spec
from jaxdiff.models.quality_classifier import QualityClassifier
from jaxdiff.pipelines import distill as distill_pipeline
from jaxdiff.pipelines.experts import store_meta
from jaxdiff.select import methods as M
from jaxdiff.select.pretrain import (extract_features, init_pretrain_state, make_pretrain_step,
                                     pretrain_optimizer, pretrain_rows)
from jaxdiff.specs import distill as distill_spec
from jaxdiff.specs import experts as experts_spec
from jaxdiff.specs import select as select_spec

from tests.helpers import tiny_distill_config

PLATFORMS = ("tpu", "cuda")

# custom_call targets an accelerator implements itself. Anything else (host callbacks
# `xla_python_*` / `xla_ffi_python_*`, LAPACK `lapack_*`, other CPU kernels) fails the check.
_PARTITIONING = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape",
                 "annotate_device_placement"}
ALLOWED_TARGETS = {
    "tpu": _PARTITIONING | {"Eigh", "Qr", "ProductOfElementaryHouseholderReflectors",
                            "LuDecomposition", "ApproxTopK"},
    "cuda": _PARTITIONING | {"cu_threefry2x32_ffi", "cu_lu_pivots_to_permutation",
                             "cusolver_getrf_ffi", "cusolver_geqrf_ffi", "cusolver_orgqr_ffi",
                             "cusolver_potrf_ffi", "cusolver_syevd_ffi", "cusolver_gesvd_ffi",
                             "cusolver_gesvdj_ffi", "cusolver_sytrd_ffi", "cusparse_gtsv2_ffi"},
}
_CUSTOM_CALL = re.compile(r'custom_call\s*@([\w$.\-]+)|call_target_name\s*=\s*"([^"]+)"')


# ------------------------------------------------------------------------------ the check
class NotPortable(Exception):
    """A program that does not lower for an accelerator, or lowers to host/CPU-only calls."""


class Program(NamedTuple):
    """A jitted function and the (concrete) arguments it is called with."""

    fn: Callable
    args: tuple
    kwargs: dict = {}


def abstract(tree):
    """Arrays -> `ShapeDtypeStruct` (keeping a mesh sharding); other leaves (Python numbers,
    static arguments) unchanged."""
    def leaf(x):
        if isinstance(x, (jax.Array, np.ndarray, np.generic)):
            sh = getattr(x, "sharding", None)
            sh = sh if isinstance(sh, jax.sharding.NamedSharding) else None
            return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sh)
        return x
    return jax.tree.map(leaf, tree)


def custom_call_targets(exported) -> set[str]:
    return {a or b for a, b in _CUSTOM_CALL.findall(exported.mlir_module())}


def _primitive_names(jaxpr):
    """Names of every primitive in `jaxpr` and its sub-jaxprs (loops, conds, custom rules)."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _primitive_names(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _primitive_names(sub)


def host_callbacks(program: Program) -> set[str]:
    """The host-callback primitives (`debug_callback`, `pure_callback`, `io_callback`) the
    program's jaxpr contains."""
    traced = program.fn.trace(*abstract(program.args), **abstract(program.kwargs))
    return {n for n in _primitive_names(traced.jaxpr.jaxpr) if "callback" in n}


def check_portable(program: Program, platform: str) -> set[str]:
    """Export `program` for `platform`; NotPortable when it holds a host callback, when the
    export fails, or when the module calls a target the accelerator does not implement.
    Returns the custom_call targets seen.

    The callback scan names the culprit; jax would refuse it anyway (on a machine without the
    platform its callback lowering raises "the platform for the specified backend cpu is
    different from the lowering platform"; with it, export refuses host callbacks)."""
    callbacks = host_callbacks(program)
    if callbacks:
        raise NotPortable(f"host callbacks {sorted(callbacks)} in a program for {platform}")
    try:
        exported = jax.export.export(program.fn, platforms=(platform,))(
            *abstract(program.args), **abstract(program.kwargs))
    except Exception as e:  # noqa: BLE001 - any failure to lower is the finding
        raise NotPortable(f"does not lower for {platform}: {type(e).__name__}: {e}") from e
    targets = custom_call_targets(exported)
    bad = sorted(targets - ALLOWED_TARGETS[platform])
    if bad:
        raise NotPortable(f"lowered for {platform} with host or CPU-only custom calls {bad}")
    return targets


# ------------------------------------------------------------------------------ capturing
def _is_traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _ones_like(info):
    return jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), info)


def _recording(jitted, name: str, calls: list):
    """`jitted`, recording its first top-level call in `calls` as `(name, Program)` and returning
    ones of the output shapes instead of running it. Calls from inside another trace (one
    captured program calling another) go through unchanged."""
    recorded = []

    @functools.wraps(jitted)
    def call(*args, **kwargs):
        if _is_traced((args, kwargs)):
            return jitted(*args, **kwargs)
        if not recorded:
            recorded.append(True)
            calls.append((name, Program(jitted, args, kwargs)))
        return _ones_like(jitted.trace(*args, **kwargs).out_info)
    return call


@contextlib.contextmanager
def capture_programs(*existing: tuple[Any, str]):
    """Record the programs jitted while the block runs (`jax.jit(f)` calls) and the calls of the
    already-jitted module attributes `existing` ((module, name) pairs); yields the list of
    `(name, Program)` in call order. Nothing recorded is compiled or run (see `_recording`)."""
    calls: list = []
    real_jit = jax.jit

    def jit(fun=None, /, **options):
        if fun is None:  # @jax.jit(...) used as a decorator factory
            return lambda f: jit(f, **options)
        name = getattr(fun, "__name__", None) or getattr(getattr(fun, "func", None),
                                                          "__name__", repr(fun))
        return _recording(real_jit(fun, **options), name, calls)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(jax, "jit", jit))
        for module, attr in existing:
            stack.enter_context(mock.patch.object(
                module, attr, _recording(getattr(module, attr), attr, calls)))
        yield calls


def _named(calls, expected: dict[str, str]) -> dict[str, Program]:
    """`{case name: program}` from captured `(function name, program)` pairs; `expected` maps
    function names to case names and must match the captured names exactly (a new or vanished
    jitted program of a factory fails here rather than going unexported)."""
    got = [n for n, _ in calls]
    assert sorted(got) == sorted(expected), f"captured programs {got}, expected {list(expected)}"
    return {expected[n]: p for n, p in calls}


# ------------------------------------------------------------------------------ tiny models
# Models are built abstractly (`nnx.eval_shape`: no initialiser runs, which for the U-Net alone
# would take seconds of eager compiles); where a factory places arrays on the mesh itself, they
# are zeros of those shapes.
DIGITS = (8, 8, 1)


def split_abstract(make: Callable[[], nnx.Module], *filters):
    """`nnx.split(make(), *filters)` with `ShapeDtypeStruct` leaves, without initialising."""
    return nnx.split(nnx.eval_shape(make), *filters)


def zeros(tree):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def replicated(tree, mesh):
    """Abstract arrays of `tree` placed (abstractly) on every device of `mesh`."""
    sh = shd.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree)


def untrained_quality_net() -> QN.QualityNet:
    """A quality net of the digits shape, zero weights (only its program matters here)."""
    spec = QN.QualityNetSpec("digits", image_size=8, width=8, feature_dim=16)
    graphdef, params, rest = split_abstract(lambda: QualityClassifier(
        nnx.Rngs(0), in_channels=1, num_classes=10, image_size=8, depth=convnet_depth_for(8),
        width=8, feature_dim=16), nnx.Param, ...)
    return QN.QualityNet(graphdef, zeros(params), zeros(rest), spec, 10, 0.0)


@contextlib.contextmanager
def quality_net_stub():
    """`get_quality_net` (which trains and caches a net) replaced by `untrained_quality_net`."""
    net = untrained_quality_net()
    with mock.patch.object(RS, "get_quality_net", lambda *a, **k: net), \
            mock.patch.object(saved, "get_quality_net", lambda *a, **k: net):
        yield net


def unet_spec(num_classes: int = 0) -> dict:
    """A small U-Net denoiser (2 resolutions, attention) for 8x8 digits."""
    return denoiser_spec({"name": "unet", "base_channels": 8, "channel_mult": (1, 2),
                          "num_blocks": 1, "attention": True}, DIGITS, num_classes)


def tiny_denoiser() -> saved.TrainedDenoiser:
    """The U-Net as `saved.load_model` returns it, with abstract parameters."""
    spec = unet_spec()
    graphdef, params, rest = split_abstract(lambda: build_denoiser(spec, nnx.Rngs(0)),
                                            nnx.Param, ...)
    return saved.TrainedDenoiser(graphdef, params, params, rest,
                                 {**spec, "sigma_data": 0.75, "dataset": "digits",
                                  "image_size": 8, "step": 0})


def disc_spec(extractor: str) -> dict:
    return saved.discriminator_spec(extractor=extractor, width=8, depth=1, emb_dim=16,
                                    num_classes=0, image_shape=DIGITS, dataset="digits",
                                    image_size=8)


# ------------------------------------------------------------------------------ builders
# Each builder returns {case name: Program, or a function returning it} for one group of cases.

def _distill_programs(tmp) -> dict[str, Callable[[], Program]]:
    """`pipelines.distill.build`'s jitted step of each variant (lazily: one build per variant,
    so a test worker builds only the variants it exports)."""
    buffer_dir = str(tmp / "experts")
    tm = {"loss.tm.buffer_dir": buffer_dir, "loss.tm.syn_steps": 3, "loss.tm.expert_epochs": 1,
          "loss.tm.max_start_epoch": 2, "loss.tm.lr_lr": 1e-3, "loss.tm.batch_syn": 8,
          "opt.name": "sgd"}
    dc = {"loss.dc.outer": 2, "loss.dc.inner": 1, "loss.dc.batch_train": 8}
    variants = {}
    for param in ("pixel", "fred", "ddif"):
        variants[f"distill/dm/{param}"] = {"param.name": param, "loss.name": "dm"}
        variants[f"distill/dc/{param}"] = {"param.name": param, "loss.name": "dc", **dc}
        variants[f"distill/tm/{param}"] = {"param.name": param, "loss.name": "tm", **tm}
    variants["distill/lcmat/pixel"] = {"param.name": "pixel", "loss.name": "lcmat", **dc}
    for mode in ("unroll", "tesla"):
        variants[f"distill/tm-{mode}/pixel"] = {"param.name": "pixel", "loss.name": "tm", **tm,
                                                "loss.tm.mode": mode}
    variants["distill/dm/pixel/8-devices"] = {"param.name": "pixel", "loss.name": "dm",
                                              "ipc": 4, "num_devices": 8}

    def build(over) -> Program:
        if over["loss.name"] == "tm" and not (tmp / "experts").exists():
            _fake_expert_store(tmp / "experts")
        spec = distill_spec.resolve(tiny_distill_config(tmp / "run", **{"param.fred.k": 16,
                                                                         **over}))
        b = distill_pipeline.build(spec, spec.data.load("train"), skip_warmup=True)
        extra = b.extra_args(0) if b.extra_args is not None else ()
        return Program(b.step, (b.state, jnp.int32(0), *b.step_args, *extra))

    return {name: functools.partial(build, over) for name, over in variants.items()}


def _experts_spec(buffer_dir):
    return experts_spec.resolve(build_config("experts_digits", [
        ("data.image_size", "8"), ("model.width", "8"), ("num_experts", "2"), ("parallel", "2"),
        ("epochs", "3"), ("batch_size", "64"), ("progress", "False"),
        ("buffer_dir", str(buffer_dir))]))


def _fake_expert_store(root) -> str:
    """An expert store as `jaxdiff experts` writes it (meta from its spec), trajectories zero."""
    spec = _experts_spec(root)
    info = spec.data.info
    make_model = spec.model.factory(info.image_shape, info.num_classes)
    layout = param_layout(make_model, jax.random.split(jax.random.key(spec.run.seed))[0])
    num_params = sum(int(np.prod(s)) for s in layout["param_shapes"])
    store = ExpertStore.create(root, num_params=num_params, epochs=spec.epochs,
                               meta=store_meta(spec, info, layout))
    store.save_trajectory(0, np.zeros((spec.epochs + 1, num_params), np.float32))
    return str(root)


def _experts_programs(tmp) -> dict[str, Program]:
    """`pipelines.experts.run`'s trainer: one epoch of the vmapped experts, their accuracy."""
    spec = _experts_spec(tmp / "experts_run")
    train, test = spec.data.load("train"), spec.data.load("test")
    d = expert_data(train, test, zca=spec.zca, zca_reg=spec.zca_reg)
    make_model = spec.model.factory(train.info.image_shape, train.info.num_classes)
    init_key, data_key = jax.random.split(jax.random.key(spec.run.seed))
    trainer = make_expert_trainer(
        make_model, init_key=init_key, data_key=data_key, num_train=int(d.train_x.shape[0]),
        lr=spec.lr, batch_size=spec.batch_size,
        augment=dsa.per_sample_augment(spec.dsa_strategy), transform=d.transform)
    flat = jax.ShapeDtypeStruct((spec.parallel, trainer.num_params), jnp.float32)
    ids = jnp.arange(spec.parallel, dtype=jnp.int32)
    rows = np.asarray(trainer.rows_of(ids)(0))                     # step 0's batch, as fed
    return {"experts/epoch": Program(trainer.epoch, (flat, ids, jnp.int32(0), d.train_x,
                                                     d.train_y)),
            "experts/step": Program(trainer.step, (flat, ids, jnp.int32(0), d.train_x[rows],
                                                   d.train_y[rows])),
            "experts/accuracy": Program(trainer.accuracy, (flat, d.test_x, d.test_y))}


def evaluation_program(progress: bool) -> Program:
    """The evaluation protocol as `pipelines.distill` runs it (`train_and_test` on a decoded
    set: the digits ConvNet and DSA of the tiny distill spec), captured."""
    spec = distill_spec.resolve(tiny_distill_config("not-written"))  # resolve writes nothing
    info = spec.data.info
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(20, *info.image_shape)), jnp.float32)
    labels = jnp.arange(20, dtype=jnp.int32) % info.num_classes
    with capture_programs() as calls:
        train_and_test(jax.random.key(0), images, labels, images[:10], labels[:10],
                       make_model=spec.model.factory(info.image_shape, info.num_classes),
                       num_runs=2, epochs=2, lr=0.01, batch_size=8, eval_epochs=(1,),
                       augment=dsa.per_sample_augment(spec.eval.dsa_strategy),
                       progress=progress)
    (_, program), = calls
    return program


def _evaluate_programs(tmp) -> dict[str, Program]:
    return {"evaluate/protocol": evaluation_program(progress=False)}


def _select_programs(tmp) -> dict[str, Program]:
    """`pipelines.select`: the pre-training step, feature extraction and, per method, the
    per-class selection program `methods.run_classes` (gradients, curvature, greedy loops)."""
    spec = select_spec.resolve(build_config("select_digits", [
        ("data.image_size", "8"), ("pretrain.model.width", "8"), ("eval.model.width", "8"),
        ("seeds", "(0,)")]))
    info, p = spec.data.info, spec.pretrain
    train = spec.data.load("train")
    x, y = train.images[spec.pool], train.labels[spec.pool].astype(np.int32)
    n = len(y)
    tx = pretrain_optimizer(p.lr, p.momentum, p.nesterov, p.weight_decay)
    graphdef, state = init_pretrain_state(p.model.factory(info.image_shape, info.num_classes),
                                          0, tx, p.epochs, n)
    steps_per_epoch = -(-n // min(p.batch_size, n))
    step = make_pretrain_step(graphdef, tx, n, min(p.batch_size, n), steps_per_epoch)
    mean, std = jnp.asarray(info.mean, jnp.float32), jnp.asarray(info.std, jnp.float32)
    rows = np.asarray(pretrain_rows(state, n, min(p.batch_size, n), steps_per_epoch)(0))
    out = {"select/pretrain_step": Program(step, (state, jnp.int32(0), jnp.asarray(x[rows]),
                                                  jnp.asarray(y[rows]), jnp.asarray(rows),
                                                  mean, std))}
    with capture_programs() as calls:
        extract_features(graphdef, state["params"], state["rest"], x[:16], info.mean, info.std,
                         batch_size=8)
    out.update(_named(calls, {"feats": "select/features"}))
    rng = np.random.default_rng(0)
    inputs = {"embeddings": rng.normal(size=(n, 32)).astype(np.float32),
              "logits": rng.normal(size=(n, info.num_classes)).astype(np.float32),
              "correct": rng.random((p.epochs, n)) < 0.5}
    for method in M.METHODS:
        sig = inspect.signature(M.get_method(method)).parameters
        kwargs = {k: v for k, v in inputs.items() if k in sig}
        kwargs.update(spec.options.get(method, {}))
        with capture_programs((M, "run_classes")) as calls:
            M.select(method, jax.random.key(0), y, info.num_classes, 0.05, **kwargs)
        out.update(_named(calls, {"run_classes": f"select/run_classes/{method}"}))
    return out


def _train_denoiser_programs(tmp) -> dict[str, Program]:
    """`pipelines.train_denoiser`'s jitted loop step (data-parallel over the 8 devices)."""
    mesh = shd.data_mesh()
    rng = np.random.default_rng(0)
    # one step's batch, as feeding.HostBatches places it: split over the mesh
    images = shd.shard_batch(jnp.asarray(rng.integers(0, 256, (8, *DIGITS)), jnp.uint8), mesh)
    labels = shd.shard_batch(jnp.arange(8, dtype=jnp.int32) % 10, mesh)
    out = {}
    for name, num_classes in (("train_denoiser/loop_step", 0),
                              ("train_denoiser/loop_step/conditional", 10)):
        tx = denoiser_optimizer(2e-3, 2, 1.0)
        spec = unet_spec(num_classes)
        graphdef = split_abstract(lambda: build_denoiser(spec, nnx.Rngs(0)))[0]
        tstate = jax.eval_shape(lambda: init_train_state(build_denoiser(spec, nnx.Rngs(0)),
                                                         tx)[1])
        state = replicated(LoopState(tstate, jax.ShapeDtypeStruct((2,), jnp.uint32),
                                     jax.ShapeDtypeStruct((), jnp.float32)), mesh)
        step = make_loop_step(graphdef, tx, batch_size=8, sigma_data=0.75, p_mean=-1.2,
                              p_std=1.2, label_dropout=0.1, null_label=num_classes or None,
                              ema_decay=0.999, ema_warmup=True, log_every=2,
                              batch_sharding=shd.batch_sharding(mesh))
        state_sh = jax.tree.map(lambda _: shd.replicated(mesh), state)
        jitted = jax.jit(step, donate_argnums=0, out_shardings=(state_sh, shd.replicated(mesh)))
        out[name] = Program(jitted, (state, jnp.int32(0), images, labels))
    return out


def _discriminator_programs(tmp) -> dict[str, Program]:
    """The discriminator's BCE step (`diffusion.discriminator.make_disc_train_step`) with each
    extractor: a conv head on pixels, and the frozen quality net in front."""
    out = {}
    real = jax.ShapeDtypeStruct((8, *DIGITS), jnp.float32)
    with quality_net_stub():
        for extractor in saved.EXTRACTORS:
            spec, tx = disc_spec(extractor), D.default_optimizer()
            graphdef = split_abstract(lambda: saved.build_discriminator(spec, nnx.Rngs(0)))[0]
            state = jax.eval_shape(lambda: D.init_disc_train_state(
                saved.build_discriminator(spec, nnx.Rngs(0)), tx)[1])
            step = jax.jit(D.make_disc_train_step(graphdef, tx), donate_argnums=0)
            out[f"train_discriminator/step/{extractor}"] = Program(
                step, (state, real, real, jax.random.key(0)))
    return out


def _sampling_context(den: saved.TrainedDenoiser, solver: str):
    """What `pipelines.sample.generate` builds: the context and the replicated model state."""
    source = BS.DenoiserSource(den.state(True), den.make_denoise, den.image_shape,
                               den.num_classes, "digits", 8, "tiny U-Net")
    mesh = shd.data_mesh()
    return BS.SamplingContext(source, solver, 8, mesh, None), replicated(source.state, mesh)


SIGMAS = schedules.karras_sigmas(3, 0.002, 80.0, 7.0)
SOLVER_HPARAMS = {"heun": {}, "euler": {}, "edm": {"s_churn": 10.0}, "ddim": {"eta": 1.0},
                  "dpmpp_2m": {}}


def _call_sampler(make, ctx, state, hparams):
    """Build a batch sampler with `make()` and draw one batch, capturing its programs."""
    hp = {k: jnp.float32(v) for k, v in hparams.items()}
    with capture_programs() as calls:
        make()(state, jax.random.key(0), jnp.int32(0), SIGMAS, hp)
    return calls


def _sampler_programs(tmp) -> dict[str, Program]:
    """`pipelines.sample`'s batch samplers: plain solvers, DiffRS, LiDAR and the baselines."""
    out, den = {}, tiny_denoiser()
    for solver, hparams in SOLVER_HPARAMS.items():
        ctx, state = _sampling_context(den, solver)
        calls = _call_sampler(lambda: BS.plain_sampler(ctx), ctx, state, hparams)
        out.update(_named(calls, {"fn": f"sample/plain/{solver}"}))
    ctx, state = _sampling_context(den, "heun")
    spec = disc_spec("none")   # as `saved.load_discriminator` returns it (zero weights)
    graphdef, params, frozen = split_abstract(
        lambda: saved.build_discriminator(spec, nnx.Rngs(0)), D.head_filter, ...)
    disc = saved.TrainedDiscriminator(graphdef, zeros(params), zeros(frozen),
                                      {**spec, "step": 0})
    settings = BS.DiffRSSettings(disc_dir=str(tmp / "disc"), warmup=8, warmup_batch=8)
    calls = _call_sampler(lambda: BS.diffrs_sampler(ctx, settings, disc), ctx, state, {})
    out.update(_named(calls, {"warm": "sample/diffrs/warmup", "run": "sample/diffrs/run"}))
    reward_settings = {
        "lidar": RS.LidarSettings(num_lookahead=8, lookahead_steps=2),
        "gradient": RS.GradientSettings(),
        "best_of_n": RS.BestOfNSettings(group_size=2),
        "svdd": RS.SVDDSettings(num_candidates=2),
        "fk": RS.FKSettings(num_particles=4),
    }
    assert sorted(reward_settings) == sorted(RS.REWARD_SAMPLERS)
    ctx, state = _sampling_context(den, "ddim")   # lidar_digits: DDIM, eta 1
    with quality_net_stub():
        for name, p in reward_settings.items():
            make = RS.REWARD_SAMPLERS[name][1]
            reward = RS.make_reward(p.reward, ctx.source)      # class_logprob: the quality net
            calls = _call_sampler(lambda: make(ctx, p, reward), ctx, state, {"eta": 1.0})
            names = ({"phase1": "sample/lidar/lookahead", "phase2": "sample/lidar/guided"}
                     if name == "lidar" else {"run": f"sample/{name}"})
            out.update(_named(calls, names))
    return out


def _quality_net_programs(tmp) -> dict[str, Program]:
    """The quality net's training step and its batch rows (`train_quality_net`)."""
    spec = QN.QualityNetSpec("digits", image_size=8, width=8, feature_dim=16, epochs=1,
                             batch_size=32)
    with capture_programs() as calls:
        QN.train_quality_net(spec)
    return _named(calls, {"step": "quality_net/step", "rows": "quality_net/batch_rows"})


BUILDERS = {
    "distill": _distill_programs, "experts": _experts_programs, "evaluate": _evaluate_programs,
    "select": _select_programs, "train_denoiser": _train_denoiser_programs,
    "train_discriminator": _discriminator_programs, "sample": _sampler_programs,
    "quality_net": _quality_net_programs,
}
# Every case, by name (its group is the part before the first "/"). A builder must produce
# exactly its group's names (`test_builders_produce_exactly_the_listed_cases`).
CASES = (
    [f"distill/{loss}/{param}" for loss in ("dm", "dc", "tm")
     for param in ("pixel", "fred", "ddif")]
    + ["distill/lcmat/pixel", "distill/tm-unroll/pixel", "distill/tm-tesla/pixel",
       "distill/dm/pixel/8-devices",
       "experts/epoch", "experts/step", "experts/accuracy", "evaluate/protocol",
       "select/pretrain_step", "select/features"]
    + [f"select/run_classes/{m}" for m in M.METHODS]
    + ["train_denoiser/loop_step", "train_denoiser/loop_step/conditional",
       "train_discriminator/step/none", "train_discriminator/step/quality_net"]
    + [f"sample/plain/{s}" for s in SOLVER_HPARAMS]
    + ["sample/diffrs/warmup", "sample/diffrs/run", "sample/lidar/lookahead",
       "sample/lidar/guided", "sample/gradient", "sample/best_of_n", "sample/svdd", "sample/fk",
       "quality_net/step", "quality_net/batch_rows"]
)


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """`programs(group) -> {case: Program or a function building it}`, each group and each
    lazily built program built once (per test worker)."""
    built: dict[str, dict] = {}

    def get(group: str) -> dict:
        if group not in built:
            built[group] = BUILDERS[group](tmp_path_factory.mktemp(group))
        return built[group]

    return get


@pytest.fixture(scope="module")
def program(programs):
    """`program(case) -> Program`."""
    cache: dict[str, Program] = {}

    def get(name: str) -> Program:
        if name not in cache:
            p = programs(name.split("/")[0])[name]
            cache[name] = p if isinstance(p, Program) else p()
        return cache[name]

    return get


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", CASES)
def test_hot_path_lowers_for_accelerator(program, name, platform):
    check_portable(program(name), platform)


def test_builders_produce_exactly_the_listed_cases(programs):
    for group in BUILDERS:
        listed = sorted(n for n in CASES if n.split("/")[0] == group)
        assert sorted(programs(group)) == listed, group


@pytest.mark.parametrize("platform", PLATFORMS)
def test_evaluation_progress_callback_is_flagged(platform):
    """With progress on, the protocol ticks a tqdm bar through `jax.debug.callback` every
    epoch: the check must reject it (so the exported progress-off program is the one that
    runs on accelerators, and the check demonstrably fails on a callback in a real step)."""
    with pytest.raises(NotPortable, match="debug_callback"):
        check_portable(evaluation_program(progress=True), platform)


def _debug_callback(x):
    jax.debug.callback(lambda v: None, x)
    return 2 * x


def _pure_callback(x):
    return jax.pure_callback(lambda v: v, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def _io_callback(x):
    return io_callback(lambda v: v, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def _lapack_call(x):
    """A CPU-only custom call emitted on every platform (what a hand-written FFI call to a CPU
    kernel looks like): LAPACK's Cholesky."""
    return jax.ffi.ffi_call("lapack_spotrf_ffi", (jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                  jax.ShapeDtypeStruct((), jnp.int32)),
                            input_output_aliases={0: 0})(x, uplo=np.uint8(ord("L")))[0]


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("fn", [_debug_callback, _pure_callback, _io_callback, _lapack_call],
                         ids=lambda f: f.__name__.lstrip("_"))
def test_negative_controls_are_flagged(fn, platform):
    x = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    with pytest.raises(NotPortable, match="callback|lapack_spotrf_ffi"):
        check_portable(Program(jax.jit(fn), (x,)), platform)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_export_itself_refuses_host_callbacks(platform):
    """Without the jaxpr scan, jax's own lowering refuses a callback for another platform (so
    the check does not rest on the scan alone)."""
    x = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    with pytest.raises((ValueError, NotImplementedError)):
        jax.export.export(jax.jit(_debug_callback), platforms=(platform,))(x)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_accelerator_linear_algebra_is_allowed(platform):
    """Positive control: solves and decompositions lower to the platform's own kernels."""
    def f(a):
        return jnp.linalg.solve(a, a), jnp.linalg.eigh(a)[0], jnp.linalg.cholesky(a)

    check_portable(Program(jax.jit(f), (jax.ShapeDtypeStruct((4, 4), jnp.float32),)), platform)
