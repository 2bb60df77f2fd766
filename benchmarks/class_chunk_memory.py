"""DM and DC with the real batches processed `class_chunk` classes at a time: peak memory and
seconds per loss-and-gradient, against all classes in one call (`class_chunk` 0).

Shapes: C classes x `batch_real` real images of S px (3 channels) and 1 synthetic image per
class, the embedding network ConvNet-D{depth for S}, width 128, instance norm (the DM/DC
network of the references), a fresh one per call as in `jaxdiff distill`. One measurement =
`jax.jit(jax.grad(loss))` of the DM loss (or the DC gradient-matching loss) w.r.t. the synthetic
images, compiled, then run `--repeats` times.

Each (loss, chunk) runs in its own subprocess so that the peak RSS (`ru_maxrss`) is that
configuration's alone; the figure counts everything the process holds (jax, the inputs, XLA's
buffers). `memory_analysis()` temp bytes are printed too, but XLA:CPU leaves the buffers of a
`lax.map` body out of that figure, so only RSS compares chunked with unchunked fairly.

    python -m benchmarks.class_chunk_memory                       # CIFAR-10 shape, batch_real 256
    python -m benchmarks.class_chunk_memory --quick               # 10 x 64 images, chunks 0 and 2
    python -m benchmarks.class_chunk_memory --classes 100 --chunks 0 10 --loss dm
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(loss: str, classes: int, batch_real: int, size: int, chunk: int,
            repeats: int) -> dict:
    """One configuration, in this process: compile, run, read the peak RSS."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxdiff.distill import losses
    from jaxdiff.models.classifiers import classifier_factory
    from jaxdiff.models.functional import apply

    make = classifier_factory("convnet", (size, size, 3), classes, width=128)
    graphdef, params, rest = nnx.split(make(nnx.Rngs(0)), nnx.Param, ...)
    key = jax.random.key(1)

    def value(syn, real, p):
        if loss == "dm":
            embed = lambda x: apply(graphdef, (p, rest), x, method="embed")[0]  # noqa: E731
            return losses.distribution_matching_loss(embed, syn, real, key, None,
                                                     class_chunk=chunk)
        net = lambda q, x: apply(graphdef, (q, rest), x)[0]  # noqa: E731
        return losses.gradient_matching_loss(net, p, syn, real, key, None, class_chunk=chunk)

    k1, k2 = jax.random.split(jax.random.key(0))
    args = (jax.random.normal(k1, (classes, 1, size, size, 3)),
            jax.random.normal(k2, (classes, batch_real, size, size, 3)), params)
    t0 = time.perf_counter()
    compiled = jax.jit(jax.grad(value)).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))   # first run (allocations)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return {"loss": loss, "classes": classes, "batch_real": batch_real, "size": size,
            "class_chunk": chunk, "compile_s": round(compile_s, 2),
            "seconds": round(sorted(times)[len(times) // 2], 3) if times else None,
            "xla_temp_mib": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def run_one(loss: str, classes: int, batch_real: int, size: int, chunk: int, repeats: int,
            timeout: float = 1800) -> dict:
    """`measure` in a fresh subprocess (its own peak RSS); returns its JSON line."""
    env = {**os.environ, "JAXDIFF_REUSE_HEAP": os.environ.get("JAXDIFF_REUSE_HEAP", "0")}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.class_chunk_memory", "--one", loss, str(classes),
         str(batch_real), str(size), str(chunk), str(repeats)],
        capture_output=True, text=True, timeout=timeout, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss", nargs="+", default=["dm", "dc"], choices=["dm", "dc"])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 5, 2, 1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10 x 64 images, chunks 0 and 2, DM")
    ap.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        loss, *nums = args.one
        print(json.dumps(measure(loss, *map(int, nums))), flush=True)
        return 0
    if args.quick:
        args.loss, args.batch_real, args.chunks, args.repeats = ["dm"], 64, [0, 2], 1
    for loss in args.loss:
        for chunk in args.chunks:
            print(json.dumps(run_one(loss, args.classes, args.batch_real, args.size, chunk,
                                     args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
