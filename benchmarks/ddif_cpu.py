"""DDiF on CPU: batched neural fields vs the reference's per-instance loops (issue 4, item 7).

Prints JSON lines (see `benchmarks.common`):

* ``decode`` (7a): decode all 3,790 fields of CIFAR-10 IPC10 (L = 2, d = 6, 32x32x3):
  - ``batched``: one jitted `decode(params, static)` of every field;
  - ``loop``: the reference's structure, a Python loop over the 3,790 instances calling a jitted
    single-instance decode (the same math; outputs kept, blocked once at the end so JAX's
    asynchronous dispatch can overlap the calls — the kindest timing for the loop);
  - ``batched_xla_kernels``: the batched decode written with `jnp.sin` and `einsum`, to separate
    the gain of batching from that of the CPU kernels of `neural_field` (polynomial sine,
    unrolled small contractions).
* ``warmup`` (7b): the warm-up fit of the 370 fields of CIFAR-10 IPC1 (Adam 5e-4):
  - ``batched``: `fit_fields` of all 370 at once, ``--steps`` steps in one `lax.scan`;
  - ``sequential_scan``: `fit_fields` of ONE field for the same steps (its own compiled scan:
    the fastest sequential schedule), timed for ``--seq-instances`` different fields;
  - ``sequential_python``: the reference's structure, one field, a Python loop calling a jitted
    Adam step ``--steps`` times.
  Totals are extrapolated linearly to 5,000 steps x 370 fields (the reference's cost), and the
  ratios are reported for the same work.

Variants are compiled ahead of time and timed round-robin (`time_interleaved`), so load drift on
the shared machine hits them equally; the load average is in every record.

Usage::

    python -m benchmarks.ddif_cpu                 # ~2-4 min on the shared 2-core VM
    python -m benchmarks.ddif_cpu --quick         # fewer steps and repeats, ~1 min
    python -m benchmarks.ddif_cpu --reuse-heap    # glibc keeps freed buffers (see below)

XLA:CPU allocates each call's temporaries afresh; with glibc's default malloc, buffers over
32 MiB are new mmaps, so every call page-faults them in (~0.4 ms/MB on the dev VM). Decoding
3,790 fields touches ~140 MB (layer activations and the 47 MB output), which more than doubles
its time. ``--reuse-heap`` re-executes the script with the same GLIBC_TUNABLES as
`benchmarks.conv_cpu` so that freed buffers are reused; the page-fault count per call is
recorded either way.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import (
    compile_aot,
    compiled_flops,
    emit,
    environment,
    measure_sgemm,
    minor_page_faults,
    summarize,
    time_interleaved,
)
from jaxdiff.distill.budget import ddif_budget
from jaxdiff.distill.params import (
    coordinate_grid,
    ddif_preset,
    fit_fields,
    get_parameterisation,
    init_siren,
    siren_apply,
)

REF_STEPS = 5000  # the reference's epochs_init
from jaxdiff.runtime import REUSE_HEAP_TUNABLES  # noqa: E402


def _faults_per_call(fn, args, calls=3):
    before = minor_page_faults()
    for _ in range(calls):
        jax.block_until_ready(fn(*args))
    return (minor_page_faults() - before) // calls


def _cifar_like(key, num_classes, n_real, shape=(32, 32, 3)):
    """Stand-in for normalised CIFAR-10 (timing does not depend on the pixel values)."""
    return jax.random.normal(key, (num_classes, n_real, *shape), jnp.float32)


def _xla_kernels_decode(params, grid, w0_initial, w0):
    """The same fields with XLA's own `sin` and batched `einsum` (attribution only)."""
    x = grid.reshape(-1, grid.shape[-1])
    h = jnp.sin(w0_initial * (jnp.einsum("pn,bnd->bpd", x, params["W1"]) + params["b1"][:, None]))
    for layer in range(params["Wh"].shape[1]):
        h = jnp.sin(w0 * (jnp.einsum("bpd,bde->bpe", h, params["Wh"][:, layer]) + params["bh"][:, layer, None]))
    out = jnp.einsum("bpd,bdm->bpm", h, params["Wo"]) + params["bo"][:, None]
    return out.reshape(out.shape[0], *grid.shape[:-1], out.shape[-1])


