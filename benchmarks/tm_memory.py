"""Trajectory matching: seconds per iteration and peak memory vs syn_steps, for the three gradient
modes of `jaxdiff.distill.trajectory.mtt_loss` ("unroll", "remat", "tesla").

Shapes: CIFAR-10 IPC 1, ConvNet-D3 width 128 instance norm (320,010 parameters), per-sample DSA
every step. Parameterisations (`--params`): pixel (10 images 32x32x3, batch_syn = all 10), FreD
(the `distill_cifar10` preset's DCT coefficients at IPC 1: 160 instances) and DDiF (its SIRENs at
IPC 1: 370 fields, initialised without the warm-up fit, which does not change the cost), built
with `jaxdiff.pipelines.distill.parameterisation` exactly as `jaxdiff distill` builds them. For FreD and DDiF
each iteration decodes only the `syn_steps * batch_syn` instances it uses (the references'
subset decoding, as `jaxdiff distill` does) inside the differentiated function, with
`--batch-syn` (default 10, i.e. the same student work per step as pixel, so the rows isolate
the parameterisation's own cost; 0 = all instances every step, the DDiF script's choice, which
multiplies the unroll by 16-37x). One TM iteration = value and gradient of the loss w.r.t.
(synthetic parameters, syn_lr).

Each (mode, syn_steps) runs in its own subprocess so that the process's peak RSS
(`ru_maxrss`) belongs to that configuration alone. Reported per line: compile seconds, median
seconds per iteration, XLA's FLOPs, `memory_analysis()` temp bytes (the compiler's scratch
allocation: activations and residuals kept for the backward pass), peak RSS, and the load
average. Timings on the shared 2-core dev machine are contended: compare modes within a run.

    python -m benchmarks.tm_memory                           # syn_steps 10 20 40 60
    python -m benchmarks.tm_memory --steps 10 20 --repeats 2
    python -m benchmarks.tm_memory --quick                   # syn_steps 10, 1 repeat
    python -m benchmarks.tm_memory --params fred ddif --steps 10 20 40 60
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


def synthetic_set(param_name: str):
    """`(params, decode)` of the `distill_cifar10` preset's parameterisation at IPC 1:
    `decode(params) -> [N, 32, 32, 3]` (N = 10 for pixel/FreD, 370 fields for DDiF)."""
    import jax

    from jaxdiff.config_utils import build_config
    from jaxdiff.pipelines.distill import parameterisation
    from jaxdiff.specs.distill import resolve

    cfg = build_config("distill_cifar10", [("param.name", param_name), ("ipc", "1")])
    param = parameterisation(resolve(cfg), skip_warmup=True)
    # Stand-in "real" images (20 per class): init cost and shapes only, values irrelevant here.
    real = jax.random.normal(jax.random.key(1), (10, 20, 32, 32, 3))
    params, static = param.init(jax.random.key(4), real)
    return (params, lambda p, index: param.decode(p, static, index),
            lambda index: param.labels(static, index))


def one(mode: str, steps: int, repeats: int, width: int, param_name: str = "pixel",
        batch_syn: int = 10) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from benchmarks.common import compile_aot, compiled_flops, compiled_memory, summarize, \
        time_compiled
    from jaxdiff import models
    from jaxdiff.distill import trajectory as T
    from jaxdiff.distill.augment import augment as dsa

    mk = functools.partial(models.ConvNet, in_channels=3, num_classes=10, image_size=32, depth=3,
                           width=width)
    student = T.flat_student(mk, jax.random.key(0))
    if param_name == "pixel":
        syn, decode = jax.random.normal(jax.random.key(1), (10, 32, 32, 3)), lambda p: p
        labels, batch_syn, n_used = jnp.arange(10), None, 10
    else:
        syn, decode_index, labels_of = synthetic_set(param_name)
        n_total = jax.tree.leaves(syn)[0].shape[0]
        n_used = n_total if not batch_syn else min(n_total, steps * batch_syn)
        index = jnp.arange(n_used)  # a fixed subset: its size, not which one, sets the cost
        decode, labels = (lambda p: decode_index(p, index)), labels_of(index)
        batch_syn = batch_syn or None
    start = student.init_flat
    target = start + 1e-2 * jax.random.normal(jax.random.key(2), start.shape)
    aug = functools.partial(dsa, strategy="color_crop_cutout_flip_scale_rotate")
    mtt = functools.partial(T.mtt_loss, apply_fn=student.apply_fn, syn_steps=steps,
                            batch_syn=batch_syn, augment=aug, mode=mode)

    def loss(syn, labels, lr, start, target, key):
        return mtt(decode(syn), labels, lr, start, target, key)

    step = jax.value_and_grad(loss, argnums=(0, 2))
    args = (syn, labels, jnp.float32(0.01), start, target, jax.random.key(3))
    jax.block_until_ready(args)
    compiled, compile_s = compile_aot(step, *args)
    times = time_compiled(compiled, args, warmup=1, repeats=repeats)
    (value, (g_img, g_lr)) = compiled(*args)
    mem = compiled_memory(compiled)
    return {
        "bench": "tm_memory", "param": param_name, "mode": mode, "syn_steps": steps,
        "num_params": int(start.size),
        "syn_floats": int(sum(x.size for x in jax.tree.leaves(syn))),
        "batch_syn": batch_syn or n_used, "decoded_per_iteration": n_used,
        "compile_s": round(compile_s, 2), **{k: round(v, 3) for k, v in summarize(times).items()},
        "repeats": repeats, "flops": compiled_flops(compiled),
        "temp_mib": round(mem.get("temp_bytes", 0) / 2 ** 20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss": float(value), "grad_syn_norm": float(optax.tree.norm(g_img)),
        "grad_lr": float(g_lr), "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 60])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--params", nargs="+", default=["pixel"], choices=("pixel", "fred", "ddif"))
    p.add_argument("--batch-syn", type=int, default=10,
                   help="FreD/DDiF decoded images per inner step (0: all instances)")
    p.add_argument("--quick", action="store_true", help="syn_steps 10 only, 1 repeat")
    p.add_argument("--one", nargs=3, metavar=("PARAM", "MODE", "STEPS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        from benchmarks.common import environment
        rec = one(a.one[1], int(a.one[2]), a.repeats, a.width, a.one[0], a.batch_syn)
        print(json.dumps({**rec, "env": environment()}), flush=True)
        return
    steps, repeats = ([10], 1) if a.quick else (a.steps, a.repeats)
    for prm in a.params:
        for s in steps:
            for m in a.modes:
                cmd = [sys.executable, "-m", "benchmarks.tm_memory", "--one", prm, m, str(s),
                       "--repeats", str(repeats), "--width", str(a.width),
                       "--batch-syn", str(a.batch_syn)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
                if r.returncode != 0 or not line:
                    print(json.dumps({"bench": "tm_memory", "param": prm, "mode": m,
                                      "syn_steps": s,
                                      "error": r.stderr.strip().splitlines()[-1:]}), flush=True)
                else:
                    print(line[-1], flush=True)


if __name__ == "__main__":
    main()
