"""Sampler throughput on CPU: images/s per solver vs NFE, compile times, and the `lax.scan`
driver against a Python-loop sampler of the same math.

    python -m benchmarks.sampler_cpu            # full run (~5-8 min on the 2-core machine)
    python -m benchmarks.sampler_cpu --quick    # batch 16 only, fewer repeats (~2-3 min)

Network: `unet_for_resolution(16, 1, base_channels=32)` (2 resolutions, attention at 8x8,
random init with a perturbed output layer so it is not the zero function), EDM-preconditioned,
on 16x16x1 images. Grids: Karras, sigma in [0.002, 80], rho 7, final sigma = 0.

Measured:
  1. solver sweep (batch 16): every solver at 10 and 18 steps; images/s, ms per NFE,
     compile time of the whole jitted sampler (AOT), achieved GFLOP/s from the denoiser's XLA
     cost analysis x NFE. All programs are compiled first, then timed round-robin.
  2. scan vs Python loop at 18 Heun steps (35 NFE), batch 1, 16 and 256: the reference structure
     (a Python for-loop that calls a jitted denoiser per evaluation and does the Heun update
     with eager jax.numpy ops, as EDM's PyTorch loop does) against `solvers.sample` jitted as one
     `lax.scan`; both give the same samples (checked). Timed side by side, interleaved.
  3. the same comparison with the 8x8 U-Net of the digits preset (`train_denoiser_digits`
     geometry: the same architecture on 8x8 images, ~4x cheaper per image), batch 1, 16 and 64;
  4. the same comparison for the MLP denoiser on 2-D data (batch 64 and 1,024), the regime of the
     analytic and toy experiments, where per-step overhead dominates.

Prints JSON lines (benchmarks/common.py); results are recorded in
benchmarks/results/sampler_cpu.md.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import emit, environment, measure_sgemm
from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S
from jaxdiff.diffusion.train import nnx_denoiser
from jaxdiff.models.mlp_denoiser import MLPDenoiser
from jaxdiff.models.unet import unet_for_resolution

SOLVERS = {
    "euler": {},
    "heun": {},
    "edm": {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003},
    "ddim": {"eta": 1.0},
    "dpmpp_2m": {},
}


def build_unet(key, resolution=16):
    # 'rbg' keys: the random initialisers compile ~2.5x faster on CPU than threefry.
    net = unet_for_resolution(resolution, 1, base_channels=32,
                              rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    # perturb so the zero-initialised output layers are not exact zeros (timing is unaffected,
    # but the scan-vs-loop equality check then compares non-trivial samples)
    params = unravel(flat + 0.02 * jax.random.normal(key, flat.shape))
    return graphdef, params, rest


def build_mlp(key):
    net = MLPDenoiser(2, hidden=128, depth=3, rngs=nnx.Rngs(jax.random.key(1, impl="rbg")))
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return graphdef, unravel(flat + 0.02 * jax.random.normal(key, flat.shape)), rest


def scan_sampler(graphdef, rest, name):
    """The jitted `lax.scan` sampler: params, x_T, sigmas, key and hyperparameters are arguments."""

    def run(params, x_T, sigmas, key, hp):
        den = nnx_denoiser(graphdef, params, rest)
        return S.sample(S.get_solver(name, **hp), den, x_T, sigmas, key)[0]

    return run


def python_loop_heun(den_jit, params, x, sigmas_host):
    """EDM-style reference loop: Python for-loop, jitted denoiser per evaluation, eager update
    arithmetic (the same Heun math as `solvers.heun`, Euler on the last step)."""
    n = x.shape[0]
    for i in range(len(sigmas_host) - 1):
        s, s_next = float(sigmas_host[i]), float(sigmas_host[i + 1])
        d = (x - den_jit(params, x, jnp.full((n,), s, x.dtype))) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - den_jit(params, x_next, jnp.full((n,), s_next, x.dtype))) / s_next
            x_next = x + (s_next - s) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def interleaved(fns, repeats):
    """Median wall time of each zero-argument callable, measured round-robin (A, B, C, A, B, ...)
    so that the shared machine's load drifts affect all candidates alike. One warm-up call each."""
    for f in fns.values():
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times


def _iqr(v):
    if len(v) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(v, n=4)
    return q3 - q1


