"""Shared timing helpers for jaxdiff benchmarks (DESIGN.md §3, jax-practice.md §9).

The measuring discipline every benchmark follows:

1. inputs are placed on the device and blocked on before anything is timed;
2. the function is compiled ahead of time (`jax.jit(f).lower(*args).compile()`) and the
   compile time is reported separately;
3. the compiled callable is warmed up, then timed over repetitions, each wrapped in
   `jax.block_until_ready`; the median and inter-quartile range are reported;
4. FLOPs come from `compiled.cost_analysis()` and memory from `compiled.memory_analysis()`,
   so throughput is "what XLA says the program does" divided by the median time;
5. throughput is also reported as a fraction of a single-precision GEMM measured in the same
   process (`measure_sgemm`), because absolute timings on a shared 2-core machine drift.

Results are emitted as JSON lines carrying the environment (`environment()`): device, jax and
jaxlib versions, dtype and the load average at the time of measurement.

Typical use::

    timing = time_jitted(step, params, batch, name="train_step")
    emit({**timing.as_dict(), "images_per_s": batch_size / timing.median_s})

    # comparing variants: compile each, then time them round-robin so load drift cancels
    a, _ = compile_aot(step_a, *args); b, _ = compile_aot(step_b, *args)
    times = time_interleaved({"a": (a, args), "b": (b, args)}, repeats=9)
    speedup = summarize(times["a"])["median_s"] / summarize(times["b"])["median_s"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def environment(dtype: Any = jnp.float32) -> dict[str, Any]:
    """Facts that make a figure interpretable: device, versions, dtype, machine load."""
    dev = jax.devices()[0]
    try:
        load1, load5, load15 = os.getloadavg()
    except OSError:  # not available on every OS
        load1 = load5 = load15 = float("nan")
    import jaxlib

    return {
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', dev.platform)}",
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "dtype": jnp.dtype(dtype).name,
        "loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # glibc malloc settings change XLA:CPU's per-call buffer cost (see minor_page_faults).
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }


def minor_page_faults() -> int:
    """Minor page faults of this process so far (Linux/macOS; -1 where unavailable).

    XLA:CPU allocates its temporaries per call; with glibc's default malloc, buffers over
    32 MiB are fresh mmaps, so every call first-touches (faults in) all of its temporary
    memory. Differences of this counter around a call show how much.
    """
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    except (ImportError, OSError):
        return -1


def _first_dict(analysis: Any) -> dict[str, Any]:
    # cost_analysis() returned a list with one dict per computation in older jax releases and
    # a single dict in newer ones; accept both.
    if analysis is None:
        return {}
    if isinstance(analysis, (list, tuple)):
        return dict(analysis[0]) if analysis else {}
    return dict(analysis)


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of an AOT-compiled function, as XLA's cost model counts them."""
    try:
        flops = _first_dict(compiled.cost_analysis()).get("flops")
    except Exception:  # some backends do not implement cost analysis
        return None
    return float(flops) if flops is not None and flops > 0 else None


