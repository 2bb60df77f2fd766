"""Selection speed and memory on CPU (issue 6): LCMat-S vectorised vs loop-based, and baselines.

Prints JSON lines (see `benchmarks.common`). Workloads, on synthetic CIFAR-10-shaped selection
features (N = classes x class_size samples, 512-d non-negative embeddings, 10 logits from a
linear head; the selection model itself is not part of this benchmark):

* ``one_class``: select 1% of one class (5,000 samples -> 50 picks) with LCMat-S
  (eps 0.01, K 100, C 10, batch scale 1/128);
* ``full_set``: select 1% of every class of the whole training set (50,000 -> 500 picks);
* ``baselines``: the other methods on the whole training set (end-to-end public calls).

LCMat-S variants, all computing the same algorithm:
  ``jax_naive``  -- `jaxdiff.select.lcmat_s(greedy="naive")`: closed-form factored features,
                    blockwise n x n distance matrix, `lax.fori_loop` naive greedy, `lax.map` over
                    classes, one compiled program;
  ``jax_lazy``   -- the same matrix, lazy greedy (same picks, far fewer gain evaluations);
  ``jax_lazy_recompute`` -- lazy greedy recomputing distance rows: no n x n matrix;
  ``loop_numpy`` -- a loop-based port of the reference's structure: per-sample gradients and
                    diagonal Hessians materialised batch by batch ([n, 5130] each, as BackPACK
                    returns them), numpy `var` + argsort, similarity 10 - l2 - eps l1 computed in
                    row chunks (the reference's single n x n x K broadcast would need 10 GB), and
                    a Python loop of naive greedy steps over the float32 similarity matrix.

Compiled programs are built ahead of time (compile time reported separately, FLOPs from
`cost_analysis()`, memory from `memory_analysis()`); timings are medians of blocked calls, run
round-robin (`time_interleaved`) so that load drift on the shared machine hits all variants alike.
NumPy memory is the `tracemalloc` peak of one class (the class loop frees it between classes).
Picks are compared position by position between variants.

Usage::

    python -m benchmarks.select_cpu            # full: ~10 min on 2 shared cores (the loop
                                               # variant alone takes ~5 min on the full set)
    python -m benchmarks.select_cpu --quick    # class size 1000: ~1 min
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (
    compiled_memory,
    emit,
    environment,
    measure_sgemm,
    summarize,
    time_interleaved,
)
from jaxdiff.select import methods as M

EPS, K, CONST, BATCH = 0.01, 100, 10.0, 128

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def make_features(num_classes: int, class_size: int, dim: int, seed: int = 0):
    """CIFAR-10-shaped selection features: labels [N], embeddings [N, D] >= 0, logits [N, C]."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), class_size)).astype(np.int32)
    means = rng.normal(size=(num_classes, dim)).astype(np.float32)
    x = np.maximum(0.3 * means[labels] + rng.normal(size=(labels.size, dim)), 0.0)
    x = x.astype(np.float32)
    logits = (x @ means.T / np.sqrt(dim) * 0.5).astype(np.float32)
    return labels, x, logits


# ---------------------------------------------------------------------------------------------
# Loop-based reference-style implementation (NumPy)
# ---------------------------------------------------------------------------------------------


