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