def compiled_memory(compiled: Any) -> dict[str, int]:
    """Argument/output/temp sizes in bytes from `memory_analysis()`; `peak_bytes` is their sum
    minus aliased bytes (an upper bound on what the executable holds live at once)."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return {}
    if m is None:
        return {}
    out = {
        k: int(getattr(m, f"{k}_size_in_bytes", 0))
        for k in ("argument", "output", "alias", "temp", "generated_code")
    }
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return {f"{k}_bytes": v for k, v in out.items()}


@dataclasses.dataclass
class Timing:
    """Result of `time_jitted`: seconds per call and what the compiler reports."""

    name: str
    compile_s: float
    median_s: float
    iqr_s: float
    min_s: float
    repeats: int
    flops: float | None
    memory: dict[str, int]

    @property
    def gflops_per_s(self) -> float | None:
        return None if self.flops is None else self.flops / self.median_s / 1e9

    def as_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "compile_s": round(self.compile_s, 3),
            "median_s": self.median_s,
            "iqr_s": self.iqr_s,
            "min_s": self.min_s,
            "repeats": self.repeats,
            "flops": self.flops,
            "gflops_per_s": None if self.flops is None else round(self.gflops_per_s, 2),
        }
        d.update(self.memory)
        return d


def compile_aot(
    fn: Callable[..., Any], *args: Any, static_argnums: Sequence[int] = ()
) -> tuple[Any, float]:
    """`jax.jit(fn).lower(*args).compile()` and the seconds it took (tracing included)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, static_argnums=tuple(static_argnums)).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, inter-quartile range and minimum of a list of seconds."""
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4)
    else:
        q1 = q3 = times[0]
    return {"median_s": statistics.median(times), "iqr_s": q3 - q1, "min_s": min(times)}


def time_compiled(
    compiled: Callable[..., Any],
    args: Sequence[Any],
    *,
    warmup: int = 2,
    repeats: int = 10,
    min_time_s: float = 0.0,
) -> list[float]:
    """Wall-clock seconds of `repeats` (or more, until `min_time_s` is spent) blocked calls."""
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return times


def time_interleaved(
    calls: dict[str, tuple[Callable[..., Any], Sequence[Any]]],
    *,
    warmup: int = 2,
    repeats: int = 10,
) -> dict[str, list[float]]:
    """Time several compiled callables round-robin: one call of each per round.

    On a shared machine the load drifts; interleaving makes every variant see the same drift,
    so ratios between them are far more stable than ratios of separate timing loops.

    Args:
      calls: name -> (compiled callable, its arguments).
    Returns:
      name -> list of `repeats` wall-clock seconds (each call wrapped in block_until_ready).
    """
    for fn, args in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return times


def time_jitted(
    fn: Callable[..., Any],
    *args: Any,
    name: str = "",
    warmup: int = 2,
    repeats: int = 10,
    min_time_s: float = 0.0,
    static_argnums: Sequence[int] = (),
) -> Timing:
    """AOT-compile `fn` for `args`, then time it (median and IQR of blocked calls).

    Args are placed on the default device and blocked on first, so transfer is not timed.
    (No donation: a donated input dies after the first call, so the same arguments could not
    be timed repeatedly; time a donating step inside a `lax.scan` instead.)
    """
    args = jax.block_until_ready(jax.device_put(args))
    compiled, compile_s = compile_aot(fn, *args, static_argnums=static_argnums)
    static = set(static_argnums)
    dyn_args = [a for i, a in enumerate(args) if i not in static]
    times = time_compiled(
        compiled, dyn_args, warmup=warmup, repeats=repeats, min_time_s=min_time_s
    )
    stats = summarize(times)
    return Timing(
        name=name or getattr(fn, "__name__", "fn"),
        compile_s=compile_s,
        median_s=stats["median_s"],
        iqr_s=stats["iqr_s"],
        min_s=stats["min_s"],
        repeats=len(times),
        flops=compiled_flops(compiled),
        memory=compiled_memory(compiled),
    )


def make_sgemm(
    n: int = 1024, dtype: Any = jnp.float32, chain: int = 8
) -> tuple[Any, tuple[Any, Any], float]:
    """An AOT-compiled chain of `chain` dependent `[n, n] @ [n, n]` products.

    Returns (compiled, args, flops) so that the SGEMM can be timed round-robin with other
    workloads (`time_interleaved`), i.e. under exactly the same machine load.
    """
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), dtype) / np.sqrt(n)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype) / np.sqrt(n)

    def chained(a, b):
        # Each product feeds the next so none can be hoisted or skipped (b is scaled by
        # 1/sqrt(n) at creation, so values stay O(1)).
        for _ in range(chain):
            a = a @ b
        return a

    args = jax.block_until_ready((a, b))
    compiled, _ = compile_aot(chained, *args)
    return compiled, args, 2.0 * n**3 * chain


def measure_sgemm(
    n: int = 1024, dtype: Any = jnp.float32, repeats: int = 20, chain: int = 8
) -> dict[str, Any]:
    """Sustained GEMM throughput of this process's default device, in GFLOP/s.

    Times `chain` dependent `[n, n] @ [n, n]` products in one compiled call (so dispatch
    overhead is amortised and XLA cannot elide work), and counts 2 n^3 FLOPs per product.
    """
    compiled, args, flops = make_sgemm(n, dtype, chain)
    times = time_compiled(compiled, args, repeats=repeats)
    stats = summarize(times)
    return {
        "name": f"sgemm_{n}",
        "n": n,
        "median_s": stats["median_s"],
        "iqr_s": stats["iqr_s"],
        "gflops_per_s": round(flops / stats["median_s"] / 1e9, 2),
        "best_gflops_per_s": round(flops / stats["min_s"] / 1e9, 2),
    }


def emit(record: dict[str, Any], *, file: Any = None, env: dict[str, Any] | None = None) -> None:
    """Print one JSON line: `record` plus the environment (unless `env` is given explicitly)."""
    env = environment() if env is None else env
    line = json.dumps({**record, "env": env}, default=_json_default, sort_keys=False)
    print(line, file=file or sys.stdout, flush=True)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
