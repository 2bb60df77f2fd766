"""`jaxdiff sample`: draw N samples from a trained denoiser (or an analytic Gaussian mixture)
with a chosen solver on a Karras grid, sharded over the device mesh.

Sources (`config.source`):
* `run`  the final model of a `jaxdiff train-denoiser` run directory (`config.model_dir`),
         EMA parameters by default;
* `gmm`  the exact denoiser of a Gaussian mixture (`config.gmm`): no training needed, and the
         samples can be scored against the true density (tests, solver comparisons).

Sampling runs in fixed-size batches of `config.batch_size` (a multiple of the device count),
each one jitted call whose batch axis is sharded over the mesh's `data` axis. Sample i (global
index) uses `fold_in(key, i)` for its prior draw and solver noise, and its label depends only on
i, so the samples do not depend on the batch size or on the number of devices. The last batch is
computed at full size and trimmed.

Outputs in `config.run_dir`:
* `samples.npz`   `samples` (model space `[N, H, W, C]` float32, pixels in [-1, 1]), `images`
                  (uint8), `labels` (`[N]`, -1 = unconditional), `nfe` (per sample);
* `samples.png`   a grid of the first samples; `results.json` (NFE, timings, quality figures).

Quality (source `run`, `quality.enabled`): Frechet distance on the features of a small
classifier trained on the same data (NOT Inception FID), classifier accuracy (conditional
sampling) and entropy — `jaxdiff.pipelines.quality_net`. Source `gmm` reports the exact mean
log-density of the samples and MMD / sliced Wasserstein against exact mixture draws.

Guidance seam. `config.guidance.name` selects a builder from `GUIDANCE`; a builder turns the
`SamplingContext` and its config section into a `BatchSampler` (see below). Only `none` (plain
solver integration) exists here; LiDAR / DiffRS register theirs with `register_guidance` and
report their own aux figures (acceptance rates, executed NFE) through the aux dict.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import data as jdata
from jaxdiff import sharding as shd
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import quality as Q
from jaxdiff.config_utils import require_choice
from jaxdiff.diffusion import schedules, solvers
from jaxdiff.images import save_grid
from jaxdiff.pipelines import common
from jaxdiff.pipelines import denoiser_io as io

SOURCES = ("run", "gmm")
# Solver hyperparameters read from the `solver` config section (passed traced: no recompiles).
SOLVER_HPARAMS = {"edm": ("s_churn", "s_tmin", "s_tmax", "s_noise"), "ddim": ("eta",)}


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


class LoadedSource(NamedTuple):
    """What a sampler needs from a model.

    Attributes:
      state: array pytree passed (replicated) into the jitted sampler as an argument.
      make_denoise: `state -> denoise(x, sigma, cond)`; called inside the traced function.
      sample_shape: `(H, W, C)` (or `(D,)`) of one sample.
      num_classes: number of classes the model is conditioned on (0 = unconditional).
      dataset: jaxdiff dataset name for quality metrics, or None.
      image_size: H of the images (for the quality net), 0 if not images.
      description: one line for logs.
      gmm: the mixture (source `gmm`), else None.
    """

    state: Any
    make_denoise: Callable
    sample_shape: tuple
    num_classes: int
    dataset: str | None
    image_size: int
    description: str
    gmm: G.GaussianMixture | None = None


def gmm_from_config(gcfg) -> G.GaussianMixture:
    """A Gaussian mixture over `image_shape` images: K components with means
    `mean_scale * N(0, 1)` (from `seed`), isotropic std `std`, equal weights, component k = class k."""
    shape = tuple(int(s) for s in gcfg.image_shape)
    k = int(gcfg.num_components)
    if k < 1 or not shape or min(shape) < 1:
        raise ValueError(f"config keys 'gmm.num_components' ({k}) and 'gmm.image_shape' ({shape}) "
                         "must be positive")
    dim = int(np.prod(shape))
    means = gcfg.mean_scale * jax.random.normal(jax.random.key(gcfg.seed), (k, dim))
    return G.gaussian_mixture(jnp.ones((k,)), means, jnp.full((k,), gcfg.std))


def load_source(config) -> LoadedSource:
    """Build the `LoadedSource` named by `config.source` (clear errors for bad dirs/keys)."""
    source = require_choice(config.source, SOURCES, "source")
    if source == "gmm":
        g = gmm_from_config(config.gmm)
        shape = tuple(int(s) for s in config.gmm.image_shape)

        def make_denoise(gm):
            return lambda x, sigma, cond=None: G.posterior_mean(gm, x, sigma, cond)

        return LoadedSource(g, make_denoise, shape, g.num_components, None, 0,
                            f"analytic GMM ({g.num_components} components, shape {shape})", g)
    if not config.model_dir:
        raise ValueError("source=run needs --config.model_dir=RUN_DIR (a train-denoiser run)")
    m = io.load_model(config.model_dir)
    return LoadedSource(m.state(config.use_ema), m.make_denoise, m.image_shape, m.num_classes,
                        m.spec.get("dataset"), int(m.spec.get("image_size", m.image_shape[0])),
                        f"{m.spec['name']} from {os.path.abspath(config.model_dir)} "
                        f"({'EMA' if config.use_ema else 'raw'} parameters, step {m.spec.get('step')})")


def labels_for(mode: str, num_classes: int):
    """`label_fn(global_index [B] int32) -> cond [B] int32 | None` for `config.labels`:
    "cycle" (index % num_classes), "none" (unconditional / null label) or a class number."""
    mode = str(mode)
    if mode == "none" or num_classes == 0:
        if mode not in ("none", "cycle"):
            raise ValueError(f"config key 'labels' = {mode!r}: the model is unconditional; use "
                             "'none' or 'cycle'")
        return None
    if mode == "cycle":
        return lambda idx: (idx % num_classes).astype(jnp.int32)
    try:
        c = int(mode)
    except ValueError:
        raise ValueError(f"config key 'labels' = {mode!r} is not 'cycle', 'none' or a class "
                         f"number in [0, {num_classes})") from None
    if not 0 <= c < num_classes:
        raise ValueError(f"config key 'labels' = {c} outside [0, {num_classes})")
    return lambda idx: jnp.full(idx.shape, c, jnp.int32)


# --------------------------------------------------------------------------------------------
# Solver and the guidance seam
# --------------------------------------------------------------------------------------------


def solver_hparams(scfg) -> tuple[str, dict]:
    """(canonical solver name, {hyperparameter: float}) from the `solver` config section,
    validated eagerly (unknown name -> ValueError listing the valid ones)."""
    name = str(scfg.name)
    solvers.get_solver(name)  # raises a clear ValueError for unknown names
    canon = solvers.SOLVER_ALIASES.get(name, name)
    hp = {k: float(scfg[k]) for k in SOLVER_HPARAMS.get(canon, ())}
    return canon, hp


class SamplingContext(NamedTuple):
    """Everything a guidance builder may use.

    Attributes:
      source: the `LoadedSource` (its `make_denoise(state)` gives the denoiser inside jit).
      solver_name: canonical solver name; `solvers.get_solver(solver_name, **hparams)` inside
        the jitted function, with `hparams` traced.
      batch_size: B, samples per call (a multiple of the mesh size).
      mesh: the 1-D data mesh; batch axes are sharded over `shd.DATA_AXIS`.
      label_fn: `global_index [B] -> cond [B] | None`.
    """

    source: LoadedSource
    solver_name: str
    batch_size: int
    mesh: Any
    label_fn: Callable | None


# A BatchSampler is `fn(state, key, offset, sigmas, hparams) -> (x [B, ...], aux)` where aux is
# a dict of scalars; it must contain "nfe" (algorithmic denoiser evaluations per sample) and may
# contain "nfe_executed" and method-specific figures (acceptance rate, ...).
BatchSampler = Callable[..., tuple[jax.Array, dict]]
GuidanceBuilder = Callable[[SamplingContext, ml_collections.ConfigDict], BatchSampler]


def plain_sampler(ctx: SamplingContext, guidance_cfg) -> BatchSampler:
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


GUIDANCE: dict[str, GuidanceBuilder] = {"none": plain_sampler}
# Builders living in other modules (they import this one), registered on first use.
_LAZY_GUIDANCE = {"diffrs": ("jaxdiff.pipelines.diffrs_guidance", "diffrs_builder"),
                  "lidar": ("jaxdiff.pipelines.lidar_guidance", "lidar_builder"),
                  "gradient": ("jaxdiff.pipelines.lidar_guidance", "gradient_builder"),
                  "best_of_n": ("jaxdiff.pipelines.lidar_guidance", "best_of_n_builder"),
                  "svdd": ("jaxdiff.pipelines.lidar_guidance", "svdd_builder"),
                  "fk": ("jaxdiff.pipelines.lidar_guidance", "fk_builder")}


def register_guidance(name: str, builder: GuidanceBuilder) -> None:
    """Make `config.guidance.name = name` dispatch to `builder(ctx, config.guidance)`."""
    GUIDANCE[name] = builder


def get_guidance(name: str) -> GuidanceBuilder:
    if name not in GUIDANCE and name in _LAZY_GUIDANCE:
        import importlib
        module, attr = _LAZY_GUIDANCE[name]
        register_guidance(name, getattr(importlib.import_module(module), attr))
    if name not in GUIDANCE:
        raise ValueError(f"config key 'guidance.name' = {name!r} is not one of "
                         f"{sorted(set(GUIDANCE) | set(_LAZY_GUIDANCE))}")
    return GUIDANCE[name]


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def generate(config, source: LoadedSource | None = None) -> dict:
    """Draw `config.num_samples` samples; returns host arrays and figures (no files written).

    Returns:
      `{"samples": [N, ...] float32, "labels": [N] int32 (-1 = none), "nfe": int, "aux": {...},
      "sigmas": [n + 1], "source": LoadedSource, "seconds": float}`.
    """
    timer = common.Timer()
    name, hp = solver_hparams(config.solver)
    builder = get_guidance(config.guidance.name)
    if config.num_samples < 1:
        raise ValueError(f"config key 'num_samples' must be >= 1, got {config.num_samples}")
    mesh = shd.data_mesh(config.num_devices or None)
    ndev = mesh.shape[shd.DATA_AXIS]
    b = int(config.batch_size)
    if b < 1 or b % ndev:
        raise ValueError(f"config key 'batch_size' = {b} must be a positive multiple of the "
                         f"number of devices ({ndev})")
    source = load_source(config) if source is None else source
    label_fn = labels_for(config.labels, source.num_classes)
    sigmas = schedules.karras_sigmas(config.solver.steps, config.solver.sigma_min,
                                     config.solver.sigma_max, config.solver.rho)
    ctx = SamplingContext(source, name, b, mesh, label_fn)
    fn = builder(ctx, config.guidance)
    state = shd.replicate(source.state, mesh)
    key = jax.random.key(config.seed)
    hparams = {k: jnp.float32(v) for k, v in hp.items()}
    n = int(config.num_samples)
    outs = [fn(state, key, jnp.int32(off), sigmas, hparams) for off in range(0, n, b)]
    samples = np.concatenate([np.asarray(x) for x, _ in outs])[:n]
    aux = {k: float(np.mean([float(a[k]) for _, a in outs])) for k in outs[0][1]}
    idx = jnp.arange(n, dtype=jnp.int32)
    labels = (np.full(n, -1, np.int32) if label_fn is None else np.asarray(label_fn(idx)))
    return {"samples": samples, "labels": labels, "nfe": int(round(aux["nfe"])), "aux": aux,
            "sigmas": np.asarray(sigmas), "source": source, "seconds": timer.elapsed(),
            "mesh_size": ndev, "solver": name, "solver_hparams": hp}


def quality_figures(config, result) -> dict:
    """Quality figures of the generated samples (see the module docstring); {} when disabled."""
    src = result["source"]
    x, labels = result["samples"], result["labels"]
    if src.gmm is not None:
        ref = G.sample(src.gmm, jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1),
                       len(x))
        flat = jnp.asarray(x.reshape(len(x), -1))
        out = {"gmm_mean_log_density": float(jnp.mean(G.log_prob(src.gmm, flat))),
               "gmm_reference_mean_log_density": float(jnp.mean(G.log_prob(src.gmm, ref)))}
        if len(x) >= 2:
            out["gmm_mmd_rbf"] = float(Q.mmd_rbf(flat, ref))
            out["gmm_sliced_wasserstein"] = float(
                Q.sliced_wasserstein(flat, ref, jax.random.key(config.seed)))
        return out
    qcfg = config.quality
    if not qcfg.enabled or src.dataset is None:
        return {}
    from jaxdiff.pipelines import quality_net as QN

    spec = QN.QualityNetSpec(src.dataset, image_size=src.image_size, seed=qcfg.seed,
                             width=qcfg.width, feature_dim=qcfg.feature_dim, epochs=qcfg.epochs,
                             batch_size=qcfg.batch_size, lr=qcfg.lr, data_dir=config.data_dir)
    net = QN.get_quality_net(spec, progress=config.progress)
    test = jdata.load(src.dataset, "test", data_dir=config.data_dir or None,
                      image_size=src.image_size or None)
    real = io.to_model_space(test.images[: qcfg.num_real or None])
    out = QN.sample_quality(x, real, net, labels if labels[0] >= 0 else None)
    out["quality_net_test_accuracy"] = net.test_accuracy
    # Calibration: the same figure for as many real training images as samples. The quality
    # net was trained on these images, so their features are slightly atypical (more
    # confident than unseen images): a reference scale, not a lower bound.
    train = jdata.load(src.dataset, "train", data_dir=config.data_dir or None,
                       image_size=src.image_size or None)
    m = min(len(x), len(train.labels))
    ref = QN.sample_quality(io.to_model_space(train.images[:m]), real, net)
    out["frechet_distance_real_train_vs_test"] = ref["frechet_distance"]
    out["quality_note"] = ("Frechet distance on the features of a small classifier trained on "
                           f"{src.dataset} (not Inception FID); compare at equal sample counts")
    return out


def run(config: ml_collections.ConfigDict) -> dict:
    """Sample, score and write outputs (see the module docstring)."""
    timer = common.Timer()
    require_choice(config.source, SOURCES, "source")
    solver_hparams(config.solver)  # fail on a bad solver before loading anything
    get_guidance(config.guidance.name)
    result = generate(config)
    src = result["source"]
    run_dir = common.make_run_dir(config.run_dir)
    common.save_config(run_dir, config)
    x, labels = result["samples"], result["labels"]
    print(f"[jaxdiff sample] {len(x)} samples from {src.description}; solver {result['solver']} "
          f"{config.solver.steps} steps, NFE {result['nfe']} per sample; "
          f"{result['seconds']:.1f} s on {common.describe_devices()} (mesh {result['mesh_size']})",
          flush=True)
    npz = os.path.join(run_dir, "samples.npz")
    images = io.to_uint8(x) if len(src.sample_shape) == 3 else np.zeros((0,), np.uint8)
    np.savez(npz, samples=x, images=images, labels=labels,
             nfe=np.full(len(x), result["nfe"], np.int32))
    png = None
    if len(src.sample_shape) == 3:
        h = src.sample_shape[0]
        k = src.num_classes if labels[0] >= 0 and config.labels == "cycle" else 0
        ncol = k if k and 10 <= k <= 20 else None
        png = save_grid(os.path.join(run_dir, "samples.png"), io.to_display(x[: config.grid_max]),
                        ncol=ncol, scale=max(1, 64 // h))
    quality = quality_figures(config, result)
    out = {"source": src.description, "num_samples": len(x), "solver": result["solver"],
           "solver_hparams": result["solver_hparams"], "steps": int(config.solver.steps),
           "sigmas": result["sigmas"].tolist(), "nfe": result["nfe"], "aux": result["aux"],
           "guidance": config.guidance.name, "sampling_seconds": result["seconds"],
           "mesh_size": result["mesh_size"], "devices": common.describe_devices(), **quality}
    out["seconds"] = timer.elapsed()
    common.write_json(os.path.join(run_dir, "results.json"), out)
    for k in ("frechet_distance", "frechet_distance_real_train_vs_test", "classifier_accuracy",
              "mean_entropy", "classifier_score", "gmm_mean_log_density",
              "gmm_reference_mean_log_density", "gmm_mmd_rbf"):
        if k in out:
            print(f"[jaxdiff sample]   {k}: {out[k]:.4g}", flush=True)
    print(f"[jaxdiff sample] wrote {npz}" + (f", {png}" if png else "")
          + f", {run_dir}/results.json", flush=True)
    return out
