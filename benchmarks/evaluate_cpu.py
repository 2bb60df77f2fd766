"""The evaluation protocol (dd-common.md §11) on CPU: jaxdiff against a PyTorch eager loop of the
same protocol, side by side in one run, with each side's peak resident memory (issue 21).

The protocol on both sides: ConvNet-D3 (width 128, instance norm = GroupNorm(128, 128), ReLU, 2x2
average pooling, linear head; PyTorch's default initialisation), SGD lr 0.01, momentum 0.9,
weight decay 5e-4, batch 256 from a fresh shuffle every epoch (the smaller last batch kept),
per-sample DSA ('color_crop_cutout_flip_scale_rotate', one family per batch, mode 'S') on every
training batch, E + 1 epochs with lr x 0.1 and a rebuilt optimiser after epoch index E//2 + 1,
then one pass over the whole test split. Runs one after another on the PyTorch side, as the
official `evaluate_synset` loop does (per batch: `loss.item()` and the argmax accuracy on the
host; the test pass without `torch.no_grad()`, test batch 256, as upstream). The jaxdiff side is
`distill.evaluate.train_and_test` (its default run mode: sequential on CPU).

Data: random real CIFAR-10 images, N/10 per class (`JAXDIFF_DATA_DIR`; `--synthetic` for
Gaussian images of the same shape), normalised with the dataset statistics, written once to a
temporary directory that both sides read. Each measurement is its own subprocess, so its peak
RSS (`ru_maxrss`) is that implementation's alone; sizes are done one after another and the
implementations alternate within a size (their order rotates from size to size), each record
carrying the load average before and after.

    python -m benchmarks.evaluate_cpu              # 10/160/370/500 images, 3 runs x 101 epochs
    python -m benchmarks.evaluate_cpu --quick      # CI: Gaussian data, 2 runs x 2 epochs
    python -m benchmarks.evaluate_cpu --profile    # jaxdiff per phase, vmap vs sequential
    python -m benchmarks.evaluate_cpu --commands   # peak RSS + wall of the CLI commands

The PyTorch side runs with `--torch-python` (default /tmp/torchvenv/bin/python; PyTorch is never
a jaxdiff dependency): when it has no torch the record says so and the jaxdiff side still runs.
The jaxdiff side runs under the reuse-heap tunables the `jaxdiff` command sets itself
(`jaxdiff.runtime`), unless JAXDIFF_REUSE_HEAP=0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

FULL_STRATEGY = "color_crop_cutout_flip_scale_rotate"
TORCH_PYTHON = "/tmp/torchvenv/bin/python"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ------------------------------------------------------------------------------------ data


def prepare_data(out_dir: str, sizes, seed: int, test_size: int, synthetic: bool) -> dict:
    """Write `train_{n}_x/y.npy` for each size and `test_x/y.npy` (NHWC float32, normalised)."""
    import numpy as np

    if synthetic:
        rs = np.random.RandomState(seed)
        test_x = rs.randn(test_size, 32, 32, 3).astype(np.float32)
        test_y = (np.arange(test_size) % 10).astype(np.int32)
        pools = {n: (rs.randn(n, 32, 32, 3).astype(np.float32),
                     (np.arange(n) % 10).astype(np.int32)) for n in sizes}
        source = "gaussian"
    else:
        from jaxdiff import data as jdata

        train, test = jdata.load("cifar10_jpeg", "train"), jdata.load("cifar10_jpeg", "test")
        test_x = np.asarray(jdata.normalize(test.images[:test_size], test.info), np.float32)
        test_y = np.asarray(test.labels[:test_size], np.int32)
        pools = {}
        for n in sizes:
            idx = jdata.sample_per_class(seed, train.labels, 10, max(1, n // 10))[:n]
            pools[n] = (np.asarray(jdata.normalize(train.images[idx], train.info), np.float32),
                        np.asarray(train.labels[idx], np.int32))
        source = "cifar10_jpeg, random real per class"
    np.save(os.path.join(out_dir, "test_x.npy"), test_x)
    np.save(os.path.join(out_dir, "test_y.npy"), test_y)
    for n, (x, y) in pools.items():
        np.save(os.path.join(out_dir, f"train_{n}_x.npy"), x)
        np.save(os.path.join(out_dir, f"train_{n}_y.npy"), y)
    return {"data": source, "test_images": int(len(test_y))}


def _read(data_dir: str, n: int):
    import numpy as np

    def f(name):
        return np.load(os.path.join(data_dir, name))
    return (f(f"train_{n}_x.npy"), f(f"train_{n}_y.npy"), f("test_x.npy"), f("test_y.npy"))


# ---------------------------------------------------------------------------- jaxdiff side


def jax_worker(a) -> dict:
    """`train_and_test` once (compile included, as the command runs it)."""
    import jax

    from jaxdiff.distill import augment as dsa
    from jaxdiff.distill.evaluate import choose_run_mode, train_and_test
    from jaxdiff.models.classifiers import classifier_factory
    from jaxdiff.xla_options import compiler_options_for

    compile_s = [0.0]

    def on_event(event, seconds, **_):
        if event.startswith("/jax/core/compile/"):  # tracing, lowering, XLA compile
            compile_s[0] += seconds
    jax.monitoring.register_event_duration_secs_listener(on_event)
    x, y, tx, ty = _read(a.data, a.n)
    t0 = time.perf_counter()
    r = train_and_test(
        jax.random.key(a.seed), x, y, tx, ty,
        make_model=classifier_factory("convnet", (32, 32, 3), 10, depth=3, width=a.width,
                                      norm="instancenorm"),
        num_runs=a.runs, epochs=a.epochs, lr=0.01, batch_size=256,
        augment=dsa.per_sample_augment(a.dsa), test_batch_size=a.test_batch,
        run_mode=a.run_mode)
    wall = time.perf_counter() - t0
    return {"impl": "jaxdiff", "run_mode": choose_run_mode(a.run_mode, jax.devices()[:1]),
            "compiler_options": compiler_options_for(jax.devices()[:1]) or {},
            "wall_s": round(wall, 2), "compile_s": round(compile_s[0], 2),
            "accuracy": [float(v) for v in r.accuracy]}


# ---------------------------------------------------------------------------- PyTorch side


def _torch_convnet(nn, width: int, depth: int = 3, channels: int = 3, classes: int = 10,
                   size: int = 32):
    layers, c = [], channels
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(width, width, affine=True),
                   nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
        c, size = width, size // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size * size, classes))


def _torch_dsa(torch, F, x, strategy):
    """Per-sample DSA, mode 'S', on NCHW `x` (dd-common.md §4.2; align_corners=True)."""
    families = strategy.split("_")
    fam = families[int(torch.randint(0, len(families), (1,)).item())]
    n, _, h, w = x.shape
    r = lambda: torch.rand(n, 1, 1, 1)  # noqa: E731
    if fam == "color":
        x = x + (r() - 0.5)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (r() * 2.0) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * (r() + 0.5) + m
    if fam == "crop":  # translation with zero fill: 1-pixel zero pad, clamped gather
        s = int(h * 0.125 + 0.5)
        th, tw = (torch.randint(-s, s + 1, (n, 1, 1)) for _ in range(2))
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        gy = torch.clamp(gy[None] + th + 1, 0, h + 1)
        gx = torch.clamp(gx[None] + tw + 1, 0, w + 1)
        xp = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
        return xp[torch.arange(n)[:, None, None], gy, gx].permute(0, 3, 1, 2)
    if fam == "cutout":
        q = int(h * 0.5 + 0.5)
        oy = torch.randint(0, h + (1 - q % 2), (n, 1, 1))
        ox = torch.randint(0, w + (1 - q % 2), (n, 1, 1))
        rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
        cut = ((rows >= oy - q // 2) & (rows < oy - q // 2 + q)
               & (cols >= ox - q // 2) & (cols < ox - q // 2 + q))
        return x * (~cut)[:, None].to(x.dtype)
    if fam == "flip":
        return torch.where(r() < 0.5, x.flip(3), x)
    if fam == "scale":
        sx, sy = (torch.rand(n) * (1.2 - 1 / 1.2) + 1 / 1.2 for _ in range(2))
        z = torch.zeros(n)
        theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
    else:  # rotate
        a = (torch.rand(n) - 0.5) * 2 * 15 / 180 * math.pi
        z = torch.zeros(n)
        theta = torch.stack([torch.stack([a.cos(), -a.sin(), z], 1),
                             torch.stack([a.sin(), a.cos(), z], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _torch_epoch(torch, F, loader, net, opt, strategy: str | None) -> tuple[float, float]:
    """The official `epoch()`: per batch the loss and accuracy read on the host."""
    import numpy as np

    train = strategy is not None
    net.train() if train else net.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for img, lab in loader:
        if train:
            img = _torch_dsa(torch, F, img, strategy)
        out = net(img)
        loss = F.cross_entropy(out, lab)
        correct += int(np.sum(np.argmax(out.detach().numpy(), -1) == lab.numpy()))
        loss_sum += loss.item() * lab.shape[0]
        count += lab.shape[0]
        if train:
            opt.zero_grad()
            loss.backward()
            opt.step()
    return loss_sum / count, correct / count


def torch_worker(a, compiled: bool) -> dict:
    """Sequential runs of the official loop (fresh network, optimiser and loader per run)."""
    try:
        import torch
        import torch.nn.functional as F
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset
    except ImportError:
        return {"impl": "torch_compile" if compiled else "torch_eager",
                "skipped": "torch is not installed in this interpreter"}
    torch.manual_seed(a.seed)
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    x, y, tx, ty = _read(a.data, a.n)
    nchw = lambda v: torch.from_numpy(v).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    train = TensorDataset(nchw(x), torch.from_numpy(y).long())
    test = DataLoader(TensorDataset(nchw(tx), torch.from_numpy(ty).long()), batch_size=256,
                      shuffle=False, num_workers=0)
    accs, train_s, test_s = [], 0.0, 0.0
    t_all = time.perf_counter()
    for _ in range(a.runs):
        net = _torch_convnet(nn, a.width)
        model = torch.compile(net) if compiled else net
        lr = 0.01
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        loader = DataLoader(train, batch_size=256, shuffle=True, num_workers=0)
        t0 = time.perf_counter()
        for ep in range(a.epochs + 1):
            _torch_epoch(torch, F, loader, model, opt, a.dsa)
            if ep == a.epochs // 2 + 1:
                lr *= 0.1
                opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        t1 = time.perf_counter()
        accs.append(_torch_epoch(torch, F, test, model, opt, None)[1])
        train_s, test_s = train_s + t1 - t0, test_s + time.perf_counter() - t1
    return {"impl": "torch_compile" if compiled else "torch_eager",
            "wall_s": round(time.perf_counter() - t_all, 2), "train_s": round(train_s, 2),
            "test_s": round(test_s, 2), "accuracy": accs, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------ jaxdiff profile


def profile_one(a) -> dict:
    """Per-phase seconds of the jaxdiff protocol for `a.n` images and `a.runs` runs, every run
    mode timed round-robin in this process: one epoch with and without DSA, DSA alone over an
    epoch's batches, one test pass (over `a.test_size` images, scaled to 10,000), and the
    compile time of each program."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jaxdiff.distill import augment as dsa
    from jaxdiff.distill import evaluate as ev
    from jaxdiff.models.classifiers import classifier_factory

    make = classifier_factory("convnet", (32, 32, 3), 10, depth=3, width=a.width,
                              norm="instancenorm")
    aug = dsa.per_sample_augment(a.dsa)
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.trace(decay=0.9))
    x, y, tx_, ty = (jnp.asarray(v) for v in _read(a.data, a.n))
    tx_, ty = tx_[:a.test_size], ty[:a.test_size]
    w = jnp.ones(a.n, jnp.float32)

    def state(key):
        m = make(nnx.Rngs(key))
        m.train()
        g, p, r = nnx.split(m, nnx.Param, ...)
        return g, (p, r, tx.init(p))
    graphdef = state(jax.random.key(0))[0]
    keys = jax.random.split(jax.random.key(a.seed), a.runs)
    states = jax.vmap(lambda k: state(k)[1])(keys)
    b = min(256, a.n)

    def epoch(augment):
        step = ev._train_step(graphdef, tx, augment, x, y, w)

        def one(s, key):
            full, last = ev._batches(jax.random.permutation(key, a.n), b)
            s, _ = jax.lax.scan(lambda c, i: step(c, i, key, 0.01), s, full)
            if last is not None:
                s, _ = step(s, last, key, 0.01)
            return s
        return one

    def dsa_only(s, key):
        full, last = ev._batches(jax.random.permutation(key, a.n), b)
        out = jnp.sum(jax.lax.map(lambda i: aug(key, x[i]), full))
        return out + (0 if last is None else jnp.sum(aug(key, x[last])))

    def test(s, key):
        p, r, _ = s
        return ev.model_accuracy(graphdef, p, r, tx_, ty, a.test_batch)

    phases = {"epoch": epoch(aug), "epoch_noaug": epoch(None), "dsa": dsa_only, "test": test}
    calls, compile_s = {}, {}
    for mode in a.modes:
        for name, fn in phases.items():
            runs = (jax.vmap(fn) if mode == "vmap" else
                    (lambda f: lambda s, k: jax.lax.map(lambda sk: f(*sk), (s, k)))(fn))
            t0 = time.perf_counter()
            c = jax.jit(runs).lower(states, keys).compile()
            compile_s[mode, name] = time.perf_counter() - t0
            calls[mode, name] = c
            jax.block_until_ready(c(states, keys))
    times = {k: [] for k in calls}
    load0 = _load()
    for _ in range(a.repeats):
        for k, c in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(states, keys))
            times[k].append(time.perf_counter() - t0)
    out = {"n": a.n, "runs": a.runs, "batches": -(-a.n // b), "width": a.width,
           "test_batch": a.test_batch, "load": [load0, _load()]}
    for (mode, name), ts in times.items():
        s = float(np.median(ts)) * (10000 / a.test_size if name == "test" else 1)
        out[f"{mode}/{name}_s"] = round(s, 4)
        out[f"{mode}/{name}_compile_s"] = round(compile_s[mode, name], 2)
    if "vmap" in a.modes and "sequential" in a.modes:
        out["vmap_over_sequential"] = {
            name: round(out[f"vmap/{name}_s"] / out[f"sequential/{name}_s"], 2)
            for name in phases}
    return out


# --------------------------------------------------------------------------------- driver


def _worker_cmd(impl: str, a, data_dir: str, n: int) -> tuple[list[str], dict]:
    common = ["--data", data_dir, "--n", str(n), "--runs", str(a.runs), "--epochs",
              str(a.epochs), "--seed", str(a.seed), "--width", str(a.width), "--test-batch",
              str(a.test_batch), "--run-mode", a.run_mode, "--test-size", str(a.test_size),
              "--repeats", str(a.repeats), "--dsa", a.dsa, "--torch-threads",
              str(a.torch_threads), "--modes", *a.modes]
    env = dict(os.environ)
    if impl.startswith("torch"):
        env.pop("GLIBC_TUNABLES", None)
        return [a.torch_python, os.path.join(REPO, "benchmarks", "evaluate_cpu.py"),
                "--worker", impl, *common], env
    from jaxdiff.runtime import REUSE_HEAP_TUNABLES, reuse_heap_wanted
    if reuse_heap_wanted():  # what the `jaxdiff` command does for itself
        env["GLIBC_TUNABLES"] = REUSE_HEAP_TUNABLES
    return [sys.executable, "-m", "benchmarks.evaluate_cpu", "--worker", impl, *common], env


def run_worker(impl: str, a, data_dir: str, n: int) -> dict:
    """One measurement in a fresh subprocess; its JSON record (or why there is none)."""
    cmd, env = _worker_cmd(impl, a, data_dir, n)
    rec = {"bench": "evaluate_cpu", "impl": impl, "n": n, "runs": a.runs,
           "epochs": a.epochs + 1, "load_before": _load()}
    if impl.startswith("torch") and not os.path.exists(a.torch_python):
        return {**rec, "skipped": f"no {a.torch_python}"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=a.timeout)
    rec["load_after"] = _load()
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {**rec, "error": (p.stderr or p.stdout)[-600:]}
    return {**rec, **json.loads(lines[-1])}


def side_by_side(a, emit) -> list[dict]:
    """For each size, every implementation once, their order rotating from size to size."""
    out = []
    with tempfile.TemporaryDirectory(prefix="evaluate_cpu_") as tmp:
        emit({"bench": "evaluate_cpu", "kind": "setup", "sizes": a.sizes, "runs": a.runs,
              "epochs": a.epochs + 1, "width": a.width, "impls": a.impls,
              **prepare_data(tmp, a.sizes, a.seed, a.test_size, a.synthetic)})
        for i, n in enumerate(a.sizes):
            order = a.impls[i % len(a.impls):] + a.impls[:i % len(a.impls)]
            recs = {impl: run_worker(impl, a, tmp, n) for impl in order}
            base = recs.get("torch_eager", {}).get("wall_s")
            for impl in a.impls:
                r = recs[impl]
                if base and r.get("wall_s"):
                    r["speed_vs_torch_eager"] = round(base / r["wall_s"], 3)
                emit(r)
                out.append(r)
    return out


def side_by_side_table(records: list[dict]) -> str:
    """Markdown rows of side-by-side records (one row per size): wall seconds of each
    implementation, jaxdiff's speed against PyTorch eager, peak RSS, load."""
    by_n: dict[int, dict] = {}
    for r in records:
        if r.get("impl") in ("jaxdiff", "torch_eager", "torch_compile") and "wall_s" in r:
            by_n.setdefault(r["n"], {})[r["impl"]] = r
    lines = ["| images | jaxdiff s (compile) | PyTorch eager s (train + test) | torch.compile s "
             "| jaxdiff vs eager | vs compile | peak RSS MiB jaxdiff / eager / compile "
             "| accuracy % (mean of runs) jaxdiff / eager | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in sorted(by_n):
        j, e, c = (by_n[n].get(k, {}) for k in ("jaxdiff", "torch_eager", "torch_compile"))

        def acc(r):
            return f"{100 * sum(r['accuracy']) / len(r['accuracy']):.1f}" if r.get("accuracy") \
                else "-"

        def ratio(other):
            return f"{other['wall_s'] / j['wall_s']:.2f}x" if other.get("wall_s") and j else "-"

        loads = [r["load_before"][0] for r in (j, e, c) if r.get("load_before")]
        lines.append(
            f"| {n} | {j.get('wall_s', '-')} ({j.get('compile_s', '-')}) | {e.get('wall_s', '-')} "
            f"({e.get('train_s', '-')} + {e.get('test_s', '-')}) | {c.get('wall_s', '-')} "
            f"| **{ratio(e)}** | {ratio(c)} | {j.get('peak_rss_mib', '-')} / "
            f"{e.get('peak_rss_mib', '-')} / {c.get('peak_rss_mib', '-')} | {acc(j)} / {acc(e)} "
            f"| {min(loads) if loads else '-'}-{max(loads) if loads else '-'} |")
    return "\n".join(lines)


def profile(a, emit) -> None:
    with tempfile.TemporaryDirectory(prefix="evaluate_cpu_") as tmp:
        prepare_data(tmp, a.sizes, a.seed, max(a.test_size, 256), a.synthetic)
        for runs in a.profile_runs:
            for n in a.sizes:
                b = argparse.Namespace(**{**vars(a), "runs": runs})
                emit(run_worker("profile", b, tmp, n))


def commands(a, emit) -> None:
    """Wall time and peak RSS of whole `jaxdiff` commands (each a fresh process tree), once per
    `--command-variants` entry: space-separated `--config.KEY=VALUE` overrides and `NAME=VALUE`
    environment settings (e.g. "JAXDIFF_REUSE_HEAP=0")."""
    data = {"JAXDIFF_DATA_DIR": os.environ.get("JAXDIFF_DATA_DIR", "/work/shared/tfds")}
    dm = ["--config.iterations=50", "--config.loss.batch_real=256",
          "--config.eval.compare_random=False"]
    with tempfile.TemporaryDirectory(prefix="evaluate_cpu_cmd_") as tmp:
        runs = {
            "evaluate_cifar10 ipc 16 (160 images), 3 runs x 101 epochs": [
                "evaluate", "--config", "evaluate_cifar10", "--config.ipc=16",
                "--config.train.num_runs=3", "--config.train.epochs=100"],
            "distill_cifar10_cpu fred ipc 1 (DM, 50 iterations, 3 x 101 epochs)": [
                "distill", "--config", "distill_cifar10_cpu", "--config.param.name=fred", *dm],
            "distill_cifar10_cpu ddif ipc 1 (DM, 50 iterations, 3 x 101 epochs)": [
                "distill", "--config", "distill_cifar10_cpu", "--config.param.name=ddif", *dm],
        }
        for i, (name, argv) in enumerate(runs.items()):
            if a.command_filter and not any(f in name for f in a.command_filter):
                continue
            for j, variant in enumerate(a.command_variants):
                words = variant.split()
                env = {**data, **dict(w.split("=", 1) for w in words if not w.startswith("--"))}
                extra = [w for w in words if w.startswith("--")]
                run_dir = f"{tmp}/run{i}_{j}"
                cmd = [os.path.join(os.path.dirname(sys.executable), "jaxdiff"), *argv,
                       f"--config.run_dir={run_dir}", "--config.progress=False", *extra]
                load0, t0 = _load(), time.perf_counter()
                p = subprocess.run(["/usr/bin/env", *[f"{k}={v}" for k, v in env.items()],
                                    sys.executable, "-c", _RSS_WRAPPER, *cmd],
                                   capture_output=True, text=True, timeout=a.timeout)
                rec = {"bench": "evaluate_cpu", "kind": "command", "command": name,
                       "variant": variant, "wall_s": round(time.perf_counter() - t0, 1),
                       "load_before": load0, "load_after": _load(), "rc": p.returncode}
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{\"peak")]
                rec.update(json.loads(lines[-1]) if lines else {"error": p.stderr[-600:]})
                rec.update(_phases(run_dir))
                emit(rec)


def _phases(run_dir: str) -> dict:
    """The command's own seconds (whole command; distillation alone) from its results.json."""
    try:
        with open(os.path.join(run_dir, "results.json")) as f:
            r = json.load(f)
    except OSError:
        return {}
    out = {"command_s": round(r["seconds"], 1)}
    if "distill_seconds" in r:
        out["distill_s"] = round(r["distill_seconds"], 1)
    if "accuracy_mean" in r:
        out["accuracy_mean"] = r["accuracy_mean"]
    return out


# Runs a command as a child and prints the peak RSS of the process tree's largest member
# (ru_maxrss of waited-for children: the re-executed `jaxdiff` process itself).
_RSS_WRAPPER = """
import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print(json.dumps({"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                  / 1024, 1), "child_rc": rc}))
"""


def _worker(a) -> int:
    load0 = _load()
    if a.worker == "jax":
        rec = jax_worker(a)
    elif a.worker == "profile":
        rec = profile_one(a)
    else:
        rec = torch_worker(a, compiled=a.worker == "torch_compile")
    print(json.dumps({**rec, "peak_rss_mib": _peak_rss_mib(), "worker_load": [load0, _load()]}),
          flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 160, 370, 500])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100, help="E: E + 1 epochs are trained")
    ap.add_argument("--impls", nargs="+", default=["jax", "torch_eager", "torch_compile"],
                    choices=["jax", "torch_eager", "torch_compile"])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-size", type=int, default=10000)
    ap.add_argument("--test-batch", type=int, default=200, help="jaxdiff's test batch")
    ap.add_argument("--run-mode", default="auto", choices=["auto", "vmap", "sequential"])
    ap.add_argument("--dsa", default=FULL_STRATEGY, help="the DSA strategy (both sides)")
    ap.add_argument("--synthetic", action="store_true", help="Gaussian images, no dataset")
    ap.add_argument("--torch-python", default=TORCH_PYTHON)
    ap.add_argument("--torch-threads", type=int, default=0, help="0: PyTorch's default")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--out", help="also append the JSON lines to this file")
    ap.add_argument("--quick", action="store_true",
                    help="CI: Gaussian data, sizes 10 and 20, 2 runs x 2 epochs, 500 test images,"
                         " width 16")
    ap.add_argument("--profile", action="store_true", help="jaxdiff per phase (see profile_one)")
    ap.add_argument("--profile-runs", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--modes", nargs="+", default=["sequential", "vmap"])
    ap.add_argument("--repeats", type=int, default=3, help="profile: timed calls per program")
    ap.add_argument("--commands", action="store_true", help="wall + peak RSS of CLI commands")
    ap.add_argument("--command-filter", nargs="*", default=[],
                    help="--commands: only the commands whose name contains one of these")
    ap.add_argument("--command-variants", nargs="+", default=[""],
                    help="extra overrides, one string per variant of each command")
    ap.add_argument("--table", help="print the side-by-side table of this JSON-lines file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return _worker(a)
    if a.table:
        with open(a.table) as f:
            print(side_by_side_table([json.loads(ln) for ln in f if ln.strip()]))
        return 0
    if a.quick:
        a.sizes, a.runs, a.epochs, a.test_size, a.width, a.synthetic = [10, 20], 2, 1, 500, 16, True
        a.profile_runs, a.repeats = [2], 1

    def emit(rec):
        line = json.dumps(rec)
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")
    if a.profile:
        profile(a, emit)
    elif a.commands:
        commands(a, emit)
    else:
        side_by_side(a, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
