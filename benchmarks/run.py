"""Run every benchmark in its quick form, one after the other, each in its own process.

    python -m benchmarks.run --quick            # a few minutes on 2 CPU cores
    python -m benchmarks.run --quick --only conv_cpu,select_cpu
    python -m benchmarks.run                    # full sizes (tens of minutes on CPU)

Each benchmark prints JSON lines (see benchmarks/common.py for the timing discipline); this
driver forwards them and prints a final summary line per benchmark with its exit status and wall
time. Separate processes keep compilation caches and heap state from leaking between them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

BENCHMARKS = ("conv_cpu", "ddif_cpu", "distill_cpu", "lidar_gmm", "sampler_cpu", "scaling",
              "select_cpu")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated benchmark names")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    failed = 0
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if args.quick else [])
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        failed += rc != 0
        print(json.dumps({"benchmark": name, "returncode": rc,
                          "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