def loop_lcmat_class(x, z, c, budget, *, chunk=32):
    """LCMat-S for one class the way the reference computes it (see module docstring)."""
    n = x.shape[0]
    grads, hesses = [], []
    for s in range(0, n, BATCH):  # the reference's non-shuffled loader
        xb, zb = x[s:s + BATCH], z[s:s + BATCH]
        e = np.exp(zb - zb.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        r = p.copy()
        r[:, c] -= 1.0
        a = p * (1.0 - p)
        b = len(xb)
        grads.append(np.concatenate([r, (r[:, :, None] * xb[:, None]).reshape(b, -1)], 1) / BATCH)
        hesses.append(np.concatenate([a, (a[:, :, None] * (xb * xb)[:, None]).reshape(b, -1)], 1)
                      / BATCH)
    g = np.concatenate(grads).astype(np.float32)
    h = np.concatenate(hesses).astype(np.float32)
    pick = np.argsort(np.var(h, axis=0))[::-1][:K]
    hk = np.ascontiguousarray(h[:, pick])
    sq = (g * g).sum(1)
    sim = np.empty((n, n), np.float32)
    for s in range(0, n, chunk):
        l2 = np.sqrt(np.maximum(sq[s:s + chunk, None] + sq[None] - 2.0 * g[s:s + chunk] @ g.T, 0))
        l1 = np.abs(hk[s:s + chunk, None] - hk[None]).sum(-1)
        sim[s:s + chunk] = CONST - l2 - EPS * l1
    cur = np.zeros(n, np.float32)
    selected = np.zeros(n, bool)
    picks = []
    for _ in range(budget):  # NaiveGreedy + FacilityLocation
        gains = np.maximum(sim - cur[None], 0.0).sum(1)
        gains[selected] = -np.inf
        j = int(np.argmax(gains))
        picks.append(j)
        selected[j] = True
        cur = np.maximum(cur, sim[j])
    return picks


def loop_lcmat(labels, x, z, num_classes, fraction):
    """Class loop of `loop_lcmat_class`: dataset indices, class-major, pick order."""
    out = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        out.append(rows[loop_lcmat_class(x[rows], z[rows], c, round(fraction * rows.size))])
    return np.concatenate(out)


def numpy_peak_bytes(fn, *args) -> int:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------------------------
# Compiled LCMat-S (the same program `jaxdiff.select.lcmat_s` runs)
# ---------------------------------------------------------------------------------------------


def compile_lcmat(labels, x, z, num_classes, fraction, greedy):
    data = (jnp.asarray(x), jnp.asarray(z))
    prep = M.prepare_classes(M.lcmat_kernel, None, labels, num_classes, fraction, data,
                      config=(K, greedy, False, BATCH, 256),
                      params={"eps": jnp.float32(EPS), "constant": jnp.float32(CONST)})
    t0 = time.perf_counter()
    compiled = M.run_classes.lower(*prep.args, **prep.static).compile()
    compile_s = time.perf_counter() - t0
    dyn = jax.block_until_ready(prep.args[2:])

    def run(*args):
        glob, w, info = compiled(*args)
        return M.assemble_selection(prep, glob, w, info)

    return run, dyn, compile_s, compiled


def lcmat_flops(num_classes, n, dim, c):
    """Analytic FLOPs of the distances (the dominant term) in the factored form: per class
    2 n^2 (C + D) for the Gram matrix and 3 n^2 K for the L1 term (sub, abs, add). The loop
    variant does more work for the same result (its Gram matrix is 2 n^2 C (D + 1))."""
    return num_classes * (2.0 * n * n * (c + dim) + 3.0 * n * n * K)


GREEDIES = ("naive", "lazy", "lazy_recompute")


def bench_lcmat(name, labels, x, z, num_classes, fraction, repeats, loop_repeats, env,
                loop_memory=False):
    n = int(np.bincount(labels).max())
    variants, meta = {}, {}
    for greedy in GREEDIES:
        run, dyn, compile_s, compiled = compile_lcmat(labels, x, z, num_classes, fraction, greedy)
        variants[f"jax_{greedy}"] = (run, dyn)
        # (XLA's cost_analysis counts a while-loop body once, so its FLOPs are not reported;
        # the analytic distance FLOPs below are.)
        meta[f"jax_{greedy}"] = {"compile_s": round(compile_s, 2), **compiled_memory(compiled)}
    picks = {k: np.asarray(fn(*a).indices) for k, (fn, a) in variants.items()}
    if name == "full_set":  # the public API must run the very same program
        public = M.lcmat_s(None, labels, num_classes, fraction, embeddings=x, logits=z)
        assert np.array_equal(np.asarray(public.indices), picks["jax_naive"])
    loop_args = (labels, x, z, num_classes, fraction)
    t0 = time.perf_counter()
    picks["loop_numpy"] = loop_lcmat(*loop_args)
    loop_times = [time.perf_counter() - t0]
    meta["loop_numpy"] = {}
    if loop_memory:
        meta["loop_numpy"]["peak_bytes"] = numpy_peak_bytes(loop_lcmat, *loop_args)
    times = time_interleaved(
        {**variants, **({"loop_numpy": (loop_lcmat, loop_args)} if loop_repeats > 1 else {})},
        warmup=0, repeats=max(loop_repeats - 1, 0) or repeats)
    times["loop_numpy"] = loop_times + times.get("loop_numpy", [])
    if repeats > len(times["jax_naive"]):
        more = time_interleaved(variants, warmup=0, repeats=repeats - len(times["jax_naive"]))
        for k in more:
            times[k] += more[k]
    flops = lcmat_flops(num_classes, n, x.shape[1], z.shape[1])
    loop_med = summarize(times["loop_numpy"])["median_s"]
    for k, ts in times.items():
        st = summarize(ts)
        emit({
            "name": f"lcmat_s/{name}/{k}", "samples": int(labels.size), "classes": num_classes,
            "picks": int(picks[k].size), **st, "repeats": len(ts),
            "speedup_vs_loop": round(loop_med / st["median_s"], 2),
            "distance_gflop": round(flops / 1e9, 1),
            "distance_gflops_per_s": round(flops / st["median_s"] / 1e9, 2),
            "same_picks_as_loop": int(np.sum(picks[k] == picks["loop_numpy"])),
            "same_picks_as_jax_naive": int(np.sum(picks[k] == picks["jax_naive"])),
            **meta[k],
        }, env=env)


# ---------------------------------------------------------------------------------------------
# Baselines (end-to-end public calls, warm)
# ---------------------------------------------------------------------------------------------


def bench_baselines(labels, x, z, num_classes, fraction, repeats, env):
    key = jax.random.key(0)
    correct = np.random.default_rng(1).random((10, labels.size)) < 0.7
    x, z = jnp.asarray(x), jnp.asarray(z)
    calls = {
        "uniform": lambda: M.uniform(key, labels, num_classes, fraction),
        "herding": lambda: M.herding(key, labels, num_classes, fraction, embeddings=x),
        "kcenter": lambda: M.kcenter(key, labels, num_classes, fraction, embeddings=x),
        "forgetting": lambda: M.forgetting(key, labels, num_classes, fraction, correct=correct),
        "grand": lambda: M.grand(key, labels, num_classes, fraction, embeddings=x, logits=z),
        "craig_naive": lambda: M.craig(key, labels, num_classes, fraction, embeddings=x,
                                       logits=z, greedy="naive"),
        "craig_lazy": lambda: M.craig(key, labels, num_classes, fraction, embeddings=x,
                                      logits=z, greedy="lazy"),
        "gradmatch": lambda: M.gradmatch(key, labels, num_classes, fraction, embeddings=x,
                                         logits=z),
    }
    first = {}
    for k, fn in calls.items():  # first call: tracing + compilation + one run
        t0 = time.perf_counter()
        jax.block_until_ready(fn().indices)
        first[k] = time.perf_counter() - t0
    times = time_interleaved({k: (lambda f=f: f().indices, ()) for k, f in calls.items()},
                             warmup=0, repeats=repeats)
    for k, ts in times.items():
        st = summarize(ts)
        emit({"name": f"baseline/full_set/{k}", "samples": int(labels.size), **st,
              "repeats": len(ts), "first_call_s": round(first[k], 3)}, env=env)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="class size 1000, fewer repeats")
    ap.add_argument("--class-size", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=("one_class", "full_set", "baselines"), default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.class_size, args.repeats = 1000, 3
    env = environment()
    emit({"name": "sgemm", **measure_sgemm(repeats=5)}, env=env)
    labels, x, z = make_features(args.classes, args.class_size, args.dim)
    if args.only in (None, "one_class"):
        rows = np.flatnonzero(labels == 0)
        bench_lcmat("one_class", np.zeros(rows.size, np.int32), x[rows], z[rows], 1,
                    args.fraction, args.repeats, loop_repeats=3, env=environment(),
                    loop_memory=True)
    if args.only in (None, "full_set"):
        bench_lcmat("full_set", labels, x, z, args.classes, args.fraction, 3, loop_repeats=1,
                    env=environment())
    if args.only in (None, "baselines"):
        bench_baselines(labels, x, z, args.classes, args.fraction, 3, env=environment())


if __name__ == "__main__":
    main()
