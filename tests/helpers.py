"""Shared oracles, reference implementations and tiny configs of the test suite.

One place for what several test files use; test files import from here, never from each other.
Sections: models (reference conv and norms, jitted calls), ops (tolerances, a fast-compiling
jit), configs (tiny presets), resume (runs resumed on another device count), processes (the real
`jaxdiff` CLI as N processes on loopback), diffusion oracles (the DiffRS Gaussian pair,
Gaussian mixtures and rewards with exact answers).
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import models
from jaxdiff.config_utils import build_config, load_config, set_values
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import lookahead as L
from jaxdiff.diffusion import rewards as R


# ---------------------------------------------------------------------------------- data
def fake_prepared(root: Path, name: str, version: str) -> Path:
    """What `data.locate` looks for: `<root>/<name>/<version>/dataset_info.json`."""
    d = root / name / version
    d.mkdir(parents=True)
    (d / "dataset_info.json").write_text("{}")
    return d


# ---------------------------------------------------------------------------------- models
def placeholder_expert_store(root, dataset: str, image_shape, epochs: int = 20) -> str:
    """An expert store that passes `distill.tm.open_experts` (dataset, image shape, one complete
    expert of `epochs` epochs) for resolving TM configs; its one-parameter trajectory is zeros,
    so it cannot drive a real TM run."""
    from jaxdiff.distill.experts import ExpertStore
    store = ExpertStore.create(root, num_params=1, epochs=epochs,
                               meta={"dataset": dataset, "image_shape": list(image_shape)},
                               exist_ok=True)
    store.save_trajectory(0, np.zeros((epochs + 1, 1), np.float32))
    return str(store.root)


def numpy_siren(p, grid, w0_initial, w0):
    """One DDiF field in float64 numpy, written from ddif.md §2.2 (the per-instance reference):
    `grid [*spatial, n]` -> `[*spatial, m]`."""
    x = np.asarray(grid, np.float64).reshape(-1, grid.shape[-1])
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    h = np.sin(w0_initial * (x @ p["W1"] + p["b1"]))
    for layer in range(p["Wh"].shape[0]):
        h = np.sin(w0 * (h @ p["Wh"][layer] + p["bh"][layer]))
    return (h @ p["Wo"] + p["bo"]).reshape(*grid.shape[:-1], -1)


def conv_ref(x, w, b=None, stride=1, pad=1):
    """Reference NHWC x HWIO cross-correlation (tests may call lax directly; models may not)."""
    y = jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return y if b is None else y + b


# Jitted model calls: eager NNX code runs op by op, compiling every random draw and layer
# separately, which dominates the model tests' runtime on a small CPU.
call_model = nnx.jit(lambda m, x: m(x))
embed_model = nnx.jit(lambda m, x: m.embed(x))


def abstract_count(make):
    """Parameter count of `make()` without allocating it."""
    return models.num_params(nnx.eval_shape(make))


def norm_ref(kind, h, layer):
    """Reference of each normalisation layer on NHWC activations `h` (layer's scale / bias)."""
    if kind == "instancenorm":
        m = h.mean((1, 2), keepdims=True)
        v = ((h - m) ** 2).mean((1, 2), keepdims=True)
        return (h - m) / jnp.sqrt(v + 1e-5) * layer.scale[...] + layer.bias[...]
    if kind == "batchnorm":  # train mode: batch statistics over N, H, W (biased)
        m = h.mean((0, 1, 2), keepdims=True)
        v = ((h - m) ** 2).mean((0, 1, 2), keepdims=True)
        return (h - m) / jnp.sqrt(v + 1e-5) * layer.scale[...] + layer.bias[...]
    if kind == "layernorm":  # PyTorch LayerNorm([C, H, W]): over everything of a sample
        m = h.mean((1, 2, 3), keepdims=True)
        v = ((h - m) ** 2).mean((1, 2, 3), keepdims=True)
        return (h - m) / jnp.sqrt(v + 1e-5) * layer.scale[...] + layer.bias[...]
    if kind == "groupnorm":  # 4 groups of consecutive channels
        n, hh, ww, c = h.shape
        g = h.reshape(n, hh, ww, 4, c // 4)
        m = g.mean((1, 2, 4), keepdims=True)
        v = ((g - m) ** 2).mean((1, 2, 4), keepdims=True)
        out = ((g - m) / jnp.sqrt(v + 1e-5)).reshape(h.shape)
        return out * layer.scale[...] + layer.bias[...]
    assert kind == "none"
    return h


@jax.jit
def perturbed(params, key):
    """`params` plus 0.05 N(0, 1) noise (one draw for all leaves: a draw per leaf would compile
    ~40 RNG kernels)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return unravel(flat + 0.05 * jax.random.normal(key, flat.shape))


# ---------------------------------------------------------------------------------- ops
def assert_close(actual, desired, tol):
    """max |a - d| <= tol * max(1, max |d|), leaf by leaf (float32 round-off of long sums)."""
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired)):
        a, d = np.asarray(a), np.asarray(d)
        assert a.shape == d.shape
        scale = max(1.0, float(np.max(np.abs(d))))
        err = float(np.max(np.abs(a - d)))
        assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g} * {scale:.3g}"


# Each conv test compiles ONE program (data generation, our path and the reference together):
# on the 2-core CI machine compilation, not execution, is what these tests spend. LLVM
# optimisation level 0 cuts it 4-5x; the HLO (and so the formulations under test) is the
# same, only the machine code is less optimised. The HLO-structure test keeps the defaults.
jit_o0 = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


# ---------------------------------------------------------------------------------- configs
def tiny_distill_config(run_dir, **over):
    """`quickstart` shrunk to seconds: 8x8 digits, IPC 2, 4 iterations, width-8 ConvNet, one
    2-epoch evaluation run, one device; `over` = {dotted key: value} overrides."""
    base = {
        "data.image_size": "8", "ipc": "2", "iterations": "4", "log_every": "2",
        "checkpoint_every": "2", "model.width": "8", "loss.batch_real": "8", "eval.epochs": "2",
        "eval.num_runs": "1", "eval.compare_random": "False", "param.ddif.warmup_steps": "5",
        "progress": "False", "run_dir": str(run_dir), "num_devices": "1",
    }
    base.update({k: str(v) for k, v in over.items()})
    return build_config("quickstart", list(base.items()))


def tiny_train_denoiser_config(run_dir, **over):
    """`train_denoiser_digits` shrunk to seconds: a small MLP, 6 steps of batch 16, grids every
    2 steps; `over` = {dotted key: value}."""
    c = load_config("train_denoiser_digits")
    c.model.name = "mlp"
    c.model.hidden, c.model.depth, c.model.emb_dim = 32, 1, 16
    c.train.steps, c.train.batch_size, c.train.warmup_steps = 6, 16, 2
    c.log_every, c.checkpoint_every = 2, 3
    c.sample.every, c.sample.num, c.sample.steps = 2, 8, 2
    c.progress = False
    c.run_dir = str(run_dir)
    return set_values(c, **over)


def tiny_sample_config(run_dir, **over):
    """`sample_digits` shrunk: 3 solver steps, 20 samples in batches of 8, a 1-epoch quality net."""
    c = load_config("sample_digits")
    c.solver.steps = 3
    c.num_samples, c.batch_size = 20, 8
    c.quality.epochs, c.quality.width, c.quality.feature_dim = 1, 8, 16
    c.progress = False
    c.run_dir = str(run_dir)
    return set_values(c, **over)


# ---------------------------------------------------------------------------------- resume
# (first part's device count, resumed part's): the same mesh, then each way across 8 and 4.
MESH_CHANGES = ((8, 8), (8, 4), (4, 8))
# The default of `resume_on_meshes`: the same mesh and one change. Every command restores a
# checkpoint through the same `checkpoint.Checkpointer` onto the mesh it runs on, so the change
# in the other direction (4 -> 8) is exercised once, by the distill resume test (MESH_CHANGES),
# and by the multi-process kill-and-resume test (2 x 4 -> 1 x 4); a CI-time trade.
ONE_MESH_CHANGE = ((8, 8), (8, 4))


def resume_on_meshes(run, tmp_path, changes=ONE_MESH_CHANGE) -> dict:
    """Runs interrupted on one device count and resumed on another: `{(first, then): run_dir}`.

    `run(run_dir, num_devices, resume)` runs the command: stopped early (after a checkpoint)
    when `resume` is False, resumed to the end when True. Each interrupted run is made once per
    device count and copied for every resume from it (the compiles, not the copies, cost).
    """
    cut, out = {}, {}
    for first, then in changes:
        if first not in cut:
            cut[first] = tmp_path / f"cut{first}"
            run(cut[first], first, False)
        out[first, then] = tmp_path / f"{first}to{then}"
        shutil.copytree(cut[first], out[first, then])
        run(out[first, then], then, True)
    return out


def assert_resumed(resumed, uninterrupted, first, then, tol=1e-6):
    """A resumed run's array against the uninterrupted run's on `first` devices: bitwise when
    both parts ran there too; else within `tol` (`assert_close`), since a part on another device
    count splits its reductions (gradient all-reduces, per-device shares) differently."""
    if first == then:
        np.testing.assert_array_equal(resumed, uninterrupted, err_msg=f"{first} -> {then}")
    else:
        assert_close(np.asarray(resumed), np.asarray(uninterrupted), tol)


# ---------------------------------------------------------------------------------- processes
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Seconds without a heartbeat before the coordinator declares a process dead (jax's default is
# 100). 10 s proved too short on a loaded 2-core CI machine: both processes of a healthy run were
# declared dead while the other pytest worker kept the cores busy. A killed peer is noticed after
# about 0.8 x this (measured: 7.5 s at 10, 17 s at 20, 47 s at 60).
TEST_HEARTBEAT_S = 30

# Every process `start_cli` started, so a failing test cannot leave a run going (it would load
# the machine for the tests after it): `kill_started`, called by conftest after every test.
_STARTED: list[subprocess.Popen] = []


def kill_started() -> None:
    """SIGKILL every process `start_cli` started that is still running, and forget them all."""
    while _STARTED:
        p = _STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.communicate()


def start_cli(args, *, processes=2, devices=4, port=None, env=None, ids=None,
              module="jaxdiff.cli"):
    """Start `jaxdiff <args>` as `processes` real processes (`devices` fake CPU devices each),
    joined by a loopback coordinator; `processes=1` starts one plain process. Returns the
    `Popen`s (stdout+stderr to a pipe); any still running when the test ends is killed.
    Heartbeat timeout `TEST_HEARTBEAT_S`: a dead peer stops the others.
    `TEST_XLA_EXTRA` adds XLA flags (e.g. `--xla_cpu_multi_thread_eigen=false`). `module` runs
    another entry point (`python -m module <args> --coordinator ...`), e.g. a test worker."""
    port = port or free_port()
    base = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
                XLA_FLAGS=(f"--xla_force_host_platform_device_count={devices} "
                           + os.environ.get("TEST_XLA_EXTRA", "")),
                JAXDIFF_HEARTBEAT_TIMEOUT=str(TEST_HEARTBEAT_S), JAXDIFF_INIT_TIMEOUT="60",
                JAXDIFF_REUSE_HEAP="0",   # no re-exec: tiny configs gain nothing from it
                PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    base.update(env or {})
    procs = []
    for i in (ids if ids is not None else range(processes)):
        cmd = [sys.executable, "-m", module, *map(str, args)]
        if processes > 1:
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                    "--process-id", str(i)]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=base, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    _STARTED.extend(procs)
    return procs


def wait_cli(procs, timeout=300):
    """`[(returncode, output)]` of every process; any still running after `timeout` seconds (all
    together) is killed with SIGKILL (a process stuck in a collective ignores SIGTERM) and
    reported with returncode None."""
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, text))
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
            out.append((None, text))
    return out


def run_cli(args, *, processes=2, devices=4, timeout=300, env=None, module="jaxdiff.cli"):
    """`start_cli` + `wait_cli`; fails the test (showing each process's output tail) unless every
    process exits 0."""
    res = wait_cli(start_cli(args, processes=processes, devices=devices, env=env,
                             module=module), timeout)
    bad = [(i, rc, text) for i, (rc, text) in enumerate(res) if rc != 0]
    if bad:
        raise AssertionError("\n\n".join(f"process {i} exited {rc}:\n{text[-3000:]}"
                                          for i, rc, text in bad))
    return [text for _, text in res]


# ---------------------------------------------------------------------------------- DiffRS oracle
# diffrs.md §14: data q_0 = N(0, SQ^2 I), the "pretrained model" the exact reverse process of
# p_0 = N(0, SP^2 I), the discriminator the analytic log-ratio.
SQ, SP = 0.5, 1.0


def gauss_den(x, sigma, cond=None):
    """The exact denoiser of p_0 = N(0, SP^2 I): `SP^2 / (SP^2 + sigma^2) x`."""
    s2 = jnp.square(sigma).reshape((-1,) + (1,) * (x.ndim - 1))
    return (SP**2 / (SP**2 + s2) * x).astype(x.dtype)


def oracle_logit(x, sigma, cond=None):
    """log q_sigma(x) / p_sigma(x) for q_0 = N(0, SQ^2 I), p_0 = N(0, SP^2 I)."""
    d = math.prod(x.shape[1:])
    s2 = jnp.square(sigma)
    r2 = jnp.sum(jnp.square(x).reshape(x.shape[0], -1), axis=1)
    return 0.5 * d * jnp.log((SP**2 + s2) / (SQ**2 + s2)) + 0.5 * r2 * (
        1.0 / (SP**2 + s2) - 1.0 / (SQ**2 + s2))


# ---------------------------------------------------------------------------------- mixtures
def _cast(g, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                        else a, g)


def denoiser_mixture(dtype=jnp.float32):
    """A 3-component 2-D mixture with diagonal stds and labels (0, 1, 1): the denoiser tests'."""
    return _cast(G.gaussian_mixture(
        jnp.array([0.2, 0.5, 0.3]),
        jnp.array([[-1.5, 0.0], [1.0, 0.5], [0.0, -1.2]]),
        jnp.array([[0.4, 0.3], [0.6, 0.6], [0.5, 0.2]]),  # diagonal stds
        labels=jnp.array([0, 1, 1]),
    ), dtype)


def mixture_points(key, n=64, dtype=jnp.float32):
    """`(x [n, 2], sigma [n])`: points around the mixtures and log-uniform noise levels."""
    k1, k2 = jax.random.split(key)
    x = 2.0 * jax.random.normal(k1, (n, 2), dtype)
    sigma = jnp.exp(jax.random.uniform(k2, (n,), dtype, -5.0, 4.0))  # 0.007 .. 55
    return x, sigma


def tilt_mixture(dtype=jnp.float32):
    """A 3-component 2-D mixture for reward guidance (its reward tilts are exact mixtures)."""
    return _cast(G.gaussian_mixture(
        jnp.array([0.3, 0.4, 0.3]),
        jnp.array([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]]),
        jnp.array([[0.5, 0.4], [0.6, 0.5], [0.4, 0.6]]),
    ), dtype)


LIN = R.linear_reward(jnp.array([1.0, 0.5]))
QUAD = R.quadratic_reward(jnp.array([1.0, -1.0]), 0.8)


def exact_set(g, key, n, reward=LIN):
    """A lookahead set of n exact draws of mixture `g` with their rewards."""
    x = G.sample(g, key, n)
    return L.make_lookahead_set(x, reward(x))
