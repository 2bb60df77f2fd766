"""ConvNet-D3 training speed on CPU: XLA's convolution vs `jaxdiff.ops.conv2d` (issue 3).

Prints JSON lines (see `benchmarks.common`). For each convolution implementation, with the
SAME model code (the implementation is switched with `jaxdiff.ops.conv_impl` around tracing):

* ``train_step``: one SGD step of ConvNet-D3 (width 128, instance norm, ReLU, 2x2 average
  pooling, linear head, cross-entropy, lr 0.01) on a batch of 32x32x3 images: images/s,
  GFLOP/s and the fraction of the SGEMM throughput, the SGEMM being timed in the same
  round-robin rounds (so under the same load);
* ``tm_step``: a trajectory-matching-style outer step: the gradient, with respect to
  ``--tm-batch`` synthetic images and the learning rate, of a normalised parameter-matching
  loss after ``--tm-inner`` (10) SGD steps unrolled in a `lax.scan` (second-order
  differentiation through the convolutions);
* ``dm_embed``: the forward-only embedding (the 2048 features before the head) used by
  distribution matching, and ``dm_grad``: the gradient of a distribution-matching loss with
  respect to the synthetic images (needs the first layer's input gradient);
* ``train_scan`` (opt-in via ``--only``): ``--scan-steps`` train steps inside one `lax.scan`,
  how evaluation and expert-trajectory loops run. XLA's own convolution derivatives are
  pathologically slow inside loop bodies on XLA:CPU (weight gradient ~50x), so the XLA path
  takes minutes here.

All variants are compiled ahead of time and timed round-robin (one call of each per round) so
that load drift on a shared machine hits them equally; ratios are reported from one run.
GFLOP/s uses the analytic model FLOPs (identical for both implementations); each record also
carries XLA's `cost_analysis()` FLOPs and `memory_analysis()` bytes of its own program.

Usage::

    python -m benchmarks.conv_cpu                 # batch 256; ~10 min on 2 cores, most of it
                                                  # the XLA path's unrolled step (~100 s/call)
    python -m benchmarks.conv_cpu --quick         # batch 64, few repeats: ~1 min
    python -m benchmarks.conv_cpu --only train_step --repeats 15
    python -m benchmarks.conv_cpu --only train_step --impls xla,matmul,free_dw   # + the bound

On glibc, XLA:CPU's per-call buffers above 32 MiB are fresh mmaps, so every call page-faults
its whole temporary memory (about 2.4 us per 4 KiB page on the dev VM, i.e. ~0.4 ms/MB). Both
implementations pay it; ``--reuse-heap`` re-executes the script with
``GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:...`` so that freed buffers
are reused without faults, to show the cost. Page faults per call are recorded either way.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (
    compile_aot,
    compiled_flops,
    compiled_memory,
    emit,
    environment,
    make_sgemm,
    measure_sgemm,
    minor_page_faults,
    summarize,
    time_interleaved,
)
from jaxdiff.ops import avg_pool2, conv2d, conv_impl, instance_norm
from jaxdiff.ops import conv as _conv_module

from jaxdiff.runtime import REUSE_HEAP_TUNABLES  # noqa: E402

# --------------------------------------------------------------------------------------------
# ConvNet-D3, functional (same math as jaxdiff.models.ConvNet with norm="instancenorm")
# --------------------------------------------------------------------------------------------


def init_convnet(key, in_channels=3, num_classes=10, image_size=32, depth=3, width=128):
    """Parameters of ConvNet-D{depth}: a dict of arrays (conv HWIO kernels, norm affine, head)."""
    params = {}
    keys = jax.random.split(key, depth + 1)
    c, size = in_channels, image_size
    for layer in range(depth):
        fan_in = 9 * c
        params[f"conv{layer}"] = {
            "w": jax.random.normal(keys[layer], (3, 3, c, width)) * np.sqrt(2.0 / fan_in),
            "b": jnp.zeros((width,)),
            "scale": jnp.ones((width,)),
            "bias": jnp.zeros((width,)),
        }
        c, size = width, size // 2
    feat = c * size * size
    params["head"] = {
        "w": jax.random.normal(keys[-1], (feat, num_classes)) / np.sqrt(feat),
        "b": jnp.zeros((num_classes,)),
    }
    return params


# --------------------------------------------------------------------------------------------
# The "free_dw" oracle: a bound, not an implementation
# --------------------------------------------------------------------------------------------

# Any implementation that keeps XLA's forward and input-gradient convolutions (the fastest
# measured for those, at 80-90 % of SGEMM) can at most remove the weight-gradient time. The
# oracle below is that limit: XLA's forward, the canonical XLA input gradient, and a weight
# gradient that costs nothing (zeros). Its train step is the floor every such implementation
# shares, so xla_time / free_dw_time bounds the speed-up over the XLA path. Benchmark only:
# its gradients are wrong by construction.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_free_dw(x, w, geom):
    return _conv_module._xla_conv(x, w, geom)


def _conv_free_dw_fwd(x, w, geom):
    # x stays a residual although the zero weight gradient ignores it: every real weight
    # gradient reads it, so the floor should keep it alive too.
    return _conv_module._xla_conv(x, w, geom), (x, w)


def _conv_free_dw_bwd(geom, res, g):
    _, w = res
    return _conv_module._xla_conv_dx(g, w, geom), jnp.zeros_like(w)


_conv_free_dw.defvjp(_conv_free_dw_fwd, _conv_free_dw_bwd)

# Set by `conv_variant` while tracing the oracle (the library's `conv_impl` has no such impl).
_ORACLE = {"free_dw": False}


@contextlib.contextmanager
def conv_variant(impl: str):
    """Trace `embed` and the steps with conv implementation `impl` ("xla", "matmul", "auto",
    or the "free_dw" oracle) inside this context."""
    oracle = impl == "free_dw"
    _ORACLE["free_dw"] = oracle
    try:
        with conv_impl("xla" if oracle else impl):
            yield
    finally:
        _ORACLE["free_dw"] = False


def _conv(x, w, *, padding):
    if _ORACLE["free_dw"]:
        geom = _conv_module._make_geom(x.shape, w.shape, 1, padding)
        return _conv_free_dw(x, w, geom)
    return conv2d(x, w, padding=padding)


def embed(params, x):
    """`[N, 32, 32, 3] -> [N, 2048]` features (conv 3x3 pad 1 + bias, IN, ReLU, avgpool) x3."""
    depth = sum(1 for k in params if k.startswith("conv"))
    for layer in range(depth):
        p = params[f"conv{layer}"]
        x = _conv(x, p["w"], padding=1) + p["b"]
        x = instance_norm(x, p["scale"], p["bias"])
        x = avg_pool2(jax.nn.relu(x))
    return x.reshape(x.shape[0], -1)


def logits_fn(params, x):
    return embed(params, x) @ params["head"]["w"] + params["head"]["b"]


def xent(params, x, y):
    logp = jax.nn.log_softmax(logits_fn(params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def sgd_step(params, x, y, lr=0.01):
    loss, grads = jax.value_and_grad(xent)(params, x, y)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss


def train_scan(params, xs, ys):
    """`xs: [K, N, 32, 32, 3]`: K SGD steps in one `lax.scan`."""

    def body(p, batch):
        p, loss = sgd_step(p, *batch)
        return p, loss

    return jax.lax.scan(body, params, (xs, ys))


def tm_loss(x_syn, log_lr, y_syn, params0, params_target, inner_steps):
    """Normalised parameter-matching loss after `inner_steps` SGD steps on the synthetic set."""

    def body(p, _):
        _, g = jax.value_and_grad(xent)(p, x_syn, y_syn)
        return jax.tree.map(lambda a, b: a - jnp.exp(log_lr) * b, p, g), None

    final, _ = jax.lax.scan(body, params0, None, length=inner_steps)
    sq = lambda t: sum(jnp.sum(jnp.square(a)) for a in jax.tree.leaves(t))
    num = sq(jax.tree.map(jnp.subtract, final, params_target))
    den = sq(jax.tree.map(jnp.subtract, params0, params_target))
    return num / den


def dm_loss(x_syn, x_real, params):
    return jnp.sum(jnp.square(embed(params, x_real).mean(0) - embed(params, x_syn).mean(0)))


def convnet_flops(batch, image_size=32, in_channels=3, width=128, depth=3, classes=10):
    """Analytic FLOPs (2 per multiply-add) of the convolutions and head of ConvNet-D3.

    Returns (forward, train_step) where train_step = forward + weight gradients + input
    gradients of every layer but the first (the images need none in a train step).
    """
    fwd = 0
    dx = 0
    c, s = in_channels, image_size
    for layer in range(depth):
        f = 2 * batch * s * s * 9 * c * width
        fwd += f
        if layer > 0:
            dx += f
        c, s = width, s // 2
    head = 2 * batch * c * s * s * classes
    fwd += head
    return fwd, fwd + (fwd - head) + head + dx + head


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def build(workload, impl, args, data):
    """Trace and AOT-compile one workload with one conv implementation. Returns (compiled, args)."""
    with conv_variant(impl):
        if workload == "train_step":
            fn = sgd_step
            call_args = (data["params"], data["x"], data["y"])
        elif workload == "train_scan":
            fn = train_scan
            call_args = (data["params"], data["xs"], data["ys"])
        elif workload == "tm_step":
            fn = jax.grad(
                functools.partial(tm_loss, inner_steps=args.tm_inner), argnums=(0, 1)
            )
            call_args = (data["x_tm"], data["log_lr"], data["y_tm"], data["params"],
                         data["params_target"])
        elif workload == "dm_embed":
            fn = embed
            call_args = (data["params"], data["x"])
        elif workload == "dm_grad":
            fn = jax.grad(dm_loss)
            call_args = (data["x_syn"], data["x"], data["params"])
        else:
            raise ValueError(workload)
        # A fresh function object per implementation: jit's trace cache is keyed on the
        # function, and the conv implementation is only read while tracing.
        compiled, compile_s = compile_aot(lambda *a: fn(*a), *call_args)
    return compiled, call_args, compile_s


def model_flops(workload, args):
    fwd, train = convnet_flops(args.batch)
    if workload == "train_step":
        return train
    if workload == "train_scan":
        return train * args.scan_steps
    if workload == "dm_embed":
        return fwd
    if workload == "dm_grad":
        fwd_syn, _ = convnet_flops(args.syn_batch)
        # real forward + synthetic forward + synthetic backward to the images (dx of every
        # layer, no weight gradients)
        return fwd + 2 * fwd_syn
    if workload == "tm_step":
        # Second order through a scan: no simple analytic count, and cost_analysis() counts
        # a loop body once; report time and speed-up only.
        return None
    raise ValueError(workload)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--syn-batch", type=int, default=100, help="synthetic images (10 ipc x 10)")
    parser.add_argument("--tm-inner", type=int, default=10)
    parser.add_argument("--tm-batch", type=int, default=20,
                        help="synthetic images in the unrolled step (2 ipc x 10 classes); "
                             "XLA's path needs ~100 s per call already at 20")
    parser.add_argument("--scan-steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--impls", default="xla,matmul,auto",
        help="comma-separated; also free_dw: the bound with a zero-cost weight gradient "
             "(XLA forward and input gradient; wrong gradients, timing only)")
    parser.add_argument(
        "--only", default="train_step,dm_embed,dm_grad,tm_step",
        help="comma-separated workloads; also train_scan (slow for xla: minutes)",
    )
    parser.add_argument("--sgemm-n", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="batch 64, 3 repeats")
    parser.add_argument("--reuse-heap", action="store_true",
                        help="re-exec with glibc tunables that keep freed buffers (see doc)")
    args = parser.parse_args(argv)
    if args.reuse_heap and os.environ.get("GLIBC_TUNABLES") != REUSE_HEAP_TUNABLES:
        env = dict(os.environ, GLIBC_TUNABLES=REUSE_HEAP_TUNABLES)
        argv_out = [a for a in (argv if argv is not None else sys.argv[1:])]
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.conv_cpu", *argv_out], env)
    if args.quick:
        args.batch, args.syn_batch, args.repeats, args.sgemm_n = 64, 20, 3, 1024
        args.tm_batch, args.tm_inner = 10, 3
    impls = args.impls.split(",")
    workloads = args.only.split(",")

    key = jax.random.key(0)
    k = jax.random.split(key, 8)
    params = init_convnet(k[0])
    data = {
        "params": params,
        "params_target": jax.tree.map(lambda a: a + 0.01, params),
        "x": jax.random.normal(k[1], (args.batch, 32, 32, 3)),
        "y": jax.random.randint(k[2], (args.batch,), 0, 10),
        "xs": jax.random.normal(k[3], (args.scan_steps, args.batch, 32, 32, 3)),
        "ys": jax.random.randint(k[4], (args.scan_steps, args.batch), 0, 10),
        "x_syn": jax.random.normal(k[5], (args.syn_batch, 32, 32, 3)),
        "y_syn": jnp.arange(args.syn_batch) % 10,
        "x_tm": jax.random.normal(k[6], (args.tm_batch, 32, 32, 3)),
        "y_tm": jnp.arange(args.tm_batch) % 10,
        "log_lr": jnp.log(jnp.float32(0.01)),
    }
    data = jax.block_until_ready(jax.device_put(data))
    env = environment()

    sgemm_before = measure_sgemm(args.sgemm_n)
    emit({"bench": "conv_cpu", "kind": "sgemm", "when": "before", **sgemm_before}, env=env)

    for workload in workloads:
        calls, meta = {}, {}
        for impl in impls:
            compiled, call_args, compile_s = build(workload, impl, args, data)
            calls[impl] = (compiled, call_args)
            meta[impl] = {
                "compile_s": round(compile_s, 3),
                "xla_flops": compiled_flops(compiled),
                **compiled_memory(compiled),
            }
        # Page faults per call, measured outside the timed loop (one call each).
        for impl, (fn, call_args) in calls.items():
            jax.block_until_ready(fn(*call_args))
            f0 = minor_page_faults()
            jax.block_until_ready(fn(*call_args))
            meta[impl]["page_faults_per_call"] = minor_page_faults() - f0
        # The unrolled second-order step is ~10x a train step (and XLA's own derivatives of
        # convolutions inside scans are very slow): fewer rounds there.
        reps = max(2, args.repeats // 3) if workload in ("tm_step", "train_scan") else args.repeats
        # The SGEMM yardstick runs in the same rounds, so it sees the same load.
        sgemm_fn, sgemm_args, sgemm_flops = make_sgemm(args.sgemm_n)
        times = time_interleaved({**calls, "sgemm": (sgemm_fn, sgemm_args)}, repeats=reps,
                                 warmup=1)
        sgemm_gflops = sgemm_flops / summarize(times.pop("sgemm"))["median_s"] / 1e9
        emit({"bench": "conv_cpu", "kind": "sgemm", "when": f"interleaved with {workload}",
              "n": args.sgemm_n, "gflops_per_s": round(sgemm_gflops, 2)}, env=env)
        flops = model_flops(workload, args)
        base = summarize(times[impls[0]])["median_s"]
        for impl in impls:
            stats = summarize(times[impl])
            per = args.batch * (args.scan_steps if workload == "train_scan" else 1)
            if workload == "dm_grad":
                per = args.syn_batch
            if workload == "tm_step":
                per = args.tm_batch * args.tm_inner  # image-steps per second
            rec = {
                "bench": "conv_cpu",
                "kind": workload,
                "impl": impl,
                "batch": args.batch,
                **stats,
                "images_per_s": round(per / stats["median_s"], 1),
                "model_flops": flops,
                "gflops_per_s": round(flops / stats["median_s"] / 1e9, 2) if flops else None,
                "frac_of_sgemm": round(flops / stats["median_s"] / 1e9 / sgemm_gflops, 3)
                if flops else None,
                "sgemm_gflops_per_s": round(sgemm_gflops, 2),
                f"speedup_vs_{impls[0]}": round(base / stats["median_s"], 3),
                **meta[impl],
            }
            if workload == "train_scan":
                rec["scan_steps"] = args.scan_steps
                rec["median_s_per_step"] = stats["median_s"] / args.scan_steps
            if workload == "tm_step":
                rec.update(inner_steps=args.tm_inner, tm_batch=args.tm_batch)
            if workload == "dm_grad":
                rec["syn_batch"] = args.syn_batch
            emit(rec, env=env)

    sgemm_after = measure_sgemm(args.sgemm_n)
    emit({"bench": "conv_cpu", "kind": "sgemm", "when": "after", **sgemm_after},
         env=environment())


if __name__ == "__main__":
    main()
