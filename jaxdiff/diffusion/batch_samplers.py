"""Batch samplers: one jitted call draws samples `offset .. offset + B - 1` of a run.

The contract `jaxdiff sample` drives (one call per batch, B a multiple of the mesh size):

    sampler(state, key, offset, sigmas, hparams) -> (x [B, ...], aux {name: scalar})

* `state`: the denoiser's array pytree (replicated on the mesh), turned into
  `denoise(x, sigma, cond)` inside the trace by `DenoiserSource.make_denoise`;
* sample i (global index) uses `fold_in(key, i)` for its prior draw and solver noise and its
  label depends only on i, so samples do not depend on the batch size or the device count;
* `sigmas`: the solver's noise levels `[n + 1]`; `hparams`: the solver's traced hyperparameters
  (churn, eta, ...) — changing either never recompiles;
* `aux` holds `nfe` (algorithmic denoiser evaluations per sample) and may hold `nfe_executed`
  and method figures (acceptance rates, reward means, ...).

This module: the contracts, the plain solver (no guidance) and DiffRS (`rejection.diffrs` on a
trained discriminator). Reward guidance (LiDAR and its baselines): `reward_samplers`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sharding as shd
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import rejection as R
from jaxdiff.diffusion import solvers

# `sampler(state, key, offset, sigmas, hparams) -> (x [B, ...], aux)` (see the module doc).
BatchSampler = Callable[..., tuple[jax.Array, dict]]


class DenoiserSource(NamedTuple):
    """What a sampler needs from a model.

    Attributes:
      state: array pytree passed (replicated) into the jitted sampler as an argument.
      make_denoise: `state -> denoise(x, sigma, cond)`; called inside the traced function.
      sample_shape: `(H, W, C)` (or `(D,)`) of one sample.
      num_classes: number of classes the model is conditioned on (0 = unconditional).
      dataset: jaxdiff dataset name for quality metrics, or None.
      image_size: H of the images (for the quality net), 0 if not images.
      description: one line for logs.
      gmm: the mixture (analytic source), else None.
    """

    state: Any
    make_denoise: Callable
    sample_shape: tuple
    num_classes: int
    dataset: str | None
    image_size: int
    description: str
    gmm: G.GaussianMixture | None = None


class SamplingContext(NamedTuple):
    """Everything a batch sampler is built from.

    Attributes:
      source: the `DenoiserSource`.
      solver_name: canonical solver name; `solvers.get_solver(solver_name, **hparams)` inside
        the jitted function, with `hparams` traced.
      batch_size: B, samples per call (a multiple of the mesh size).
      mesh: the 1-D data mesh; batch axes are sharded over `sharding.DATA_AXIS`.
      label_fn: `global_index [B] int32 -> cond [B] int32`, or None (unconditional).
    """

    source: DenoiserSource
    solver_name: str
    batch_size: int
    mesh: Any
    label_fn: Callable | None


def plain_sampler(ctx: SamplingContext) -> BatchSampler:
    """No guidance: integrate the probability-flow ODE / SDE with the chosen solver."""
    b, shape = ctx.batch_size, ctx.source.sample_shape
    bsh = shd.batch_sharding(ctx.mesh)

    @jax.jit
    def fn(state, key, offset, sigmas, hparams):
        den = ctx.source.make_denoise(state)
        solver = solvers.get_solver(ctx.solver_name, **hparams)
        x_T = solvers.prior_sample(key, (b, *shape), sigmas[0], offset=offset)
        x_T = jax.lax.with_sharding_constraint(x_T, bsh)
        idx = jnp.arange(b, dtype=jnp.int32) + offset
        cond = None if ctx.label_fn is None else ctx.label_fn(idx)
        x, aux = solvers.sample(solver, den, x_T, sigmas, key, cond, offset=offset)
        x = jax.lax.with_sharding_constraint(x, bsh)
        return x, {"nfe": aux.nfe, "nfe_executed": aux.nfe}

    return fn


class DiffRSSettings(NamedTuple):
    """DiffRS hyperparameters (diffrs.md): the discriminator run `disc_dir`, the rejection
    quantile `gamma`, `warmup` base trajectories (in batches of `warmup_batch`, drawn from
    `warmup_seed`) for the M / M' tables, the restart budget `max_iter` (0 = unbounded) and
    whether the tables are clamped at log M >= 0 (`clamp_zero`, the reference's default)."""

    disc_dir: str = ""
    gamma: float = 0.75
    warmup: int = 256
    warmup_batch: int = 128
    max_iter: int = 0
    clamp_zero: bool = True
    warmup_seed: int = 0


def diffrs_sampler(ctx: SamplingContext, settings: DiffRSSettings, disc) -> BatchSampler:
    """DiffRS around the deterministic Heun sampler with a trained discriminator `disc`
    (`saved.TrainedDiscriminator`). The warm-up runs once per sigma grid (on the first batch)
    and is cached on disk in `<disc_dir>/diffrs_cache`.

    Each batch of B samples with global offset o is one `rejection.diffrs` call with a pool of
    B slots, sharded over the mesh (per-sample keys `fold_in(key, o + i)`: the output depends
    neither on the batch size nor on the mesh). aux: `nfe` (algorithmic per sample, restarts
    included), `nfe_executed`, `disc_calls`, `accept_rate` (transition tests), `restarts`,
    `complete`.
    """
    s = settings
    # Restored arrays are committed to one device; jit refuses them beside the replicated model.
    dstate = shd.replicate(disc.state(), ctx.mesh)
    src, b, label_fn = ctx.source, ctx.batch_size, ctx.label_fn
    shape = tuple(src.sample_shape)
    k_warm = jax.random.key(s.warmup_seed)
    bsh = shd.batch_sharding(ctx.mesh)
    max_iter = s.max_iter or np.iinfo(np.int32).max

    @jax.jit
    def warm(state, dstate, sigmas):
        cond = None if label_fn is None else label_fn(jnp.arange(s.warmup, dtype=jnp.int32))
        return R.warmup_logits(src.make_denoise(state), disc.make_logit(dstate), sigmas, k_warm,
                               s.warmup, shape, cond=cond, batch_size=s.warmup_batch)

    @jax.jit
    def run(state, dstate, key, offset, sigmas, logits, gamma, max_iter):
        idx = jnp.arange(b, dtype=jnp.int32) + offset
        labels = None if label_fn is None else label_fn(idx)
        x, info = R.diffrs(src.make_denoise(state), disc.make_logit(dstate), sigmas, logits,
                           gamma, key, num_samples=b, batch_size=b, sample_shape=shape,
                           labels=labels, max_iter=max_iter, offset=offset,
                           clamp_zero=s.clamp_zero, sharding=bsh)
        acc = jnp.sum(info.transition_accepts) / jnp.maximum(jnp.sum(info.transition_tests), 1)
        return x, {"nfe": info.algorithmic_nfe / b, "nfe_executed": info.executed_nfe / b,
                   "disc_calls": info.disc_algorithmic / b, "accept_rate": acc,
                   "restarts": info.restarts.astype(jnp.float32),
                   "complete": info.complete.astype(jnp.float32)}

    cache: dict[bytes, jax.Array] = {}

    def fn(state, key, offset, sigmas, hparams):
        host = np.asarray(sigmas, np.float32)
        if host.tobytes() not in cache:
            ckey = {"name": "warmup", "disc_dir": os.path.abspath(s.disc_dir),
                    "disc_step": disc.spec.get("step"), "model": src.description,
                    "sigmas": host.tolist(), "num": s.warmup, "seed": s.warmup_seed,
                    "labels": "none" if label_fn is None else "label_fn"}
            out = R.load_or_compute(os.path.join(os.path.abspath(s.disc_dir), "diffrs_cache"),
                                    ckey, lambda: {"logits": warm(state, dstate, sigmas)})
            cache[host.tobytes()] = jnp.asarray(out["logits"])
        return run(state, dstate, key, offset, sigmas, cache[host.tobytes()],
                   jnp.float32(s.gamma), jnp.int32(max_iter))

    fn.warmup_cache = cache  # sigma grid bytes -> warm-up logits: the M / M' tables' input
    return fn
