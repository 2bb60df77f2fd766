"""`jaxdiff train-discriminator`: train the DiffRS / DG time-dependent discriminator for a
trained denoiser (spec diffrs.md §9.2).

The path (config -> `jaxdiff.specs.train_discriminator.resolve` -> here):

1. **Fake data**: `fake.num` samples of the base sampler without guidance (deterministic Heun on
   a Karras grid, EMA weights), written once to `<run_dir>/fake.npz` and reused on resume.
2. **Training**: real images (label 1) against fake ones (label 0), BCE with the library's VP
   noise importance sampling (`jaxdiff.diffusion.discriminator`), Adam, L2 decay; data-parallel
   over a 1-D mesh (replicated parameters; each step's batch read on the host, every process
   only its devices' rows (`feeding.HostBatches`), and sharded over `data`); resumable
   through `run_loop` (step s draws from `fold_in(key, s)`). `disc.extractor = "quality_net"`
   puts the pretrained quality classifier in front as a frozen feature extractor (as DG freezes
   the ADM classifier); "none" trains a conv head on the pixels.
3. **Outputs**: `discriminator.json` + `discriminator/<step>/` (`diffusion.saved`), per-noise-
   level accuracy in `results.json`. DiffRS with it: `jaxdiff sample --config
   sample_digits_diffrs --config.guidance.disc_dir=<run_dir>`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff import sharding as shd
from jaxdiff.diffusion import discriminator as D
from jaxdiff.diffusion import schedules, solvers
from jaxdiff.diffusion.saved import (DISC_JSON, TrainedDenoiser, build_discriminator, load_model,
                                     save_discriminator)
from jaxdiff.distributed import to_host
from jaxdiff.feeding import HostBatches
from jaxdiff.files import atomic_savez, atomic_write_json
from jaxdiff.pipelines import common
from jaxdiff.pipelines.loop import run_loop
from jaxdiff.specs.train_discriminator import FakeSpec, TrainDiscriminatorSpec


def generate_fake(model: TrainedDenoiser, fake: FakeSpec, key, mesh, num_classes: int):
    """`fake.num` base-sampler samples `[N, H, W, C]` (model space) and labels `[N]` (-1: none)."""
    b, shape = fake.batch_size, model.image_shape
    bsh = shd.batch_sharding(mesh)

    @jax.jit
    def batch(state, off, sigmas):
        x_T = solvers.prior_sample(key, (b, *shape), sigmas[0], offset=off)
        x_T = jax.lax.with_sharding_constraint(x_T, bsh)
        idx = jnp.arange(b, dtype=jnp.int32) + off
        cond = (idx % num_classes) if num_classes else None
        return solvers.sample(solvers.heun(), model.make_denoise(state), x_T, sigmas, key, cond,
                              offset=off)[0]

    state = shd.replicate(model.state(True), mesh)
    sig = schedules.karras_sigmas(fake.steps, fake.sigma_min, fake.sigma_max, fake.rho)
    xs = [to_host(batch(state, jnp.int32(o), sig)) for o in range(0, fake.num, b)]
    labels = (np.arange(fake.num) % num_classes) if num_classes else np.full(fake.num, -1)
    return np.concatenate(xs)[:fake.num].astype(np.float32), labels.astype(np.int32)


def accuracy_by_noise(vp_logit, real, fake, key, taus=(0.0, 0.05, 0.2, 0.5, 1.0)) -> dict:
    """Accuracy of `logit > 0` (real) / `<= 0` (fake) at fixed VP times (fresh noise)."""
    out = {}
    for t in taus:
        kr, kf = jax.random.split(jax.random.fold_in(key, int(1000 * t)))
        tr = jnp.full((real.shape[0],), t, jnp.float32)
        tf = jnp.full((fake.shape[0],), t, jnp.float32)
        xr = D.perturb_vp(real, tr, jax.random.normal(kr, real.shape))
        xf = D.perturb_vp(fake, tf, jax.random.normal(kf, fake.shape))
        lr, lf = to_host((vp_logit(xr, tr), vp_logit(xf, tf)))
        out[f"tau={t:g}"] = float((np.sum(lr > 0) + np.sum(lf <= 0)) / (lr.size + lf.size))
    return out


def _fake_data(spec: TrainDiscriminatorSpec, run_dir, den_model, key, mesh):
    """The fake set of `fake.npz`, generated and written on first use."""
    path = os.path.join(run_dir, "fake.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            fake, labels = z["samples"], z["labels"]
        if fake.shape[0] != spec.fake.num:
            raise ValueError(f"{path} holds {fake.shape[0]} samples but fake.num = "
                             f"{spec.fake.num}; use another run_dir")
        return fake, labels
    print(f"[jaxdiff train-discriminator] generating {spec.fake.num} fake samples "
          f"(Heun, {spec.fake.steps} steps)", flush=True)
    fake, labels = generate_fake(den_model, spec.fake, key, mesh, spec.num_classes)
    atomic_savez(path, samples=fake, labels=labels)
    return fake, labels


def _batch_rows(loop_key, half: int, num_real: int, num_fake: int):
    """`(real_rows(i), fake_rows(i))`: `half` real and `half` fake rows of step i, drawn with
    replacement from the first two keys of `split(fold_in(key, i), 3)`."""
    def rows(which, n):
        return lambda i: jax.random.randint(
            jax.random.split(jax.random.fold_in(loop_key, i), 3)[which], (half,), 0, n)
    return rows(0, num_real), rows(1, num_fake)


def _train_step(base_step, conditional: bool):
    """`(state, i, real_u8, real_y, fake_x, fake_y) -> (state, metrics)` on step i's batch (read
    on the host, `_batch_rows`, sharded over the mesh); the third key of step i drives the step."""

    def step(state, i, rx, ry, fx, fy):
        ks = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state["key"]), i), 3)[2]
        new, met = base_step(state["disc"], jdata.to_model_space(rx), fx, ks,
                             ry if conditional else None, fy if conditional else None)
        return {"disc": new, "key": state["key"]}, met

    return step


def run(spec: TrainDiscriminatorSpec) -> dict:
    """Train a discriminator for `spec.model_dir` (see configs/train_discriminator_digits.py)."""
    timer = common.Timer()
    mesh, ndev = common.data_mesh_checked(spec.run.num_devices,
                                          train__batch_size=spec.train.batch_size,
                                          fake__batch_size=spec.fake.batch_size)
    den_model = load_model(spec.model_dir)
    real_ds = jdata.load(spec.dataset, "train", data_dir=spec.data_dir or None,
                         image_size=spec.image_size or None, mmap=True)
    run_dir = common.open_run_dir(spec.run.run_dir, spec.resolution,
                                  resume=spec.run.resume)
    k_fake, k_init, k_loop, k_eval, _ = jax.random.split(jax.random.key(spec.run.seed), 5)
    fake, fake_labels = _fake_data(spec, run_dir, den_model, k_fake, mesh)
    tx = D.default_optimizer(spec.train.lr, spec.train.weight_decay)
    graphdef, dstate = D.init_disc_train_state(build_discriminator(spec.disc, nnx.Rngs(k_init)),
                                               tx)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(dstate.params))
    # Each step's real and fake halves are read on the host, each process only its devices'.
    half = spec.train.batch_size
    real_rows, fake_rows = _batch_rows(k_loop, half, len(real_ds.labels), len(fake))
    split = (shd.batch_sharding(mesh),) * 2
    real_batches = HostBatches((real_ds.images, real_ds.labels.astype(np.int32)), real_rows, split)
    fake_batches = HostBatches((fake, np.asarray(fake_labels, np.int32)), fake_rows, split)
    step = _train_step(D.make_disc_train_step(graphdef, tx), bool(spec.num_classes))
    state = shd.replicate({"disc": dstate, "key": jax.random.key_data(k_loop)}, mesh)
    state_sh = jax.tree.map(lambda _: shd.replicated(mesh), state)
    jitted = jax.jit(step, donate_argnums=0, out_shardings=(state_sh, shd.replicated(mesh)))
    total = spec.train.steps
    print(f"[jaxdiff train-discriminator] {spec.dataset} {tuple(den_model.image_shape)}: "
          f"{real_ds.images.shape[0]} real vs {fake.shape[0]} fake; head {num_params:,} "
          f"parameters (extractor: {spec.disc['extractor']}); {total} steps of {half}+{half} on "
          f"{common.describe_devices()} (mesh {ndev})", flush=True)
    stop = min(spec.stop_after, total) if spec.stop_after else total
    state, history = run_loop(lambda s, i: jitted(s, i, *real_batches(i), *fake_batches(i)),
                              state, stop, run_dir=run_dir,
                              fingerprint=spec.resolution.resume_fingerprints,
                              checkpoint_every=spec.run.checkpoint_every,
                              log_every=spec.run.log_every, resume=spec.run.resume,
                              desc="train-discriminator", progress=spec.run.progress,
                              divergence_limit=spec.run.divergence_limit)
    if stop < total:
        print(f"[jaxdiff train-discriminator] stopped after {stop} of {total} steps; continue "
              "with --resume --config.stop_after=0", flush=True)
        return {"stopped_at": stop, "run_dir": run_dir}
    final = to_host(state["disc"])
    save_discriminator(run_dir, final.params, final.frozen, spec.disc, step=total)
    acc = {} if spec.num_classes else _accuracy(graphdef, final, real_ds, fake, k_eval)
    out = {"dataset": spec.dataset, "model_dir": spec.model_dir, "disc_spec": spec.disc,
           "num_params": num_params, "steps": total,
           "final_loss": history[-1]["loss"] if history else None,
           "final_accuracy": history[-1]["accuracy"] if history else None,
           "accuracy_by_tau": acc, "devices": common.describe_devices(), "mesh_size": ndev,
           "seconds": timer.elapsed()}
    atomic_write_json(os.path.join(run_dir, "results.json"), out)
    print(f"[jaxdiff train-discriminator] done in {out['seconds']:.0f} s; final loss "
          f"{out['final_loss']:.4f}, accuracy by tau {acc}. Discriminator: "
          f"{run_dir}/{DISC_JSON}; DiffRS: jaxdiff sample --config sample_digits_diffrs "
          f"--config.guidance.disc_dir={run_dir}", flush=True)
    return out


def _accuracy(graphdef, final, real_ds, fake, key) -> dict:
    """`accuracy_by_noise` on up to 512 real and fake images."""
    vp_logit = jax.jit(lambda p, f, x, t: D.vp_logit_of(graphdef, p, f)(x, t))
    n = min(512, fake.shape[0], real_ds.images.shape[0])
    return accuracy_by_noise(lambda x, t: vp_logit(final.params, final.frozen, x, t),
                             jnp.asarray(jdata.to_model_space(real_ds.images[:n])),
                             jnp.asarray(fake[:n]), key)
