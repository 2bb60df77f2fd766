"""`jaxdiff train-discriminator`: train the DiffRS / DG time-dependent discriminator for a trained
denoiser, then compute DiffRS warm-up tables and draw a short DiffRS demo.

Inputs: the final model of a `jaxdiff train-denoiser` run (`config.model_dir`, format of
`denoiser_io`) and its training data (dataset and image size from its `model.json`).

Steps (spec diffrs.md §9.2):
1. **Fake data**: `fake.num` samples of the base sampler without guidance (deterministic Heun on a
   Karras grid, EMA weights), written once to `<run_dir>/fake.npz` and reused on resume.
2. **Training**: real images (label 1) against fake ones (label 0), BCE with the library's VP
   noise importance sampling (`jaxdiff.diffusion.discriminator`), Adam lr 3e-4, L2 1e-7.
   Data-parallel over a 1-D mesh (replicated parameters and data, the batch sharded over
   `data`); resumable through `run_loop` (step s draws from `fold_in(key, s)`).
   `disc.extractor = "quality_net"` uses the pretrained quality classifier
   (`pipelines.quality_net`) as the frozen feature extractor, as the reference uses the ADM
   classifier; `"none"` trains a conv head on the pixels.
3. **Outputs**: `discriminator.json` + `discriminator/<step>/` (Orbax: head `params`, `frozen`
   rest) loadable with `load_discriminator(run_dir)`; per-noise-level accuracy; DiffRS warm-up
   logits (cached by `rejection.load_or_compute`), the M/M' tables at `diffrs.gamma`, and a
   DiffRS sample grid with acceptance statistics in `results.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff import sharding as shd
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.config_utils import require_choice
from jaxdiff.diffusion import discriminator as D
from jaxdiff.diffusion import rejection as R
from jaxdiff.diffusion import schedules, solvers
from jaxdiff.images import save_grid
from jaxdiff.models.discriminator import Discriminator
from jaxdiff.pipelines import common
from jaxdiff.pipelines import denoiser_io as io
from jaxdiff.checkpoint import config_fingerprint
from jaxdiff.pipelines.loop import run_loop

EXTRACTORS = ("none", "quality_net")
DISC_JSON = "discriminator.json"
DISC_DIR = "discriminator"
RUN_CONTROL_KEYS = ("resume", "progress", "stop_after", "run_dir")


# --------------------------------------------------------------------------------------------
# Model construction, saving, loading
# --------------------------------------------------------------------------------------------


def disc_spec(config, image_shape, num_classes: int, dataset: str, image_size: int) -> dict:
    """JSON description of the discriminator (enough to rebuild it for loading)."""
    dc = config.disc
    ext = require_choice(dc.extractor, EXTRACTORS, "disc.extractor")
    return {"extractor": ext, "width": int(dc.width), "depth": int(dc.depth),
            "emb_dim": int(dc.emb_dim), "num_classes": int(num_classes),
            "image_shape": [int(s) for s in image_shape], "dataset": dataset,
            "image_size": int(image_size), "beta_min": 0.1, "beta_max": 20.0,
            "data_scaling": io.DATA_SCALING}


def build_discriminator(spec: dict, rngs: nnx.Rngs) -> Discriminator:
    extractor, method = None, "embed"
    if spec["extractor"] == "quality_net":
        from jaxdiff.pipelines.quality_net import QualityNetSpec, get_quality_net

        net = get_quality_net(QualityNetSpec(spec["dataset"], image_size=spec["image_size"]),
                              progress=True)
        extractor, method = nnx.merge(net.graphdef, net.params, net.rest), "features"
    return Discriminator(tuple(spec["image_shape"]), extractor=extractor, method=method,
                         width=spec["width"], depth=spec["depth"], emb_dim=spec["emb_dim"],
                         num_classes=spec["num_classes"], rngs=rngs)


class TrainedDiscriminator(NamedTuple):
    graphdef: Any
    params: Any
    frozen: Any
    spec: dict

    def state(self):
        """Array pytree to pass (traced) into jitted samplers."""
        return (self.params, self.frozen)

    def make_logit(self, state):
        """Sampler contract `disc_logit(x, sigma, cond) -> [N]` (VE state; call inside jit)."""
        params, frozen = state
        return D.logit_fn(self.graphdef, params, frozen, beta_min=self.spec["beta_min"],
                          beta_max=self.spec["beta_max"])


def save_discriminator(run_dir: str, params, frozen, spec: dict, *, step: int) -> str:
    run_dir = os.path.abspath(run_dir)
    d = os.path.join(run_dir, DISC_DIR)
    with Checkpointer(d, max_to_keep=1) as ck:
        ck.save(int(step), {"params": params, "frozen": frozen}, {"spec": spec}, wait=True)
    common.write_json(os.path.join(run_dir, DISC_JSON), {**spec, "step": int(step)})
    return d


def load_discriminator(run_dir: str) -> TrainedDiscriminator:
    """Load the discriminator of a finished `jaxdiff train-discriminator` run."""
    run_dir = os.path.abspath(os.path.expanduser(run_dir))
    path = os.path.join(run_dir, DISC_JSON)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} holds no finished discriminator ({DISC_JSON} "
                                "missing): run or resume `jaxdiff train-discriminator`")
    with open(path) as f:
        spec = json.load(f)
    model = build_discriminator(spec, nnx.Rngs(0))
    graphdef, params, frozen = nnx.split(model, D.head_filter, ...)
    with Checkpointer(os.path.join(run_dir, DISC_DIR)) as ck:
        _, st, _ = ck.restore({"params": params, "frozen": frozen}, step=spec.get("step"))
    return TrainedDiscriminator(graphdef, st["params"], st["frozen"], spec)


# --------------------------------------------------------------------------------------------
# Pipeline pieces
# --------------------------------------------------------------------------------------------


def _grid(c):
    return schedules.karras_sigmas(int(c.steps), c.sigma_min, c.sigma_max, c.rho)


def generate_fake(model: io.TrainedDenoiser, fcfg, key, mesh, num_classes: int):
    """`fake.num` base-sampler samples `[N, H, W, C]` (model space) and labels `[N]` (-1: none)."""
    b = int(fcfg.batch_size)
    shape = model.image_shape
    bsh = shd.batch_sharding(mesh)

    @jax.jit
    def batch(state, off, sigmas):
        den = model.make_denoise(state)
        x_T = solvers.prior_sample(key, (b, *shape), sigmas[0], offset=off)
        x_T = jax.lax.with_sharding_constraint(x_T, bsh)
        idx = jnp.arange(b, dtype=jnp.int32) + off
        cond = (idx % num_classes) if num_classes else None
        return solvers.sample(solvers.heun(), den, x_T, sigmas, key, cond, offset=off)[0]

    state = shd.replicate(model.state(True), mesh)
    sig = _grid(fcfg)
    n = int(fcfg.num)
    xs = [np.asarray(batch(state, jnp.int32(o), sig)) for o in range(0, n, b)]
    labels = (np.arange(n) % num_classes) if num_classes else np.full(n, -1)
    return np.concatenate(xs)[:n].astype(np.float32), labels.astype(np.int32)


def validate(config) -> None:
    t = config.train
    for name in ("steps", "batch_size"):
        if t[name] < 1:
            raise ValueError(f"config key 'train.{name}' must be >= 1, got {t[name]}")
    if t.lr <= 0:
        raise ValueError(f"config key 'train.lr' must be > 0, got {t.lr}")
    require_choice(config.disc.extractor, EXTRACTORS, "disc.extractor")
    if config.fake.num < 1 or config.fake.batch_size < 1:
        raise ValueError("config keys 'fake.num' and 'fake.batch_size' must be >= 1")
    if not 0.0 <= config.diffrs.gamma <= 1.0:
        raise ValueError(f"config key 'diffrs.gamma' must be in [0, 1], got {config.diffrs.gamma}")
    if config.diffrs.warmup % config.diffrs.warmup_batch:
        raise ValueError("config key 'diffrs.warmup' must be a multiple of 'diffrs.warmup_batch'")
    if not config.model_dir:
        raise ValueError("config key 'model_dir' must name a `jaxdiff train-denoiser` run dir")


def fingerprint_config(config) -> dict:
    d = config.to_dict()
    for k in RUN_CONTROL_KEYS:
        d.pop(k, None)
    return d


def accuracy_by_noise(vp_logit, real, fake, key, taus=(0.0, 0.05, 0.2, 0.5, 1.0)) -> dict:
    """Accuracy of `logit > 0` (real) / `<= 0` (fake) at fixed VP times (fresh noise)."""
    out = {}
    for t in taus:
        kr, kf = jax.random.split(jax.random.fold_in(key, int(1000 * t)))
        tr = jnp.full((real.shape[0],), t, jnp.float32)
        tf = jnp.full((fake.shape[0],), t, jnp.float32)
        xr = D.perturb_vp(real, tr, jax.random.normal(kr, real.shape))
        xf = D.perturb_vp(fake, tf, jax.random.normal(kf, fake.shape))
        lr, lf = np.asarray(vp_logit(xr, tr)), np.asarray(vp_logit(xf, tf))
        out[f"tau={t:g}"] = float((np.sum(lr > 0) + np.sum(lf <= 0)) / (lr.size + lf.size))
    return out


def run(config: ml_collections.ConfigDict) -> dict:
    """Train a discriminator for `config.model_dir` (see configs/train_discriminator_digits.py)."""
    timer = common.Timer()
    validate(config)
    mesh, ndev = common.data_mesh_checked(config.num_devices,
                                          train__batch_size=config.train.batch_size,
                                          fake__batch_size=config.fake.batch_size)
    den_model = io.load_model(config.model_dir)
    dataset = den_model.spec.get("dataset", "digits")
    image_size = int(den_model.spec.get("image_size", den_model.image_shape[0]))
    real_ds = jdata.load(dataset, "train", data_dir=config.data_dir or None,
                         image_size=image_size or None)
    num_classes = den_model.num_classes if config.conditional else 0
    if config.conditional and not den_model.num_classes:
        raise ValueError("config key 'conditional' = True needs a class-conditional denoiser")
    run_dir = common.make_run_dir(config.run_dir)
    common.save_config(run_dir, config)
    key = jax.random.key(config.seed)
    k_fake, k_init, k_loop, k_eval, k_drs = jax.random.split(key, 5)

    fake_path = os.path.join(run_dir, "fake.npz")
    if os.path.exists(fake_path):
        with np.load(fake_path) as z:
            fake, fake_labels = z["samples"], z["labels"]
        if fake.shape[0] != config.fake.num:
            raise ValueError(f"{fake_path} holds {fake.shape[0]} samples but fake.num = "
                             f"{config.fake.num}; use another run_dir")
    else:
        print(f"[jaxdiff train-discriminator] generating {config.fake.num} fake samples "
              f"(Heun, {config.fake.steps} steps)", flush=True)
        fake, fake_labels = generate_fake(den_model, config.fake, k_fake, mesh, num_classes)
        np.savez(fake_path + ".tmp.npz", samples=fake, labels=fake_labels)
        os.replace(fake_path + ".tmp.npz", fake_path)

    spec = disc_spec(config, den_model.image_shape, num_classes, dataset, image_size)
    model = build_discriminator(spec, nnx.Rngs(k_init))
    tx = D.default_optimizer(config.train.lr, config.train.weight_decay)
    graphdef, dstate = D.init_disc_train_state(model, tx)
    del model
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(dstate.params))
    base_step = D.make_disc_train_step(graphdef, tx)

    real_x = shd.replicate(jnp.asarray(io.to_model_space(real_ds.images)), mesh)
    real_y = shd.replicate(jnp.asarray(real_ds.labels, jnp.int32), mesh)
    fake_x = shd.replicate(jnp.asarray(fake), mesh)
    fake_y = shd.replicate(jnp.asarray(fake_labels), mesh)
    bsh = shd.batch_sharding(mesh)
    half = config.train.batch_size

    def step(state, i, rx, ry, fx, fy):
        k = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), i)
        kr, kf, ks = jax.random.split(k, 3)
        ir = jax.random.randint(kr, (half,), 0, rx.shape[0])
        jf = jax.random.randint(kf, (half,), 0, fx.shape[0])
        xr = jax.lax.with_sharding_constraint(rx[ir], bsh)
        xf = jax.lax.with_sharding_constraint(fx[jf], bsh)
        rl = ry[ir] if num_classes else None
        fl = fy[jf] if num_classes else None
        new, met = base_step(state["disc"], xr, xf, ks, rl, fl)
        return {"disc": new, "key": state["key"]}, met

    state = shd.replicate({"disc": dstate, "key": jax.random.key_data(k_loop)}, mesh)
    state_sh = jax.tree.map(lambda _: shd.replicated(mesh), state)
    jitted = jax.jit(step, donate_argnums=0, out_shardings=(state_sh, shd.replicated(mesh)))
    step_fn = lambda s, i: jitted(s, i, real_x, real_y, fake_x, fake_y)  # noqa: E731

    print(f"[jaxdiff train-discriminator] {dataset} {tuple(den_model.image_shape)}: "
          f"{real_ds.images.shape[0]} real vs {fake.shape[0]} fake; head {num_params:,} "
          f"parameters (extractor: {spec['extractor']}); {config.train.steps} steps of "
          f"{half}+{half} on {common.describe_devices()} (mesh {ndev})", flush=True)
    total = int(config.train.steps)
    stop = min(config.stop_after, total) if config.stop_after else total
    state, history = run_loop(step_fn, state, stop, run_dir=run_dir,
                              fingerprint=config_fingerprint(fingerprint_config(config)),
                              checkpoint_every=config.checkpoint_every,
                              log_every=config.log_every, resume=config.resume,
                              desc="train-discriminator", progress=config.progress)
    if stop < total:
        print(f"[jaxdiff train-discriminator] stopped after {stop} of {total} steps; continue "
              "with --resume --config.stop_after=0", flush=True)
        return {"stopped_at": stop, "run_dir": run_dir}

    final = jax.device_get(state["disc"])
    save_discriminator(run_dir, final.params, final.frozen, spec, step=total)
    vp_logit = jax.jit(lambda p, f, x, t: D.vp_logit_of(graphdef, p, f)(x, t))
    n_eval = min(512, fake.shape[0], real_ds.images.shape[0])
    acc = accuracy_by_noise(
        lambda x, t: vp_logit(final.params, final.frozen, x, t),
        jnp.asarray(io.to_model_space(real_ds.images[:n_eval])), jnp.asarray(fake[:n_eval]),
        k_eval) if not num_classes else {}

    out = {"dataset": dataset, "model_dir": os.path.abspath(config.model_dir),
           "disc_spec": spec, "num_params": num_params, "steps": total,
           "final_loss": history[-1]["loss"] if history else None,
           "final_accuracy": history[-1]["accuracy"] if history else None,
           "accuracy_by_tau": acc, "devices": common.describe_devices(), "mesh_size": ndev}
    if config.diffrs.num_samples > 0:
        out["diffrs"] = diffrs_demo(config, den_model, graphdef, final, k_drs, run_dir,
                                    num_classes)
    out["seconds"] = timer.elapsed()
    common.write_json(os.path.join(run_dir, "results.json"), out)
    print(f"[jaxdiff train-discriminator] done in {out['seconds']:.0f} s; final loss "
          f"{out['final_loss']:.4f}, accuracy by tau {acc}. Discriminator: "
          f"{run_dir}/{DISC_JSON}", flush=True)
    return out


def diffrs_demo(config, den_model, graphdef, final, key, run_dir, num_classes) -> dict:
    """Warm-up (cached), tables at `diffrs.gamma`, and `diffrs.num_samples` DiffRS samples."""
    c = config.diffrs
    sig = _grid(c)
    shape = tuple(den_model.image_shape)
    k_warm, k_samp = jax.random.split(key)
    dstate = (final.params, final.frozen)
    nw = int(c.warmup)
    wlab = (jnp.arange(nw, dtype=jnp.int32) % num_classes) if num_classes else None

    @jax.jit
    def warm(mstate, dstate, sigmas):
        den = den_model.make_denoise(mstate)
        disc = D.logit_fn(graphdef, *dstate)
        return R.warmup_logits(den, disc, sigmas, k_warm, nw, shape, cond=wlab,
                               batch_size=int(c.warmup_batch))

    cache_key = {"name": "warmup", "model_dir": os.path.abspath(config.model_dir),
                 "model_step": den_model.spec.get("step"), "disc_run": run_dir,
                 "disc_step": int(config.train.steps), "steps": int(c.steps),
                 "sigma_min": c.sigma_min, "sigma_max": c.sigma_max, "rho": c.rho, "num": nw,
                 "seed": int(config.seed)}
    logits = R.load_or_compute(os.path.join(run_dir, "diffrs_cache"), cache_key,
                               lambda: {"logits": warm(den_model.state(True), dstate, sig)})
    logits = jnp.asarray(logits["logits"])
    ns, bs = int(c.num_samples), int(c.batch_size)
    labels = (jnp.arange(ns, dtype=jnp.int32) % num_classes) if num_classes else None

    @jax.jit
    def sample(mstate, dstate, sigmas, logits, gamma, max_iter):
        den = den_model.make_denoise(mstate)
        disc = D.logit_fn(graphdef, *dstate)
        return R.diffrs(den, disc, sigmas, logits, gamma, k_samp, num_samples=ns,
                        batch_size=bs, sample_shape=shape, labels=labels, max_iter=max_iter)

    timer = common.Timer()
    x, info = sample(den_model.state(True), dstate, sig, logits, jnp.float32(c.gamma),
                     jnp.int32(c.max_iter if c.max_iter > 0 else np.iinfo(np.int32).max))
    x = np.asarray(x)
    secs = timer.elapsed()
    tables = R.rejection_tables(logits, c.gamma)
    info = jax.device_get(info)
    grid = save_grid(os.path.join(run_dir, "diffrs_samples.png"), io.to_display(x),
                     scale=max(1, 64 // shape[0]))
    np.savez(os.path.join(run_dir, "diffrs_samples.npz"), samples=x, images=io.to_uint8(x))
    n = sig.shape[0] - 1
    return {"gamma": float(c.gamma), "steps": n, "base_nfe": 2 * n - 1,
            "log_m": np.asarray(tables.log_m).tolist(),
            "log_m_prime": np.asarray(tables.log_m_prime).tolist(),
            "nfe_algorithmic_per_sample": float(info.algorithmic_nfe) / ns,
            "nfe_executed_per_sample": float(info.executed_nfe) / ns,
            "disc_calls_per_sample": float(info.disc_algorithmic) / ns,
            "transition_accept_rate": np.nan_to_num(
                np.asarray(info.transition_accept_rate), nan=-1.0).tolist(),
            "depth_hist": np.asarray(info.depth_hist).tolist(),
            "restarts": int(info.restarts), "complete": bool(info.complete),
            "seconds_incl_compile": secs, "grid": grid}
