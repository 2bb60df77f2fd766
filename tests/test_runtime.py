"""The CLI's re-exec with reuse-heap glibc settings (`jaxdiff.runtime`)."""

import os


def test_reuse_heap_reexec_sets_glibc_tunables():
    import subprocess
    import sys

    from jaxdiff.runtime import REUSE_HEAP_TUNABLES
    code = ("import sys; from jaxdiff.runtime import reexec_with_reuse_heap; "
            "reexec_with_reuse_heap([sys.executable, '-c', "
            "'import os; print(os.environ.get(\"GLIBC_TUNABLES\"))']); print('not re-executed')")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXDIFF_REUSE_HEAP")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    expected = REUSE_HEAP_TUNABLES if sys.platform.startswith("linux") else "not re-executed"
    assert out.stdout.strip() == expected, out.stderr
    off = subprocess.run([sys.executable, "-c", code], env={**env, "JAXDIFF_REUSE_HEAP": "0"},
                         capture_output=True, text=True)
    assert off.stdout.strip() == "not re-executed"


def test_heap_trimmer_returns_freed_heap_pages():
    """Under the reuse-heap tunables a freed 256 MiB block stays resident (the point: no page
    faults when it is reused); with the trimmer it leaves within a period, without it it stays."""
    import subprocess
    import sys

    import pytest

    from jaxdiff.runtime import REUSE_HEAP_TUNABLES
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc heap tunables are Linux-only")
    code = """
import os, sys, time
import numpy as np
from jaxdiff.runtime import start_heap_trimmer
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
period = float(sys.argv[1])
assert (start_heap_trimmer(period) is not None) == (period > 0)
big = np.ones(256 << 17)              # 256 MiB from the heap (mmap_max=0), touched
before = rss_mib()
above = np.ones(1 << 10)              # live above 'big': its pages are inside the heap, not at its top
del big
time.sleep(0.6)
print(round(before - rss_mib()))
"""
    env = {k: v for k, v in os.environ.items() if k != "JAXDIFF_HEAP_TRIM_SECONDS"}
    env["GLIBC_TUNABLES"] = REUSE_HEAP_TUNABLES

    def released(period):
        out = subprocess.run([sys.executable, "-c", code, str(period)], env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip())
    assert released(0) < 16          # kept: the reuse heap never returns it by itself
    assert released(0.1) > 200       # returned by the trimmer


def test_heap_trim_seconds_refuses_bad_values(monkeypatch):
    import pytest

    from jaxdiff.runtime import heap_trim_seconds
    monkeypatch.setenv("JAXDIFF_HEAP_TRIM_SECONDS", "0.5")
    assert heap_trim_seconds() == 0.5
    for bad in ("soon", "-1"):
        monkeypatch.setenv("JAXDIFF_HEAP_TRIM_SECONDS", bad)
        with pytest.raises(ValueError, match="JAXDIFF_HEAP_TRIM_SECONDS"):
            heap_trim_seconds()
