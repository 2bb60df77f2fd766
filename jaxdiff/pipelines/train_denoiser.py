"""`jaxdiff train-denoiser`: train an EDM denoiser (U-Net or MLP, optionally class-conditional).

Uses the library's EDM loss, `make_train_step` and EMA (`jaxdiff.diffusion.train`), data-parallel
over a 1-D mesh: the training set (uint8) and the parameters are replicated, each step's batch
is drawn on device and sharded over the mesh's `data` axis; XLA inserts the gradient all-reduce.
The run goes through the resumable `run_loop` (full state — parameters, EMA, optimiser state,
step counter and the run's PRNG key — checkpointed), so `--resume` continues to the same result
as an uninterrupted run: step s draws its batch, noise levels and noise from `fold_in(key, s)`.

Images are modelled in `[-1, 1]` (`denoiser_io.DATA_SCALING`). The run directory receives:

* `checkpoints/`        Orbax checkpoints of the full loop state;
* `samples_<step>.png`  grids from a few-step sampler (Heun) with the EMA parameters, every
                        `sample.every` steps and at the end (`samples_final.png`);
* `model.json`, `model/`  the final model (parameters, EMA, spec) that `jaxdiff sample` loads;
* `metrics.jsonl` (loss, grad_norm, lr, ema_decay), `results.json`, `config.json`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff import sharding as shd
from jaxdiff.diffusion import schedules, solvers
from jaxdiff.diffusion.train import init_train_state, make_train_step, nnx_denoiser
from jaxdiff.images import save_grid
from jaxdiff.pipelines import common
from jaxdiff.pipelines import denoiser_io as io
from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.pipelines.loop import run_loop

# Run-control keys: they do not change the result, so they are left out of the checkpoint's
# config fingerprint (a resumed run sets `resume`; an interrupted one `stop_after`).
RUN_CONTROL_KEYS = ("resume", "progress", "stop_after", "run_dir")


def fingerprint_config(config: ml_collections.ConfigDict) -> dict:
    d = config.to_dict()
    for k in RUN_CONTROL_KEYS:
        d.pop(k, None)
    return d


def make_optimizer(train_cfg) -> optax.GradientTransformation:
    """Adam with linear warm-up to `lr` over `warmup_steps`, after global-norm clipping."""
    if train_cfg.lr <= 0:
        raise ValueError(f"config key 'train.lr' must be > 0, got {train_cfg.lr}")
    sched = (optax.linear_schedule(0.0, train_cfg.lr, train_cfg.warmup_steps)
             if train_cfg.warmup_steps > 0 else train_cfg.lr)
    parts = [optax.clip_by_global_norm(train_cfg.grad_clip)] if train_cfg.grad_clip > 0 else []
    return optax.chain(*parts, optax.adam(sched))


def ema_decay_at(step, decay, warmup: bool):
    """EMA decay of update `step` (0-based): `min(decay, (1 + s) / (10 + s))` with warm-up (so
    short runs are not dominated by the initial weights), else `decay`. Traced."""
    decay = jnp.asarray(decay, jnp.float32)
    if not warmup:
        return decay
    s = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + s) / (10.0 + s))


def make_loop_step(graphdef, tx, config, mesh, conditional: bool, null_label):
    """The jitted loop step `(state, step) -> (state, metrics)` with data passed as arguments.

    `state = {"train": TrainState, "key": uint32 key data, "loss_sum": f32}`. Step s uses
    `fold_in(key, s)`: batch indices (drawn with replacement, as
    `jaxdiff.diffusion.train.train_loop`), then the EDM sigma/noise and label-dropout keys.
    Metric `loss_avg` is the mean loss since the last log step (`loss` is this step's, noisy).
    """
    tcfg = config.train
    base = make_train_step(graphdef, tx, sigma_data=tcfg.sigma_data, p_mean=tcfg.p_mean,
                           p_std=tcfg.p_std,
                           label_dropout=tcfg.label_dropout if conditional else 0.0,
                           null_label=null_label if conditional else None)
    batch_sharding = shd.batch_sharding(mesh)
    batch = tcfg.batch_size
    warm = bool(tcfg.ema_warmup)
    log_every = max(int(config.log_every), 1)

    def step(state, step_idx, images, labels):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step_idx)
        k_idx, k_step = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch,), 0, images.shape[0])
        # The batch is the only sharded operand: each device runs its slice of the forward and
        # backward pass; gradients (replicated parameters) are all-reduced by XLA.
        x0 = jax.lax.with_sharding_constraint(io.to_model_space(images[idx]), batch_sharding)
        lab = jax.lax.with_sharding_constraint(labels[idx], batch_sharding) if conditional else None
        decay = ema_decay_at(step_idx, tcfg.ema_decay, warm)
        train, metrics = base(state["train"], x0, k_step, lab, decay)
        phase = step_idx % log_every
        loss_sum = jnp.where(phase == 0, 0.0, state["loss_sum"]) + metrics["loss"]
        new = {"train": train, "key": state["key"], "loss_sum": loss_sum}
        return new, {**metrics, "loss_avg": loss_sum / (phase + 1).astype(jnp.float32),
                     "ema_decay": decay}

    return step


def make_grid_sampler(graphdef, sigma_data, sample_cfg, image_shape, num: int, num_classes: int):
    """Jitted `grid(ema, rest, key) -> [num, H, W, C]`: `sample.solver` (deterministic: heun or
    euler, dpmpp_2m) with `sample.steps` Karras steps, class labels `i % num_classes` for a
    conditional model."""
    solver = solvers.get_solver(sample_cfg.solver)
    sigmas = schedules.karras_sigmas(sample_cfg.steps, sample_cfg.sigma_min, sample_cfg.sigma_max,
                                     sample_cfg.rho)

    @jax.jit
    def grid(ema, rest, key, sigmas):
        den = nnx_denoiser(graphdef, ema, rest, sigma_data)
        x_T = solvers.prior_sample(key, (num, *image_shape), sigmas[0])
        cond = (jnp.arange(num, dtype=jnp.int32) % num_classes) if num_classes else None
        x, _ = solvers.sample(solver, den, x_T, sigmas, key, cond)
        return x

    return lambda ema, rest, key: grid(ema, rest, key, sigmas)


def validate(config) -> None:
    """Config checks that need no data (fail before any work)."""
    t = config.train
    for name in ("steps", "batch_size"):
        if t[name] < 1:
            raise ValueError(f"config key 'train.{name}' must be >= 1, got {t[name]}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ValueError(f"config key 'train.ema_decay' must be in [0, 1), got {t.ema_decay}")
    if config.conditional and not 0.0 <= t.label_dropout < 1.0:
        raise ValueError(f"config key 'train.label_dropout' must be in [0, 1), got {t.label_dropout}")
    if config.sample.steps < 1:
        raise ValueError(f"config key 'sample.steps' must be >= 1, got {config.sample.steps}")
    if config.sample.every and config.sample.every % config.log_every:
        raise ValueError(f"config key 'sample.every' = {config.sample.every} must be a multiple of "
                         f"'log_every' = {config.log_every} (grids are written at log steps)")
    if config.stop_after < 0:
        raise ValueError(f"config key 'stop_after' must be >= 0, got {config.stop_after}")


def run(config: ml_collections.ConfigDict) -> dict:
    """Train the denoiser described by `config` (see `configs/train_denoiser_digits.py`)."""
    timer = common.Timer()
    validate(config)
    mesh, ndev = common.data_mesh_checked(config.num_devices,
                                          train__batch_size=config.train.batch_size)
    train = jdata.load(config.data.name, "train", data_dir=config.data.data_dir or None,
                       image_size=config.data.image_size or None)
    info = train.info
    num_classes = info.num_classes if config.conditional else 0
    spec = io.model_spec(config.model, info.image_shape, num_classes)
    spec.update(sigma_data=float(config.train.sigma_data), dataset=info.name,
                image_size=int(config.data.image_size or info.image_shape[0]),
                data_scaling=io.DATA_SCALING)
    run_dir = common.make_run_dir(config.run_dir)
    common.save_config(run_dir, config)

    key = jax.random.key(config.seed)
    k_init, k_loop, k_grid = jax.random.split(key, 3)
    model = io.build_model(spec, nnx.Rngs(k_init))
    tx = make_optimizer(config.train)
    graphdef, tstate = init_train_state(model, tx)
    del model
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tstate.params))
    state = shd.replicate({"train": tstate, "key": jax.random.key_data(k_loop),
                           "loss_sum": jnp.zeros((), jnp.float32)}, mesh)
    images = shd.replicate(jnp.asarray(train.images), mesh)
    labels = shd.replicate(jnp.asarray(train.labels, jnp.int32), mesh)

    step = make_loop_step(graphdef, tx, config, mesh, bool(num_classes), num_classes)
    state_sharding = jax.tree.map(lambda _: shd.replicated(mesh), state)
    jitted = jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, shd.replicated(mesh)))
    step_fn = lambda s, i: jitted(s, i, images, labels)

    grid_fn = make_grid_sampler(graphdef, config.train.sigma_data, config.sample, info.image_shape,
                                config.sample.num, num_classes)
    scale = max(1, 64 // info.image_shape[0])
    ncol = num_classes if num_classes and config.sample.num % num_classes == 0 else None

    def write_grid(tag, st):
        x = grid_fn(st["train"].ema, st["train"].rest, k_grid)
        return save_grid(os.path.join(run_dir, f"samples_{tag}.png"), io.to_display(x),
                         ncol=ncol, scale=scale)

    def on_log(done, st, row):
        every = config.sample.every
        if every and done % every == 0 and done != config.train.steps:
            write_grid(f"{done:06d}", st)
        return {}

    print(f"[jaxdiff train-denoiser] {info.name} {info.image_shape}, {len(train.labels)} images; "
          f"{spec['name']} ({num_params:,} parameters, {'conditional' if num_classes else 'unconditional'}); "
          f"{config.train.steps} steps of batch {config.train.batch_size} on "
          f"{common.describe_devices()} (mesh {ndev})", flush=True)
    total = config.train.steps
    stop = min(config.stop_after, total) if config.stop_after else total
    state, history = run_loop(
        step_fn, state, stop, run_dir=run_dir, fingerprint=config_fingerprint(fingerprint_config(config)),
        checkpoint_every=config.checkpoint_every, log_every=config.log_every,
        resume=config.resume, desc="train-denoiser", on_log=on_log, progress=config.progress)
    if stop < total:
        print(f"[jaxdiff train-denoiser] stopped after {stop} of {total} steps (stop_after); "
              "continue with --resume --config.stop_after=0", flush=True)
        return {"stopped_at": stop, "run_dir": run_dir}

    final = jax.device_get(state["train"])
    model_dir = io.save_model(run_dir, final.params, final.ema, final.rest, spec, step=total)
    grid = write_grid("final", state)
    losses = [r["loss_avg"] for r in history]
    out = {
        "dataset": info.name, "image_shape": list(info.image_shape), "model": spec,
        "num_params": num_params, "steps": total, "batch_size": config.train.batch_size,
        "final_loss": losses[-1] if losses else None,
        "loss_curve": [[r["step"], r["loss_avg"]] for r in history],
        "seconds": timer.elapsed(), "devices": common.describe_devices(), "mesh_size": ndev,
        "model_dir": model_dir,
    }
    common.write_json(os.path.join(run_dir, "results.json"), out)
    print(f"[jaxdiff train-denoiser] done in {out['seconds']:.0f} s, final loss "
          f"{out['final_loss']:.4f}. Model: {run_dir}/{io.MODEL_JSON}; samples: {grid}; "
          f"metrics: {run_dir}/metrics.jsonl", flush=True)
    return out
