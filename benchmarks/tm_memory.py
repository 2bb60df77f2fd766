"""Trajectory matching: seconds per iteration and peak memory vs syn_steps, for the three gradient
modes of `jaxdiff.distill.trajectory.mtt_loss` ("unroll", "remat", "tesla").

Shapes: CIFAR-10 IPC 1 — 10 synthetic images 32x32x3 (pixel parameterisation), ConvNet-D3
width 128 instance norm (320,010 parameters), batch_syn = all 10, per-sample DSA every step.
One TM iteration = value and gradient of the loss w.r.t. (images, syn_lr).

Each (mode, syn_steps) runs in its own subprocess so that the process's peak RSS
(`ru_maxrss`) belongs to that configuration alone. Reported per line: compile seconds, median
seconds per iteration, XLA's FLOPs, `memory_analysis()` temp bytes (the compiler's scratch
allocation: activations and residuals kept for the backward pass), peak RSS, and the load
average. Timings on the shared 2-core dev machine are contended: compare modes within a run.

    python -m benchmarks.tm_memory                           # syn_steps 10 20 40 60
    python -m benchmarks.tm_memory --steps 10 20 --repeats 2
    python -m benchmarks.tm_memory --quick                   # syn_steps 10, 1 repeat
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys

MODES = ("unroll", "remat", "tesla")


def one(mode: str, steps: int, repeats: int, width: int) -> dict:
    import jax
    import jax.numpy as jnp

    from benchmarks.common import compile_aot, compiled_flops, compiled_memory, summarize, \
        time_compiled
    from jaxdiff import models
    from jaxdiff.distill import trajectory as T
    from jaxdiff.distill.augment import augment as dsa

    mk = functools.partial(models.ConvNet, in_channels=3, num_classes=10, image_size=32, depth=3,
                           width=width)
    student = T.flat_student(mk, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (10, 32, 32, 3))
    labels = jnp.arange(10)
    start = student.init_flat
    target = start + 1e-2 * jax.random.normal(jax.random.key(2), start.shape)
    aug = functools.partial(dsa, strategy="color_crop_cutout_flip_scale_rotate")
    loss = functools.partial(T.mtt_loss, apply_fn=student.apply_fn, syn_steps=steps,
                             batch_syn=None, augment=aug, mode=mode)
    step = jax.value_and_grad(loss, argnums=(0, 2))
    args = (images, labels, jnp.float32(0.01), start, target, jax.random.key(3))
    jax.block_until_ready(args)
    compiled, compile_s = compile_aot(step, *args)
    times = time_compiled(compiled, args, warmup=1, repeats=repeats)
    (value, (g_img, g_lr)) = compiled(*args)
    mem = compiled_memory(compiled)
    return {
        "bench": "tm_memory", "mode": mode, "syn_steps": steps, "num_params": int(start.size),
        "compile_s": round(compile_s, 2), **{k: round(v, 3) for k, v in summarize(times).items()},
        "repeats": repeats, "flops": compiled_flops(compiled),
        "temp_mib": round(mem.get("temp_bytes", 0) / 2 ** 20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss": float(value), "grad_img_norm": float(jnp.linalg.norm(g_img)),
        "grad_lr": float(g_lr), "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 60])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="syn_steps 10 only, 1 repeat")
    p.add_argument("--one", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        from benchmarks.common import environment
        rec = one(a.one[0], int(a.one[1]), a.repeats, a.width)
        print(json.dumps({**rec, "env": environment()}), flush=True)
        return
    steps, repeats = ([10], 1) if a.quick else (a.steps, a.repeats)
    for s in steps:
        for m in a.modes:
            cmd = [sys.executable, "-m", "benchmarks.tm_memory", "--one", m, str(s),
                   "--repeats", str(repeats), "--width", str(a.width)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            if r.returncode != 0 or not line:
                print(json.dumps({"bench": "tm_memory", "mode": m, "syn_steps": s,
                                  "error": r.stderr.strip().splitlines()[-1:]}), flush=True)
            else:
                print(line[-1], flush=True)


if __name__ == "__main__":
    main()