def bench_decode(key, repeats, env):
    cfg = ddif_preset("cifar10", 10)
    param = get_parameterisation(
        "ddif", ipc=10, depth=cfg.depth, width=cfg.width, w0_initial=cfg.w0_initial, w0=cfg.w0,
        warmup_steps=0,
    )
    report = param.plan((32, 32, 3), 10)
    real = _cifar_like(key, 10, report.instances_per_class)
    params, static = jax.block_until_ready(param.init(key, real))
    n = report.total_instances

    batched, compile_b = compile_aot(param.decode, params, static)
    one, compile_1 = compile_aot(param.decode, params, static, jnp.zeros((1,), jnp.int32))
    xla, compile_x = compile_aot(
        functools.partial(_xla_kernels_decode, w0_initial=cfg.w0_initial, w0=cfg.w0), params, static["grid"]
    )
    indices = [jax.device_put(jnp.array([i], jnp.int32)) for i in range(n)]  # not timed

    def loop(params, static):
        return [one(params, static, idx) for idx in indices]

    # same outputs, bit for bit
    ref = np.asarray(batched(params, static))
    # bit-identical on jax 0.10; a few ulps apart on newer XLA (see tests/distill/params/test_neural_field.py)
    assert all(np.allclose(np.asarray(one(params, static, indices[i]))[0], ref[i], rtol=1e-6, atol=2e-7)
               for i in (0, n - 1))

    times = time_interleaved(
        {"batched": (batched, (params, static)), "batched_xla_kernels": (xla, (params, static["grid"])),
         "loop": (loop, (params, static))},
        warmup=1, repeats=repeats,
    )
    stats = {k: summarize(v) for k, v in times.items()}
    flops = compiled_flops(batched)
    faults = _faults_per_call(batched, (params, static))
    for name, compile_s in (("batched", compile_b), ("batched_xla_kernels", compile_x), ("loop", compile_1)):
        s = stats[name]
        emit({
            "bench": "ddif_decode", "variant": name, "instances": n, "setting": "CIFAR-10 IPC10 L2 d6",
            **{k: round(v, 5) for k, v in s.items()}, "repeats": len(times[name]),
            "compile_s": round(compile_s, 3),
            "per_instance_us": round(1e6 * s["median_s"] / n, 2),
            "speedup_vs_loop": round(stats["loop"]["median_s"] / s["median_s"], 2),
            **({"xla_flops": flops, "gflops_per_s": round(flops / s["median_s"] / 1e9, 2),
                "page_faults_per_call": faults} if name == "batched" and flops else {}),
        }, env=env)
    return stats


