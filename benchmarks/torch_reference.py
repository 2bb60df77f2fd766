"""PyTorch reference timing of the ConvNet-D3 train step (issue 3). Not a project dependency.

Nothing imports this file. It times the same step as `benchmarks/conv_cpu.py` (ConvNet-D3,
width 128, GroupNorm(C, C) = instance norm, ReLU, 2x2 average pooling, linear head,
cross-entropy, SGD lr 0.01, fp32, 32x32x3 images) with PyTorch eager and, when it works,
`torch.compile`, plus PyTorch's own SGEMM in the same process, and prints JSON lines.

Run it from a throwaway environment, never the project's::

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0
    /tmp/torchvenv/bin/python benchmarks/torch_reference.py --batch 256

Without torch it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _env(torch) -> dict:
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg": load,
        "dtype": "float32",
    }


def _stats(times):
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) >= 2 else (times[0],) * 3
    return {"median_s": statistics.median(times), "iqr_s": q3 - q1, "min_s": min(times)}


def _time(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sgemm-n", type=int, default=2048)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC memory format (oneDNN's preferred layout on some CPUs)")
    args = parser.parse_args(argv)
    try:
        import torch
        from torch import nn
    except ImportError:
        print(json.dumps({"bench": "torch_reference", "skipped": "torch is not installed"}))
        return 0

    torch.manual_seed(0)
    env = _env(torch)

    def emit(rec):
        print(json.dumps({"bench": "torch_reference", **rec, "env": env}), flush=True)

    # SGEMM in the same process: the yardstick the JAX numbers are compared against.
    n = args.sgemm_n
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = _stats(_time(lambda: torch.mm(a, b), 2, 10))
    sgemm = 2 * n**3 / t["median_s"] / 1e9
    emit({"kind": "sgemm", "n": n, **t, "gflops_per_s": round(sgemm, 2)})

    def convnet():
        layers, c = [], 3
        for _ in range(3):
            layers += [nn.Conv2d(c, 128, 3, padding=1), nn.GroupNorm(128, 128, affine=True),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
            c = 128
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))

    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    # Same analytic FLOPs as benchmarks/conv_cpu.py: convolutions (forward, weight gradient,
    # input gradient except the first layer) and the head.
    fwd, dx, c, s = 0, 0, 3, 32
    for layer in range(3):
        f = 2 * args.batch * s * s * 9 * c * 128
        fwd += f
        dx += f if layer else 0
        c, s = 128, s // 2
    head = 2 * args.batch * 2048 * 10
    flops = (fwd + head) + fwd + head + dx + head

    variants = [("eager", False)] + ([] if args.no_compile else [("compile", True)])
    for name, compiled in variants:
        model = convnet()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        loss_fn = nn.CrossEntropyLoss()

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss

        fn = step
        if compiled:
            try:
                fn = torch.compile(step)
                t0 = time.perf_counter()
                fn()
                compile_s = time.perf_counter() - t0
            except Exception as e:  # no compiler toolchain, unsupported platform, ...
                emit({"kind": "train_step", "impl": "torch_compile",
                      "skipped": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
        t = _stats(_time(fn, 2, args.repeats))
        rec = {
            "kind": "train_step",
            "impl": f"torch_{name}" + ("_channels_last" if args.channels_last else ""),
            "batch": args.batch,
            **t,
            "images_per_s": round(args.batch / t["median_s"], 1),
            "model_flops": flops,
            "gflops_per_s": round(flops / t["median_s"] / 1e9, 2),
            "frac_of_sgemm": round(flops / t["median_s"] / 1e9 / sgemm, 3),
        }
        if compiled:
            rec["compile_s"] = round(compile_s, 2)
        emit(rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
