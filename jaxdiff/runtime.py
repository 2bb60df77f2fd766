"""Process-level settings that must be in place before the interpreter starts.

XLA:CPU allocates each call's temporary buffers afresh. glibc serves blocks above 32 MiB with
`mmap` and unmaps them on free, so every jitted call page-faults its whole temporary memory
(a ConvNet-D3 train step at batch 256: ~320,000 faults, ~0.75 CPU-s of kernel time per step;
benchmarks/results/conv_cpu.md). Keeping freed memory in the heap removes the faults: the
`jaxdiff` command re-executes itself once with `GLIBC_TUNABLES` set (glibc reads it only at
start-up; `mallopt` from Python is too late). Set `JAXDIFF_REUSE_HEAP=0` to opt out; nothing
happens off Linux/glibc or when the user already set `GLIBC_TUNABLES`.

The cost of a heap that never returns memory is fragmentation: a program's ~1 GiB temporary
block cannot reuse a hole that a small output buffer has split, so the heap grows by another
block and keeps both resident. A DDiF distillation step touched 3.5 GiB in its first iterations
although 0.9 GiB was live between steps (benchmarks/results/evaluate_cpu.md §4b). So under the
reuse heap a daemon thread (`start_heap_trimmer`) calls glibc's `malloc_trim(0)` every
`JAXDIFF_HEAP_TRIM_SECONDS` (default 2; 0 = never): it returns the free pages inside the heap,
which the next allocation that lands there faults in again. A program's temporaries are live
while it runs, so long steps keep theirs: the whole DDiF IPC 1 command peaked at 2.7 GiB
instead of 4.2 GiB, with its distillation as fast as without.
"""

from __future__ import annotations

import os
import sys
import threading
import time

REUSE_HEAP_TUNABLES = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
)


def reuse_heap_wanted() -> bool:
    return (sys.platform.startswith("linux") and "GLIBC_TUNABLES" not in os.environ
            and os.environ.get("JAXDIFF_REUSE_HEAP", "1") != "0")


def reexec_with_reuse_heap(argv: list[str]) -> None:
    """Replace this process with `argv` run under the reuse-heap tunables (never returns), unless
    `reuse_heap_wanted()` is false, in which case it returns immediately."""
    if not reuse_heap_wanted():
        return
    env = dict(os.environ, GLIBC_TUNABLES=REUSE_HEAP_TUNABLES)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


def heap_trim_seconds() -> float:
    """`JAXDIFF_HEAP_TRIM_SECONDS` (default 2.0): the trimmer's period; 0 turns it off."""
    raw = os.environ.get("JAXDIFF_HEAP_TRIM_SECONDS", "2")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"JAXDIFF_HEAP_TRIM_SECONDS={raw!r}: expected seconds (a number; "
                         "0 turns the heap trimmer off)") from None
    if value < 0:
        raise ValueError(f"JAXDIFF_HEAP_TRIM_SECONDS={raw!r}: expected >= 0 (0 = off)")
    return value


_TRIMMER: list = [None]


def start_heap_trimmer(period_s: float | None = None) -> threading.Thread | None:
    """Under the reuse heap (this process runs with `REUSE_HEAP_TUNABLES`), start a daemon
    thread that calls `malloc_trim(0)` every `period_s` seconds (default
    `heap_trim_seconds()`); see the module doc. Returns the thread, or None where there is
    nothing to do (another heap setting, no glibc, period 0). Idempotent."""
    period_s = heap_trim_seconds() if period_s is None else period_s
    if (_TRIMMER[0] is not None or period_s <= 0
            or os.environ.get("GLIBC_TUNABLES") != REUSE_HEAP_TUNABLES):
        return _TRIMMER[0]
    try:
        import ctypes
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

    def loop():
        while True:
            time.sleep(period_s)
            trim(0)
    thread = threading.Thread(target=loop, name="jaxdiff-heap-trimmer", daemon=True)
    thread.start()
    _TRIMMER[0] = thread
    return thread
