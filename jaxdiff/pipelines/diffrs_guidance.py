"""DiffRS as a `jaxdiff sample` guidance method (the `GUIDANCE` seam of `pipelines.sample`).

Register it with `sample.register_guidance("diffrs", diffrs_builder)`; then

    jaxdiff sample --config.guidance.name=diffrs --config.guidance.disc_dir=RUN \
                   --config.guidance.gamma=0.75 --config.solver.name=heun

The `guidance` section needs (defaults in `DEFAULTS`): `disc_dir` (a `jaxdiff
train-discriminator` run), `gamma`, `warmup` and `warmup_batch` (base trajectories for the M/M'
tables), `max_iter` (0 = unbounded), `clamp_zero`, `warmup_seed`. The warm-up runs once per sigma
grid (on the first batch) and is cached on disk in `<disc_dir>/diffrs_cache`.

Each `jaxdiff sample` batch of B samples with global offset o is one `diffrs_sample` call with a
pool of B slots, sharded over the data mesh, producing samples o .. o + B - 1 (per-sample keys
`fold_in(key, o + i)`, so the output depends neither on the batch size nor on the mesh). aux:
`nfe` (algorithmic per sample, restarts included), `nfe_executed` (B x batched denoiser calls /
B), `disc_calls`, `accept_rate` (transition tests), `restarts`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sharding as shd
from jaxdiff.diffusion import rejection as R

DEFAULTS = dict(disc_dir="", gamma=0.75, warmup=256, warmup_batch=128, max_iter=0,
                clamp_zero=True, warmup_seed=0)


def _get(gcfg, name):
    return gcfg[name] if name in gcfg else DEFAULTS[name]


def diffrs_builder(ctx, gcfg):
    """`GuidanceBuilder`: `(SamplingContext, guidance config) -> BatchSampler`."""
    from jaxdiff.pipelines.train_discriminator import load_discriminator

    if ctx.solver_name != "heun":
        raise ValueError(f"DiffRS wraps the deterministic Heun sampler; config key 'solver.name' "
                         f"= {ctx.solver_name!r} must be 'heun'")
    disc_dir = _get(gcfg, "disc_dir")
    if not disc_dir:
        raise ValueError("config key 'guidance.disc_dir' must name a `jaxdiff "
                         "train-discriminator` run directory")
    gamma = float(_get(gcfg, "gamma"))
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"config key 'guidance.gamma' must be in [0, 1], got {gamma}")
    nw, wb = int(_get(gcfg, "warmup")), int(_get(gcfg, "warmup_batch"))
    if nw < 1 or wb < 1 or nw % wb:
        raise ValueError("config keys 'guidance.warmup' / 'guidance.warmup_batch': warmup must "
                         "be a positive multiple of warmup_batch")
    max_iter = int(_get(gcfg, "max_iter")) or np.iinfo(np.int32).max
    clamp = bool(_get(gcfg, "clamp_zero"))
    disc = load_discriminator(disc_dir)
    # Restored arrays are committed to device 0; jit refuses them beside the mesh-replicated
    # model state.
    dstate = shd.replicate(disc.state(), ctx.mesh)
    src, b, shape = ctx.source, ctx.batch_size, tuple(ctx.source.sample_shape)
    label_fn = ctx.label_fn
    k_warm = jax.random.key(int(_get(gcfg, "warmup_seed")))
    # The pool is the batch (B slots, B a multiple of the mesh size): each device runs B / n.
    bsh = shd.batch_sharding(ctx.mesh)

    @jax.jit
    def warm(state, dstate, sigmas):
        cond = None if label_fn is None else label_fn(jnp.arange(nw, dtype=jnp.int32))
        return R.warmup_logits(src.make_denoise(state), disc.make_logit(dstate), sigmas, k_warm,
                               nw, shape, cond=cond, batch_size=wb)

    @jax.jit
    def run(state, dstate, key, offset, sigmas, logits, gamma, max_iter):
        idx = jnp.arange(b, dtype=jnp.int32) + offset
        labels = None if label_fn is None else label_fn(idx)
        x, info = R.diffrs(src.make_denoise(state), disc.make_logit(dstate), sigmas, logits,
                           gamma, key, num_samples=b, batch_size=b, sample_shape=shape,
                           labels=labels, max_iter=max_iter, offset=offset, clamp_zero=clamp,
                           sharding=bsh)
        acc = jnp.sum(info.transition_accepts) / jnp.maximum(jnp.sum(info.transition_tests), 1)
        return x, {"nfe": info.algorithmic_nfe / b, "nfe_executed": info.executed_nfe / b,
                   "disc_calls": info.disc_algorithmic / b, "accept_rate": acc,
                   "restarts": info.restarts.astype(jnp.float32),
                   "complete": info.complete.astype(jnp.float32)}

    cache: dict[bytes, jax.Array] = {}

    def fn(state, key, offset, sigmas, hparams):
        host = np.asarray(sigmas, np.float32)
        if host.tobytes() not in cache:
            ckey = {"name": "warmup", "disc_dir": os.path.abspath(disc_dir),
                    "disc_step": disc.spec.get("step"), "model": src.description,
                    "sigmas": host.tolist(), "num": nw, "seed": int(_get(gcfg, "warmup_seed")),
                    "labels": "none" if label_fn is None else "label_fn"}
            out = R.load_or_compute(os.path.join(os.path.abspath(disc_dir), "diffrs_cache"), ckey,
                                    lambda: {"logits": warm(state, dstate, sigmas)})
            cache[host.tobytes()] = jnp.asarray(out["logits"])
        return run(state, dstate, key, offset, sigmas, cache[host.tobytes()],
                   jnp.float32(gamma), jnp.int32(max_iter))

    return fn
