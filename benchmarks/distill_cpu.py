"""Seconds per distillation iteration (DM and DC) for pixel / FreD / DDiF at CIFAR-10 IPC 1, with
the step's memory (issue 4, benchmark c).

    python -m benchmarks.distill_cpu                    # all six, reference sizes (batch_real 256)
    python -m benchmarks.distill_cpu --quick            # batch_real 64, fewer repeats
    python -m benchmarks.distill_cpu --only ddif/dm,fred/dm

Each step is built exactly as `jaxdiff distill` builds it (`jaxdiff.pipelines.distill.build`, the
references' defaults from configs/distill_cifar10.py; DDiF without its warm-up fit, which is
benchmarked in benchmarks/ddif_cpu.py), compiled ahead of time, run once to warm up, then timed
over `--repeats` calls with `block_until_ready` (the step donates its state, so every call
consumes the previous call's output, as in the real loop). Memory: XLA's `memory_analysis()` of
the compiled step (temporaries + arguments) and the process's peak RSS after the timing.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import numpy as np

from benchmarks.common import compiled_flops, compiled_memory, emit, environment
from jaxdiff import data as jdata
from jaxdiff.config_utils import build_config
from jaxdiff.pipelines.distill import build
from jaxdiff.specs.distill import resolve

SETTINGS = ("pixel/dm", "fred/dm", "ddif/dm", "pixel/dc", "fred/dc", "ddif/dc")


def bench_one(name: str, train, batch_real: int, repeats: int) -> dict:
    param, loss = name.split("/")
    cfg = build_config("distill_cifar10", [
        ("param.name", param), ("loss.name", loss), ("param.ddif.warmup_steps", "0"),
        ("loss.batch_real", str(batch_real)), ("num_devices", "1")])
    b = build(resolve(cfg), train, skip_warmup=True)

    def args(i):  # the frozen arrays, then step i's real batches (read on the host)
        return (*b.step_args, *(b.extra_args(i) if b.extra_args is not None else ()))

    t0 = time.perf_counter()
    compiled = b.step.lower(b.state, np.int32(0), *args(0)).compile()
    compile_s = time.perf_counter() - t0
    state, _ = compiled(b.state, np.int32(0), *args(0))
    jax.block_until_ready(state)
    times = []
    for i in range(1, repeats + 1):
        t0 = time.perf_counter()
        state, metrics = compiled(state, np.int32(i), *args(i))
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    mem = compiled_memory(compiled)
    flops = compiled_flops(compiled)
    med = statistics.median(times)
    return {
        "bench": "distill_step", "setting": name, "ipc": 1, "batch_real": batch_real,
        "instances": b.report.num_classes * b.report.instances_per_class,
        "median_s": round(med, 4), "min_s": round(min(times), 4), "repeats": repeats,
        "compile_s": round(compile_s, 2),
        "gflop": None if flops is None else round(flops / 1e9, 2),
        "gflop_per_s": None if flops is None else round(flops / 1e9 / med, 2),
        "xla_memory": mem,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss": float(metrics["loss"]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch_real 64, 2 repeats")
    ap.add_argument("--only", default=",".join(SETTINGS))
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--batch-real", type=int, default=0)
    args = ap.parse_args(argv)
    names = args.only.split(",")
    bad = sorted(set(names) - set(SETTINGS))
    if bad:
        ap.error(f"unknown setting(s) {bad}; choose from {list(SETTINGS)}")
    batch_real = args.batch_real or (64 if args.quick else 256)
    repeats = args.repeats or (2 if args.quick else 5)
    train = jdata.load("cifar10_jpeg", "train")
    env = environment()
    for name in names:
        emit(bench_one(name, train, batch_real, repeats), env={**env, **environment()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
