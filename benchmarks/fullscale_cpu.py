"""Seconds per distillation iteration of a full-scale preset on this machine's CPU, on synthetic
data of the preset's shape (the real ImageNet is not needed): `jaxdiff.data.synthetic` writes a
fake imagenet2012 with ImageNette's ten classes once, then the preset runs a few iterations at
its real width (ConvNet-D5, 128 filters, 128 px) with the given overrides.

    python -m benchmarks.fullscale_cpu                        # FreD DM IPC 1, batch_real 16
    python -m benchmarks.fullscale_cpu --arg imagenette,128,1,fred_dm --set loss.batch_real=64

Prints (and appends to --out) the wall seconds of every iteration after the first (the first
includes compilation) from the run's metrics.jsonl, with the load average, and the fit check's
FLOP estimate as the run printed it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arg", default="imagenette,128,1,fred_dm", help="the preset argument")
    p.add_argument("--set", nargs="*", default=["loss.batch_real=16", "class_chunk=10"],
                   help="overrides KEY=VALUE")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--per-class", type=int, default=70, help="synthetic train photos per class")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "jaxdiff_fullscale_cpu"))
    p.add_argument("--out", default="", help="append the result as a JSON line here")
    a = p.parse_args(argv)
    work = Path(a.work)
    data_dir = work / "data"
    os.environ.setdefault("JAXDIFF_DATA_DIR", str(data_dir))
    os.environ.setdefault("JAXDIFF_CACHE_DIR", str(work / "cache"))

    from jaxdiff.config_utils import apply_override, load_config
    from jaxdiff.data import SUBSETS, synthetic
    if not (data_dir / "imagenet2012").is_dir():
        synthetic.write_imagenet2012(data_dir, {w: (a.per_class, 2)
                                                for w in SUBSETS["imagenette"].wnids},
                                     size_range=(150, 260))
    from jaxdiff.pipelines import distill
    from jaxdiff.specs.distill import resolve
    c = load_config(f"distill_imagenet_subset:{a.arg}")
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    for k, v in [s.split("=", 1) for s in a.set] + [
            ("iterations", str(a.iterations)), ("log_every", "1"), ("checkpoint_every", "1000"),
            ("eval.num_runs", "0"), ("eval.compare_random", "False"), ("progress", "False"),
            ("run_dir", str(run_dir))]:
        apply_override(c, k, v)
    t0 = time.time()
    distill.run(resolve(c))
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    out = {"preset": f"distill_imagenet_subset:{a.arg}", "overrides": a.set,
           "seconds_per_iteration": [round(b["time"] - r["time"], 2)
                                     for r, b in zip(rows[1:], rows[2:])],
           "first_iteration_with_setup": round(rows[0]["time"] - t0, 1),
           "load_average": os.getloadavg(), "cpus": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(out))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()