def aot(fn, *args):
    """AOT-compile `fn` for `args`; returns (compiled, compile seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def denoiser_flops(graphdef, params, rest, x):
    den = jax.jit(lambda p, x, s: nnx_denoiser(graphdef, p, rest)(x, s, None))
    compiled = den.lower(params, x, jnp.ones(x.shape[0])).compile()
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return (float(ca.get("flops", 0.0)) if ca else None), den


def solver_sweep(graphdef, params, rest, batch, steps_list, repeats, key):
    """All solvers x step counts, compiled ahead of time, then timed round-robin."""
    x_T = jax.block_until_ready(S.prior_sample(key, (batch, 16, 16, 1), 80.0))
    flops, _ = denoiser_flops(graphdef, params, rest, x_T)
    progs, info = {}, {}
    for steps in steps_list:
        sigmas = sch.karras_sigmas(steps)
        for name, hp in SOLVERS.items():
            hp_arr = {k: jnp.float32(v) for k, v in hp.items()}
            args = (params, x_T, sigmas, key, hp_arr)
            compiled, compile_s = aot(scan_sampler(graphdef, rest, name), *args)
            progs[(name, steps)] = functools.partial(compiled, *args)
            nfe = 2 * steps - 1 if name in ("heun", "edm") else steps  # grid ends at sigma = 0
            info[(name, steps)] = (nfe, compile_s)
    med, raw = interleaved(progs, repeats)
    for (name, steps), t in med.items():
        nfe, compile_s = info[(name, steps)]
        rec = {
            "bench": "solver_sweep",
            "solver": name,
            "steps": steps,
            "nfe": nfe,
            "batch": batch,
            "images_per_s": round(batch / t, 2),
            "ms_per_nfe": round(1e3 * t / nfe, 2),
            "median_s": round(t, 4),
            "iqr_s": round(_iqr(raw[(name, steps)]), 4),
            "compile_s": round(compile_s, 2),
        }
        if flops:
            rec["denoiser_gflops_per_s"] = round(flops * nfe / t / 1e9, 1)
        emit(rec)


def scan_vs_loop(graphdef, params, rest, shape, batches, repeats, key, label):
    sigmas = sch.karras_sigmas(18)
    sig_host = np.asarray(sigmas)
    fn = scan_sampler(graphdef, rest, "heun")
    for batch in batches:
        x_T = jax.block_until_ready(S.prior_sample(key, (batch, *shape), 80.0))
        scan_c, scan_compile = aot(lambda p, x, s, k: fn(p, x, s, k, {}), params, x_T, sigmas, key)
        _, den_jit = denoiser_flops(graphdef, params, rest, x_T)
        t0 = time.perf_counter()
        jax.block_until_ready(den_jit(params, x_T, jnp.ones(batch)))
        loop_compile = time.perf_counter() - t0
        cands = {
            "scan": lambda: scan_c(params, x_T, sigmas, key),
            "loop": lambda: python_loop_heun(den_jit, params, x_T, sig_host),
        }
        med, raw = interleaved(cands, repeats)
        a, b = cands["scan"](), cands["loop"]()
        rel = float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12))
        emit({
            "bench": "scan_vs_loop",
            "model": label,
            "solver": "heun",
            "steps": 18,
            "nfe": 35,
            "batch": batch,
            "scan_median_s": round(med["scan"], 5),
            "loop_median_s": round(med["loop"], 5),
            "scan_iqr_s": round(_iqr(raw["scan"]), 5),
            "loop_iqr_s": round(_iqr(raw["loop"]), 5),
            "speedup": round(med["loop"] / med["scan"], 2),
            "scan_images_per_s": round(batch / med["scan"], 1),
            "loop_images_per_s": round(batch / med["loop"], 1),
            "loop_overhead_ms_per_step": round(1e3 * (med["loop"] - med["scan"]) / 18, 3),
            "scan_compile_s": round(scan_compile, 2),
            "loop_denoiser_compile_s": round(loop_compile, 2),
            "max_rel_diff": rel,
        })


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 16 only, fewer repeats")
    ap.add_argument("--only", default="", help="comma-separated sections: sweep, unet16, unet8, "
                    "mlp2d (default all)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(","))) or {"sweep", "unet16", "unet8", "mlp2d"}
    key = jax.random.key(0)
    env = environment()
    emit({"bench": "env", "note": "load average at start"}, env=env)
    emit({"bench": "sgemm", **measure_sgemm(n=512, repeats=10)})
    graphdef, params, rest = build_unet(key)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    emit({"bench": "model", "unet_params": n_params})
    repeats = 3 if args.quick else 7
    if "sweep" in only:
        solver_sweep(graphdef, params, rest, 16, (10, 18), repeats, key)
    if "unet16" in only:
        scan_vs_loop(graphdef, params, rest, (16, 16, 1), (1, 16), repeats, key, "unet16")
        if not args.quick:
            scan_vs_loop(graphdef, params, rest, (16, 16, 1), (256,), 3, key, "unet16")
    if "unet8" in only:
        g8, p8, r8 = build_unet(key, resolution=8)
        scan_vs_loop(g8, p8, r8, (8, 8, 1), (1, 16) if args.quick else (1, 16, 64), repeats, key,
                     "unet8")
    if "mlp2d" in only:
        mg, mp, mr = build_mlp(key)
        scan_vs_loop(mg, mp, mr, (2,), (64, 1024), repeats, key, "mlp2d")
    emit({"bench": "env", "note": "load average at end"})


if __name__ == "__main__":
    main()
