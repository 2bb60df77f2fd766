"""`jaxdiff train-denoiser`: train an EDM denoiser (U-Net or MLP, optionally class-conditional).

The path (config -> `jaxdiff.specs.train_denoiser.resolve` -> here): the training split (uint8,
a memory map of the data cache) -> the network (`models.denoisers`) -> the data-parallel EDM
loop step with EMA (`diffusion.train.make_loop_step`: each step's batch drawn from the step's
key, read on the host by each process for its own devices (`feeding.HostBatches`) and sharded
over the mesh's `data` axis, gradients all-reduced by XLA) -> `run_loop` (full state checkpointed:
parameters, EMA, optimiser state, the run's key; step s draws from `fold_in(key, s)`, so
`--resume` continues to the same result as an uninterrupted run) -> the final model.

Images are modelled in `[-1, 1]` (`jaxdiff.data.MODEL_SPACE`). The run directory receives:

* `checkpoints/`        Orbax checkpoints of the full loop state;
* `samples_<step>.png`  grids from a few-step sampler with the EMA parameters, every
                        `sample.every` steps and at the end (`samples_final.png`);
* `model.json`, `model/`  the final model that `jaxdiff sample` loads (`diffusion.saved`);
* `metrics.jsonl` (loss, grad_norm, loss_avg, ema_decay), `results.json`, `config.json`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff import sharding as shd
from jaxdiff.diffusion import schedules, solvers
from jaxdiff.diffusion.saved import MODEL_JSON, save_model
from jaxdiff.diffusion.train import (LoopState, batch_rows, denoiser_optimizer, init_train_state,
                                     make_loop_step, nnx_denoiser)
from jaxdiff.distributed import to_host
from jaxdiff.feeding import HostBatches
from jaxdiff.files import atomic_write_json
from jaxdiff.images import save_grid
from jaxdiff.models.denoisers import build_denoiser
from jaxdiff.pipelines import common
from jaxdiff.pipelines.loop import run_loop
from jaxdiff.specs.train_denoiser import GridSpec, TrainDenoiserSpec


def make_grid_sampler(graphdef, sigma_data, grid: GridSpec, image_shape, num_classes: int):
    """Jitted `grid(ema, rest, key) -> [num, H, W, C]`: `grid.solver` on a Karras grid of
    `grid.steps` levels, class labels `i % num_classes` for a conditional model."""
    solver = solvers.get_solver(grid.solver)
    sigmas = schedules.karras_sigmas(grid.steps, grid.sigma_min, grid.sigma_max, grid.rho)

    @jax.jit
    def sample(ema, rest, key, sigmas):
        den = nnx_denoiser(graphdef, ema, rest, sigma_data)
        x_T = solvers.prior_sample(key, (grid.num, *image_shape), sigmas[0])
        cond = (jnp.arange(grid.num, dtype=jnp.int32) % num_classes) if num_classes else None
        return solvers.sample(solver, den, x_T, sigmas, key, cond)[0]

    return lambda ema, rest, key: sample(ema, rest, key, sigmas)


def run(spec: TrainDenoiserSpec) -> dict:
    """Train the denoiser described by `spec` (see `configs/train_denoiser_digits.py`)."""
    timer = common.Timer()
    t = spec.train
    mesh, ndev = common.data_mesh_checked(spec.run.num_devices, train__batch_size=t.batch_size)
    train = spec.data.load("train", mmap=True)
    info = train.info
    run_dir = common.open_run_dir(spec.run.run_dir, spec.resolution,
                                  resume=spec.run.resume)
    k_init, k_loop, k_grid = jax.random.split(jax.random.key(spec.run.seed), 3)
    tx = denoiser_optimizer(t.lr, t.warmup_steps, t.grad_clip)
    graphdef, tstate = init_train_state(build_denoiser(spec.net, nnx.Rngs(k_init)), tx)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tstate.params))
    state = shd.replicate(LoopState(tstate, jax.random.key_data(k_loop),
                                    jnp.zeros((), jnp.float32)), mesh)
    # Each step's batch is read on the host, each process only its devices' rows.
    batches = HostBatches((train.images, train.labels.astype(np.int32)),
                          batch_rows(k_loop, t.batch_size, len(train.labels)),
                          (shd.batch_sharding(mesh),) * 2)
    step = make_loop_step(graphdef, tx, batch_size=t.batch_size, sigma_data=t.sigma_data,
                          p_mean=t.p_mean, p_std=t.p_std, label_dropout=t.label_dropout,
                          null_label=spec.num_classes or None, ema_decay=t.ema_decay,
                          ema_warmup=t.ema_warmup, log_every=spec.run.log_every,
                          batch_sharding=shd.batch_sharding(mesh))
    state_sharding = jax.tree.map(lambda _: shd.replicated(mesh), state)
    jitted = jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, shd.replicated(mesh)))
    write_grid = _grid_writer(spec, graphdef, run_dir, info, k_grid)

    def on_log(done, st, row):
        every = spec.grid.every
        if every and done % every == 0 and done != t.steps:
            write_grid(f"{done:06d}", st)
        return {}

    print(f"[jaxdiff train-denoiser] {info.name} {info.image_shape}, {len(train.labels)} images; "
          f"{spec.net['name']} ({num_params:,} parameters, "
          f"{'conditional' if spec.num_classes else 'unconditional'}); {t.steps} steps of batch "
          f"{t.batch_size} on {common.describe_devices()} (mesh {ndev})", flush=True)
    stop = min(spec.stop_after, t.steps) if spec.stop_after else t.steps
    state, history = run_loop(
        lambda s, i: jitted(s, i, *batches(i)), state, stop, run_dir=run_dir,
        fingerprint=spec.resolution.resume_fingerprints, checkpoint_every=spec.run.checkpoint_every,
        log_every=spec.run.log_every, resume=spec.run.resume, desc="train-denoiser",
        on_log=on_log, progress=spec.run.progress,
        divergence_limit=spec.run.divergence_limit, divergence_key="loss_avg")
    if stop < t.steps:
        print(f"[jaxdiff train-denoiser] stopped after {stop} of {t.steps} steps (stop_after); "
              "continue with --resume --config.stop_after=0", flush=True)
        return {"stopped_at": stop, "run_dir": run_dir}
    final = to_host(state.train)
    model_dir = save_model(run_dir, final.params, final.ema, final.rest, spec.net, step=t.steps)
    grid = write_grid("final", state)
    losses = [r["loss_avg"] for r in history]
    out = {
        "dataset": info.name, "image_shape": list(info.image_shape), "model": spec.net,
        "num_params": num_params, "steps": t.steps, "batch_size": t.batch_size,
        "final_loss": losses[-1] if losses else None,
        "loss_curve": [[r["step"], r["loss_avg"]] for r in history],
        "seconds": timer.elapsed(), "devices": common.describe_devices(), "mesh_size": ndev,
        "model_dir": model_dir,
    }
    atomic_write_json(os.path.join(run_dir, "results.json"), out)
    print(f"[jaxdiff train-denoiser] done in {out['seconds']:.0f} s, final loss "
          f"{out['final_loss']:.4f}. Model: {run_dir}/{MODEL_JSON}; samples: {grid}; "
          f"metrics: {run_dir}/metrics.jsonl", flush=True)
    return out


def _grid_writer(spec: TrainDenoiserSpec, graphdef, run_dir: str, info, key):
    """`write(tag, state) -> path` of `samples_<tag>.png` (EMA parameters, fixed key)."""
    sample = make_grid_sampler(graphdef, spec.train.sigma_data, spec.grid, info.image_shape,
                               spec.num_classes)
    k = spec.num_classes
    ncol = k if k and spec.grid.num % k == 0 else None

    def write(tag, st):
        x = sample(st.train.ema, st.train.rest, key)
        return save_grid(os.path.join(run_dir, f"samples_{tag}.png"),
                         jdata.model_space_to_display(x), ncol=ncol,
                         scale=max(1, 64 // info.image_shape[0]))

    return write
