"""Process-level settings that must be in place before the interpreter starts.

XLA:CPU allocates each call's temporary buffers afresh. glibc serves blocks above 32 MiB with
`mmap` and unmaps them on free, so every jitted call page-faults its whole temporary memory
(a ConvNet-D3 train step at batch 256: ~320,000 faults, ~0.75 CPU-s of kernel time per step;
benchmarks/results/conv_cpu.md). Keeping freed memory in the heap removes the faults: the
`jaxdiff` command re-executes itself once with `GLIBC_TUNABLES` set (glibc reads it only at
start-up; `mallopt` from Python is too late). The cost is that the process keeps its peak heap
until exit. Set `JAXDIFF_REUSE_HEAP=0` to opt out; nothing happens off Linux/glibc or when the
user already set `GLIBC_TUNABLES`.
"""

from __future__ import annotations

import os
import sys

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
