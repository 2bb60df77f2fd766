"""Per-program XLA compile options for jaxdiff's hot CPU programs.

XLA:CPU's default HLO scheduler is "concurrency optimized": it orders independent work (a
layer's weight-gradient GEMMs beside its input-gradient convolution, the tap copies of the next
GEMMs beside a forward convolution) so that the thunk executor can run it side by side. Each of
those kernels already uses every core, so on a small CPU the overlap only makes them wait for
each other: in a profile of the ConvNet-D3 train step (batch 256, 2 cores) a convolution that
takes 63-70 ms alone took 90-113 ms while an overlapped GEMM held the other core, and the
threads spent ~80 ms per step waiting in the convolutions' thread pool. The "memory optimized"
scheduler runs the same program one kernel at a time: the step took 0.58-0.61 s instead of
0.64-0.66 s and needs 723 MiB of temporaries instead of 917 MiB; with the fused norm block of
`jaxdiff.ops` as well, 0.555 against 0.585 s (benchmarks/results/evaluate_cpu.md §5). It changes the order of independent kernels, not the
arithmetic: results are bitwise the same (tests/test_xla_options.py).

`cpu_compiler_options()` is what jaxdiff passes as `jax.jit(..., compiler_options=...)` to the
programs it compiles for CPU devices. Set `JAXDIFF_XLA_CPU_SCHEDULER=xla` to keep XLA's
default; a scheduler chosen in `XLA_FLAGS` is always respected.
"""

from __future__ import annotations

import functools
import os
import warnings

from jaxdiff.sharding import all_cpu

ENV_VAR = "JAXDIFF_XLA_CPU_SCHEDULER"
SCHEDULERS = ("memory", "xla")
_SCHEDULER_OPTION = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
# XLA_FLAGS entries that choose the CPU scheduler themselves.
_USER_SCHEDULER_FLAGS = ("xla_cpu_scheduler_type", "xla_cpu_enable_concurrency_optimized_scheduler")


def cpu_scheduler() -> str:
    """`$JAXDIFF_XLA_CPU_SCHEDULER`: "memory" (default) or "xla" (XLA's own default)."""
    raw = os.environ.get(ENV_VAR, "memory")
    value = raw.strip().lower() or "memory"
    if value not in SCHEDULERS:
        raise ValueError(f"{ENV_VAR}={raw!r}: expected one of {SCHEDULERS} ('memory': one "
                         "kernel at a time, jaxdiff's default on CPU; 'xla': XLA's default)")
    return value


def cpu_compiler_options() -> dict[str, str]:
    """The `compiler_options` for a program compiled for CPU devices: the memory-optimised
    scheduler, or `{}` when `JAXDIFF_XLA_CPU_SCHEDULER=xla`, when `XLA_FLAGS` chooses a
    scheduler, or when the installed jaxlib does not know the option (a warning says so)."""
    if cpu_scheduler() == "xla":
        return {}
    if any(flag in os.environ.get("XLA_FLAGS", "") for flag in _USER_SCHEDULER_FLAGS):
        return {}
    return dict(_SCHEDULER_OPTION) if _option_supported() else {}


def compiler_options_for(devices) -> dict[str, str] | None:
    """`cpu_compiler_options()` when every device in `devices` is a CPU, else None (jit's
    default)."""
    if all_cpu(devices):
        return cpu_compiler_options() or None
    return None


@functools.cache
def _option_supported() -> bool:
    """Compile a trivial CPU program with the option once: jaxlib versions that do not know it
    refuse the whole compilation, so it is passed only where this succeeds."""
    import jax
    import numpy as np

    try:
        cpu = jax.devices("cpu")[0]
        x = jax.device_put(np.float32(0), cpu)
        jax.jit(lambda v: v + 1, compiler_options=_SCHEDULER_OPTION).lower(x).compile()
        return True
    except Exception as exc:  # an unknown option or value: XlaRuntimeError / ValueError
        warnings.warn(f"this jaxlib does not accept {_SCHEDULER_OPTION} ({exc}); CPU programs "
                      "compile with XLA's default scheduler", RuntimeWarning, stacklevel=3)
        return False