def bench_warmup(key, steps, seq_instances, repeats, env):
    cfg = ddif_preset("cifar10", 1)
    n = ddif_budget(1, (32, 32, 3), 10, depth=cfg.depth, width=cfg.width).total_instances  # 370
    grid = coordinate_grid((32, 32))
    params = init_siren(key, n, in_dim=2, depth=cfg.depth, width=cfg.width, out_dim=3, w0=cfg.w0)
    targets = jax.random.normal(jax.random.fold_in(key, 1), (n, 32, 32, 3), jnp.float32)
    kw = dict(steps=steps, lr=5e-4, w0_initial=cfg.w0_initial, w0=cfg.w0)

    def fit(p, t):
        r = fit_fields(p, grid, t, **kw)
        return r.params, r.mse

    batched, compile_b = compile_aot(fit, params, targets)
    singles = [
        (jax.tree.map(lambda x, i=i: x[i : i + 1], params), targets[i : i + 1])
        for i in range(seq_instances)
    ]
    single, compile_1 = compile_aot(fit, *singles[0])

    # the reference's structure: a fresh Adam per field, one jitted step per Python iteration
    opt = optax.adam(5e-4)

    def loss(p, t):
        return jnp.mean(jnp.square(siren_apply(p, grid, w0_initial=cfg.w0_initial, w0=cfg.w0) - t))

    def adam_step(p, s, t):
        g = jax.grad(loss)(p, t)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    p0, t0 = singles[0]
    step_c, compile_s = compile_aot(adam_step, p0, opt.init(p0), t0)

    def seq_scan():
        return [single(p, t) for p, t in singles]

    def seq_python(p=p0, t=t0):
        s = opt.init(p)
        for _ in range(steps):
            p, s = step_c(p, s, t)
        return p

    # correctness guard: a batched fit equals the per-instance fits (to rounding; see tests)
    bp, _ = batched(params, targets)
    sp, _ = single(*singles[1])
    err = max(float(jnp.abs(bp[k][1] - sp[k][0]).max()) for k in bp)
    assert err < 1e-5 * steps * 5e-4, err

    times = time_interleaved(
        {"batched": (batched, (params, targets)), "sequential_scan": (seq_scan, ()),
         "sequential_python": (seq_python, ())},
        warmup=1, repeats=repeats,
    )
    stats = {k: summarize(v) for k, v in times.items()}

    # XLA's cost analysis counts a while-loop body once, so take FLOPs from one batched step
    def batched_step(p, s, t):
        g = jax.grad(lambda p: jnp.sum(jnp.mean(jnp.square(
            siren_apply(p, grid, w0_initial=cfg.w0_initial, w0=cfg.w0) - t), axis=(1, 2, 3))))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    step_flops = compiled_flops(compile_aot(batched_step, params, opt.init(params), targets)[0])
    flops = step_flops * steps if step_flops else None
    # seconds per (field x step) of each schedule, then the reference's total work
    per_unit = {
        "batched": stats["batched"]["median_s"] / (n * steps),
        "sequential_scan": stats["sequential_scan"]["median_s"] / (seq_instances * steps),
        "sequential_python": stats["sequential_python"]["median_s"] / steps,
    }
    for name, compile_s_ in (("batched", compile_b), ("sequential_scan", compile_1), ("sequential_python", compile_s)):
        total = per_unit[name] * n * REF_STEPS
        emit({
            "bench": "ddif_warmup", "variant": name, "instances": n, "setting": "CIFAR-10 IPC1 L2 d6",
            "timed_steps": steps, "timed_instances": {"batched": n, "sequential_scan": seq_instances,
                                                      "sequential_python": 1}[name],
            **{k: round(v, 5) for k, v in stats[name].items()}, "repeats": len(times[name]),
            "compile_s": round(compile_s_, 3),
            "us_per_instance_step": round(1e6 * per_unit[name], 3),
            "extrapolated_total_s": round(total, 1), "extrapolated_to": f"{n} fields x {REF_STEPS} steps",
            "speedup_of_batched": round(per_unit[name] / per_unit["batched"], 2),
            **({"xla_flops": flops, "gflops_per_s": round(flops / stats["batched"]["median_s"] / 1e9, 2)}
               if name == "batched" and flops else {}),
        }, env=env)
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    ap.add_argument("--steps", type=int, default=None, help="warm-up steps timed (default 200; quick 50)")
    ap.add_argument("--seq-instances", type=int, default=5, help="fields fitted one by one")
    ap.add_argument("--repeats", type=int, default=None, help="timing rounds (default 9; quick 3)")
    ap.add_argument("--only", choices=("decode", "warmup"), default=None)
    ap.add_argument("--reuse-heap", action="store_true",
                    help="re-run with GLIBC_TUNABLES that keep freed buffers (no per-call page faults)")
    args = ap.parse_args(argv)
    if args.reuse_heap and os.environ.get("GLIBC_TUNABLES") != REUSE_HEAP_TUNABLES:
        env = dict(os.environ, GLIBC_TUNABLES=REUSE_HEAP_TUNABLES)
        rest = list(argv if argv is not None else sys.argv[1:])
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.ddif_cpu", *rest], env)
    steps = args.steps or (50 if args.quick else 200)
    repeats = args.repeats or (3 if args.quick else 9)
    key = jax.random.key(0)
    env = environment()
    emit({"bench": "sgemm", **measure_sgemm(n=512, repeats=5)}, env=env)
    if args.only in (None, "decode"):
        bench_decode(key, repeats, environment())
    if args.only in (None, "warmup"):
        bench_warmup(key, steps, args.seq_instances, max(3, repeats // 3), environment())


if __name__ == "__main__":
    main()
