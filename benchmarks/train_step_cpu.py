"""The evaluation protocol's ConvNet-D3 train step on CPU, with and without each of its CPU
choices (issue 21), timed round-robin in one process.

The step is the library's own (`jaxdiff.distill.evaluate._train_step`: per-sample DSA, ConvNet-D3
width 128 instance norm, SGD with momentum and weight decay), `--steps` of them at batch 256 in
one `lax.scan`, as the protocol runs them. Variants, each switching one choice back to what it
was before:

* ``library``: as shipped (memory-optimised XLA:CPU scheduler, fused norm/ReLU/pool block,
  weight-gradient GEMMs in two halves);
* ``xla_scheduler``: XLA's default (concurrency-optimised) scheduler;
* ``plain_block``: `avg_pool2(relu(instance_norm(x)))` differentiated by JAX instead of
  `ops.instance_norm_relu_avg_pool2`;
* ``single_gemm_dw``: one GEMM per kernel tap over the whole contraction;
* ``before``: all three switched back (the step of the previous release).

Prints one JSON line per variant: median seconds per step, images/s, temporary MiB, the
speed relative to ``before``, and the steps' losses (equal across variants up to float
rounding: they compute the same steps). Run under the reuse heap as the `jaxdiff` command does::

    python -m benchmarks.train_step_cpu --reuse-heap --repeats 7
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.common import compiled_memory, emit, summarize, time_interleaved

VARIANTS = ("library", "xla_scheduler", "plain_block", "single_gemm_dw", "before")


def _single_gemm_dw(x, g, geom):
    """The weight gradient before the two-halves split: one GEMM per tap."""
    from jaxdiff.ops import conv as C
    kh, kw = geom.kernel
    c, o = x.shape[-1], g.shape[-1]
    g2 = C._as_rows(g)
    if c < C.SMALL_C_IN:
        return (C._im2col(x, geom).T @ g2).reshape(kh, kw, c, o)
    return jnp.stack([C._as_rows(xt).T @ g2 for xt in C._taps(x, geom)]).reshape(kh, kw, c, o)


def _plain_block(x, scale, bias, eps=1e-5):
    from jaxdiff.ops import avg_pool2, instance_norm
    return avg_pool2(jax.nn.relu(instance_norm(x, scale, bias, eps)))


@contextlib.contextmanager
def _switched(variant: str):
    """Trace-time switches: module attributes the library looks up when a step is traced."""
    from jaxdiff.models import convnet
    from jaxdiff.ops import conv
    saved = (convnet.instance_norm_relu_avg_pool2, conv._mm_conv_dw)
    if variant in ("plain_block", "before"):
        convnet.instance_norm_relu_avg_pool2 = _plain_block
    if variant in ("single_gemm_dw", "before"):
        conv._mm_conv_dw = _single_gemm_dw
    try:
        yield
    finally:
        convnet.instance_norm_relu_avg_pool2, conv._mm_conv_dw = saved


def compile_variant(variant: str, steps: int, batch: int, n_train: int):
    from jaxdiff.distill import augment as dsa
    from jaxdiff.distill import evaluate as ev
    from jaxdiff.models.classifiers import classifier_factory
    from jaxdiff.xla_options import cpu_compiler_options

    make = classifier_factory("convnet", (32, 32, 3), 10, depth=3, width=128,
                              norm="instancenorm")
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.trace(decay=0.9))
    rs = np.random.RandomState(0)
    x = jnp.asarray(rs.randn(n_train, 32, 32, 3).astype(np.float32))
    y = jnp.asarray(np.arange(n_train) % 10)
    model = make(nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = (params, rest, tx.init(params))
    step = ev._train_step(graphdef, tx, dsa.per_sample_augment("color_crop_cutout_flip_scale_rotate"),
                          x, y, jnp.ones(n_train))

    def run(state, key):
        idx = jax.random.randint(key, (steps, batch), 0, n_train)
        return jax.lax.scan(lambda s, i: step(s, i, key, 0.01), state, idx)

    options = None if variant in ("xla_scheduler", "before") else (cpu_compiler_options() or None)
    with _switched(variant):
        compiled = jax.jit(run, compiler_options=options).lower(state, jax.random.key(0)).compile()
    return compiled, (state, jax.random.key(1)), options


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--steps", type=int, default=6, help="train steps per timed call")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--train-images", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reuse-heap", action="store_true",
                    help="re-execute under the reuse-heap GLIBC_TUNABLES, as `jaxdiff` does")
    a = ap.parse_args(argv)
    if a.reuse_heap:
        from jaxdiff.runtime import REUSE_HEAP_TUNABLES
        if os.environ.get("GLIBC_TUNABLES") != REUSE_HEAP_TUNABLES:
            os.execve(sys.executable, [sys.executable, "-m", "benchmarks.train_step_cpu", *sys.argv[1:]],
                      dict(os.environ, GLIBC_TUNABLES=REUSE_HEAP_TUNABLES))
    calls, meta = {}, {}
    for v in a.variants:
        compiled, args, options = compile_variant(v, a.steps, a.batch, a.train_images)
        calls[v] = (compiled, args)
        losses = np.asarray(compiled(*args)[1])       # the same steps whatever the variant
        meta[v] = {"compiler_options": options or {},
                   "temp_mib": round(compiled_memory(compiled).get("temp_bytes", 0) / 2**20, 1),
                   "losses": [round(float(v), 6) for v in losses]}
    times = time_interleaved(calls, repeats=a.repeats)
    base = summarize(times["before"])["median_s"] if "before" in times else None
    for v in a.variants:
        s = summarize(times[v])
        per_step = s["median_s"] / a.steps
        emit({"bench": "train_step_cpu", "variant": v, "steps_per_call": a.steps,
              "batch": a.batch, "s_per_step": round(per_step, 4),
              "iqr_s_per_step": round(s["iqr_s"] / a.steps, 4),
              "images_per_s": round(a.batch / per_step, 1), **meta[v],
              "speed_vs_before": round(base / s["median_s"], 3) if base else None,
              "reuse_heap": os.environ.get("GLIBC_TUNABLES") is not None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
