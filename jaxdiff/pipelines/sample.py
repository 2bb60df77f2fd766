"""`jaxdiff sample`: draw N samples from a trained denoiser (or an analytic Gaussian mixture)
with a chosen solver and guidance on a Karras grid, sharded over the device mesh.

The path (config -> `jaxdiff.specs.sample.resolve` -> here): load the source -> build the batch
sampler of the guidance (`make_sampler` below: plain solver, DiffRS, Discriminator Guidance
(`diffusion.dg`), LiDAR and the reward-guided baselines of `diffusion.reward_samplers`) -> one
jitted call per batch of `batch_size` (a multiple of the device count; sample i uses
`fold_in(key, i)` and its label depends only on i, so the samples depend neither on the batch
size nor on the device count; the last batch is computed at full size and trimmed) -> quality
figures -> outputs.

Outputs in `run_dir`:
* `samples.npz`   (with `save_samples`, the default) `samples` (model space `[N, H, W, C]`
                  float32, pixels in [-1, 1]), `images` (uint8), `labels` (`[N]`, -1 =
                  unconditional), `nfe` (per sample);
* `samples.png`   a grid of the first `grid_max` samples; `results.json` (NFE, timings:
                  `first_batch_seconds` = load + compile + first batch, `images_per_s` after it;
                  quality figures, FID).

Discriminators (DiffRS `guidance.disc_dir`, DG): a `jaxdiff train-discriminator` run, or DG's
published discriminator (ADM classifier + head) imported by `models.dg.import_discriminator`;
DG also reads DG's two `.pt` files directly (`guidance.classifier`, `guidance.head`).

Source `edm`: an NVlabs/edm network (`models.edm.load`: a pickle or an imported directory).
EDMPrecond networks run their raw network under jaxdiff's EDM preconditioner; VP, VE and iDDPM
networks under their own preconditioner, on the configured sigma grid clamped to the network's
range (as EDM's generate.py; printed in the resolved block).

FID (`fid.ref` set: `jaxdiff.fid`): each batch is quantised to the uint8 values EDM saves
(`fid.inception.to_pixels`) and folded into streaming Inception statistics on the device; the
Frechet distance to the reference `.npz` is computed once at the end (`fid` in results.json,
with `images_per_s`, `nfe` and `nfe_executed`). With `save_samples` False only the first
`grid_max` samples reach the host (the grid): 50,000 samples cost one batch of memory.

Quality (source `run`, `quality.enabled`): Frechet distance on the features of a small
classifier trained on the same data (NOT Inception FID), classifier accuracy (conditional
sampling) and entropy — `jaxdiff.diffusion.quality_net`. Source `gmm` reports the exact mean
log-density of the samples and MMD / sliced Wasserstein against exact mixture draws.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff import sharding as shd
from jaxdiff.diffusion import dg as DG
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import quality as Q
from jaxdiff.diffusion import quality_net as QN
from jaxdiff.diffusion import reward_samplers as RS
from jaxdiff.diffusion import schedules
from jaxdiff.diffusion.batch_samplers import (DenoiserSource, SamplingContext, diffrs_sampler,
                                              plain_sampler)
from jaxdiff.diffusion.denoiser import edm_denoiser
from jaxdiff.diffusion.saved import DISC_JSON, load_discriminator, load_model
from jaxdiff.distributed import to_host
from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.fid import frechet as FF
from jaxdiff.fid import inception as FI
from jaxdiff.fid import stats as FS
from jaxdiff.files import atomic_savez, atomic_write_json
from jaxdiff.images import save_grid
from jaxdiff.models import dg as dg_model
from jaxdiff.models import edm
from jaxdiff.pipelines import common
from jaxdiff.specs.sample import SampleSpec


def mixture(spec: SampleSpec) -> G.GaussianMixture:
    """The analytic mixture of `spec.gmm` (see `specs.sample.GMMSpec`)."""
    g = spec.gmm
    dim = int(np.prod(g.image_shape))
    means = g.mean_scale * jax.random.normal(jax.random.key(g.seed), (g.num_components, dim))
    return G.gaussian_mixture(jnp.ones((g.num_components,)), means,
                              jnp.full((g.num_components,), g.std))


def load_source(spec: SampleSpec) -> DenoiserSource:
    """The `DenoiserSource` of `spec.source`: the analytic mixture or the trained model."""
    if spec.source == "gmm":
        g = mixture(spec)
        return DenoiserSource(g, lambda gm: (lambda x, sigma, cond=None: G.posterior_mean(
            gm, x, sigma, cond)), spec.gmm.image_shape, g.num_components, None, 0,
            f"analytic GMM ({g.num_components} components, shape {spec.gmm.image_shape})", g)
    if spec.source == "edm":
        return _edm_source(spec)
    m = load_model(spec.model_dir)
    return DenoiserSource(m.state(spec.use_ema), m.make_denoise, m.image_shape, m.num_classes,
                          m.spec.get("dataset"), int(m.spec.get("image_size", m.image_shape[0])),
                          f"{m.spec['name']} from {spec.model_dir} "
                          f"({'EMA' if spec.use_ema else 'raw'} parameters, step "
                          f"{m.spec.get('step')})")


def _edm_source(spec: SampleSpec) -> DenoiserSource:
    """An imported NVlabs/edm network (`models.edm.load`), class labels one-hot; images in
    [-1, 1], EDM's and jaxdiff's model space. EDMPrecond nets: the raw network F under jaxdiff's
    own EDM preconditioner (`diffusion.denoiser.edm_denoiser`, the same c_skip/c_out/c_in/
    c_noise). VPPrecond / VEPrecond / iDDPMPrecond nets: the network's own preconditioner, the
    full `net(x, sigma, onehot)`. The sigma grid is the solver's, which the spec has clamped to
    the network's range as upstream `generate.py` does (`specs.sample._within_network_range`)."""
    _, meta = edm.load(spec.model_dir)
    kw, graphdef = meta["constructor"], meta["graphdef"]
    label_dim = int(kw.get("label_dim", 0))
    onehot = lambda cond: (None if cond is None or not label_dim
                           else jax.nn.one_hot(cond, label_dim))
    is_edm = meta["precond"]["class_name"] == "EDMPrecond"

    def make_denoise(params):
        net = nnx.merge(graphdef, params)
        if not is_edm:
            return lambda x, sigma, cond=None: net(x, sigma, onehot(cond)).astype(x.dtype)

        def raw(x_in, c_noise, cond=None):
            return net.raw(x_in, c_noise, onehot(cond))

        return edm_denoiser(raw, meta["precond"]["sigma_data"])

    size, channels = int(kw["img_resolution"]), int(kw["img_channels"])
    return DenoiserSource(meta["params"], make_denoise, (size, size, channels), label_dim, None,
                          size, f"NVlabs/edm {meta['precond']['class_name']}("
                          f"{kw.get('model_type', 'SongUNet')}) from {meta['source']} "
                          f"({size} px, {label_dim} classes)")


def make_sampler(spec: SampleSpec, ctx: SamplingContext):
    """The batch sampler of `spec.guidance` (the explicit dispatch of `jaxdiff sample`)."""
    g = spec.guidance
    if g.name == "none":
        return plain_sampler(ctx)
    if g.name == "diffrs":
        return diffrs_sampler(ctx, g.settings, open_discriminator(g.settings.disc_dir, ctx))
    if g.name == "dg":
        return DG.dg_sampler(ctx, g.settings, _dg_discriminator(g.settings, ctx))
    _, make = RS.REWARD_SAMPLERS[g.name]
    return make(ctx, g.settings, RS.make_reward(g.settings.reward, ctx.source, spec.data_dir))


def open_discriminator(disc_dir: str, ctx: SamplingContext, time: str = "auto"):
    """The discriminator in `disc_dir`: DG's, imported by `models.dg.import_discriminator`
    (checked against the source's images and labels; `time` other than "auto" overrides its
    recorded time convention), or a `jaxdiff train-discriminator` run's."""
    if not dg_model.is_imported(disc_dir):
        if not os.path.isfile(os.path.join(disc_dir, DISC_JSON)):
            raise MissingInputError(
                f"discriminator directory {disc_dir} holds neither a finished `jaxdiff "
                f"train-discriminator` run ({DISC_JSON}) nor a DG discriminator imported by "
                f"jaxdiff.models.dg.import_discriminator ({dg_model.IMPORTED_JSON})")
        return load_discriminator(disc_dir)
    disc = dg_model.open_imported(disc_dir)
    if time != "auto":
        disc = disc._replace(spec={**disc.spec, "time": time})
    _check_dg(disc, ctx, disc_dir)
    return disc


def _dg_discriminator(s: DG.DGSettings, ctx: SamplingContext):
    """The discriminator of DG guidance: `disc_dir`, or DG's two `.pt` files with DG's
    architecture at the source's image size."""
    if s.disc_dir:
        run_json = os.path.join(s.disc_dir, DISC_JSON)
        if not dg_model.is_imported(s.disc_dir) and os.path.isfile(run_json):
            with open(run_json) as f:
                extractor = json.load(f).get("extractor")
            if extractor != "none":   # its features pass through stop_gradient: no guidance
                raise UserError(f"DG guidance differentiates the discriminator by its input; "
                                f"the discriminator run {s.disc_dir} has a frozen "
                                f"'{extractor}' extractor whose features carry no gradient "
                                "(train one with extractor 'none', or use DG's imported one)")
        return open_discriminator(s.disc_dir, ctx, s.time)
    shape, src = tuple(ctx.source.sample_shape), ctx.source
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
        raise UserError(f"DG's ADM classifier reads square RGB images; the source samples "
                        f"{shape} ({src.description})")
    disc = dg_model.open_pair(s.classifier, s.head, image_size=shape[0], time=s.time)
    _check_dg(disc, ctx, s.head)
    return disc


def _check_dg(disc, ctx: SamplingContext, where: str) -> None:
    """A DG discriminator fits the source: the same image shape, and a conditional head only
    with labels, of at most as many classes as the head has (DG's heads take argmax labels)."""
    src, k = ctx.source, disc.num_classes
    if tuple(disc.image_shape) != tuple(src.sample_shape):
        raise UserError(f"the DG discriminator {where} reads {disc.image_shape} images; the "
                        f"source samples {tuple(src.sample_shape)} ({src.description})")
    if k and (ctx.label_fn is None or src.num_classes > k):
        got = ("unlabelled" if ctx.label_fn is None
               else f"labelled from {src.num_classes} classes")
        raise UserError(f"the DG discriminator {where} is class-conditional ({k} classes); the "
                        f"samples are {got} (use a conditional source with labels, or an "
                        "unconditional head)")


def _labels(spec: SampleSpec, num_classes: int):
    if spec.labels == "none" or num_classes == 0:
        return None
    if spec.labels == "cycle":
        return lambda idx: (idx % num_classes).astype(jnp.int32)
    c = int(spec.labels)
    return lambda idx: jnp.full(idx.shape, c, jnp.int32)


def generate(spec: SampleSpec, source: DenoiserSource | None = None) -> dict:
    """Draw `spec.num_samples` samples; returns host arrays and figures (no files written).

    Returns:
      `{"samples": [K, ...] float32, "labels": [K] int32 (-1 = none), "nfe": int, "aux": {...},
      "sigmas": [n + 1], "source": DenoiserSource, "seconds": float, "fid": {...}, ...}`; K = N
      when the samples are saved or scored on the host (`_keeps_all`), else min(N, grid_max).
    """
    timer = common.Timer()
    mesh, ndev = common.data_mesh_checked(spec.run.num_devices, batch_size=spec.batch_size)
    source = load_source(spec) if source is None else source
    labels = _labels(spec, source.num_classes)
    s = spec.solver
    sigmas = schedules.karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho)
    fn = make_sampler(spec, SamplingContext(source, s.name, spec.batch_size, mesh, labels))
    state = shd.replicate(source.state, mesh)
    key = jax.random.key(spec.run.seed)
    hparams = {k: jnp.float32(v) for k, v in s.hparams.items()}
    n, b = spec.num_samples, spec.batch_size
    keep = n if _keeps_all(spec, source) else min(n, spec.grid_max)
    fid = _fid_statistics(spec, mesh) if spec.fid.enabled else None
    kept, auxes, first = [], [], 0.0
    for off in range(0, n, b):
        x, aux = fn(state, key, jnp.int32(off), sigmas, hparams)
        if fid is not None:     # on device: the batch is folded into running sums, not kept
            fid.add_batch(FI.to_pixels(x), (np.arange(off, off + b) < n).astype(np.float32))
        if off < keep:
            kept.append(x)
        auxes.append(aux)
        if off == 0:            # one wait, outside the steady state: load + compile + 1 batch
            jax.block_until_ready(x)
            first = timer.elapsed()
    kept, auxes = to_host((kept, auxes))    # sharded over all processes' devices: gathered
    if fid is not None:
        jax.block_until_ready(fid.moments)
    samples = (np.concatenate(kept)[:keep] if kept else
               np.zeros((0, *source.sample_shape), np.float32))
    aux = {k: float(np.mean([float(a[k]) for a in auxes])) for k in auxes[0]}
    idx = jnp.arange(keep, dtype=jnp.int32)
    labels_host = np.full(keep, -1, np.int32) if labels is None else to_host(labels(idx))
    seconds = timer.elapsed()
    rest = n - min(n, b)      # samples after the first batch: the steady-state rate
    return {"samples": samples, "labels": labels_host, "nfe": int(round(aux["nfe"])),
            "aux": aux, "sigmas": to_host(sigmas), "source": source, "seconds": seconds,
            "first_batch_seconds": first,
            "images_per_s": rest / (seconds - first) if rest and seconds > first else None,
            "mesh_size": ndev, "solver": s.name, "solver_hparams": dict(s.hparams),
            "sampler": fn, "num_samples": n, "fid": _fid_figures(spec, fid)}


def _keeps_all(spec: SampleSpec, source: DenoiserSource) -> bool:
    """Whether every sample must reach the host: saved, or scored by the quality figures (GMM
    figures, the small-classifier ones); otherwise only the grid's first `grid_max`."""
    return spec.save_samples or source.gmm is not None or (spec.quality.enabled and
                                                           source.dataset is not None)


def _fid_statistics(spec: SampleSpec, mesh):
    """Streaming Inception statistics over the sampling mesh (`fid.stats`)."""
    net = FI.load(spec.fid.weights)
    return FS.InceptionStatistics(net, batch_size=spec.batch_size, resize=spec.fid.resize,
                                  mesh=mesh)


def _fid_figures(spec: SampleSpec, stats) -> dict:
    """FID against `spec.fid.ref` (float64 on the host), with what it was measured on."""
    if stats is None:
        return {}
    mu, sigma = stats.result()
    ref_mu, ref_sigma = FS.load_reference(spec.fid.ref)
    return {"fid": float(FF.fid_from_statistics(mu, sigma, ref_mu, ref_sigma)),
            "fid_num_samples": stats.count, "fid_reference": spec.fid.ref,
            "fid_detector": FS.describe_detector(spec.fid.resize)}


def quality_figures(spec: SampleSpec, result: dict) -> dict:
    """Quality figures of the generated samples (see the module docstring); {} when disabled."""
    src, x, labels = result["source"], result["samples"], result["labels"]
    if src.gmm is not None:
        ref = G.sample(src.gmm, jax.random.fold_in(jax.random.key(spec.run.seed), 2**31 - 1),
                       len(x))
        flat = jnp.asarray(x.reshape(len(x), -1))
        out = {"gmm_mean_log_density": float(jnp.mean(G.log_prob(src.gmm, flat))),
               "gmm_reference_mean_log_density": float(jnp.mean(G.log_prob(src.gmm, ref)))}
        if len(x) >= 2:
            out["gmm_mmd_rbf"] = float(Q.mmd_rbf(flat, ref))
            out["gmm_sliced_wasserstein"] = float(
                Q.sliced_wasserstein(flat, ref, jax.random.key(spec.run.seed)))
        return out
    if not spec.quality.enabled or src.dataset is None:
        return {}
    net = QN.get_quality_net(QN.QualityNetSpec(src.dataset, image_size=src.image_size,
                                               data_dir=spec.data_dir, **spec.quality.net),
                             progress=spec.run.progress)
    kw = dict(data_dir=spec.data_dir or None, image_size=src.image_size or None)
    real = jdata.to_model_space(jdata.load(src.dataset, "test", **kw)
                                .images[: spec.quality.num_real or None])
    out = QN.sample_quality(x, real, net, labels if labels[0] >= 0 else None)
    out["quality_net_test_accuracy"] = net.test_accuracy
    # Calibration: the same figure for as many real training images as samples. The quality
    # net was trained on these images, so their features are slightly atypical (more
    # confident than unseen images): a reference scale, not a lower bound.
    train = jdata.load(src.dataset, "train", **kw)
    m = min(len(x), len(train.labels))
    ref = QN.sample_quality(jdata.to_model_space(train.images[:m]), real, net)
    out["frechet_distance_real_train_vs_test"] = ref["frechet_distance"]
    out["quality_note"] = ("Frechet distance on the features of a small classifier trained on "
                           f"{src.dataset} (not Inception FID); compare at equal sample counts")
    return out


def run(spec: SampleSpec) -> dict:
    """Sample, score and write outputs (see the module docstring)."""
    timer = common.Timer()
    result = generate(spec)
    src, x, labels = result["source"], result["samples"], result["labels"]
    run_dir = common.open_run_dir(spec.run.run_dir, spec.resolution,
                                  resume=spec.run.resume)
    n, seconds, rate = result["num_samples"], result["seconds"], result["images_per_s"]
    print(f"[jaxdiff sample] {n} samples from {src.description}; solver {result['solver']} "
          f"{spec.solver.steps} steps, NFE {result['nfe']} per sample; {seconds:.1f} s "
          f"({result['first_batch_seconds']:.1f} s to load, compile and draw the first batch"
          + (f"; then {rate:.3g} images/s" if rate else "") + f") on "
          f"{common.describe_devices()} (mesh {result['mesh_size']})", flush=True)
    written = []
    is_image = len(src.sample_shape) == 3
    if spec.save_samples:
        written.append(os.path.join(run_dir, "samples.npz"))
        atomic_savez(written[-1], samples=x, images=jdata.model_space_to_uint8(x) if is_image
                     else np.zeros((0,), np.uint8), labels=labels,
                     nfe=np.full(len(x), result["nfe"], np.int32))
    if is_image and min(len(x), spec.grid_max):
        written.append(_save_grid(spec, run_dir, src, x, labels))
    aux = result["aux"]
    out = {"source": src.description, "num_samples": n, "solver": result["solver"],
           "solver_hparams": result["solver_hparams"], "steps": spec.solver.steps,
           "sigmas": result["sigmas"].tolist(), "nfe": result["nfe"],
           "nfe_executed": aux.get("nfe_executed", aux["nfe"]), "aux": aux,
           "guidance": spec.guidance.name, "sampling_seconds": seconds,
           "first_batch_seconds": result["first_batch_seconds"],   # load + compile + batch 1
           "images_per_s": rate,       # after the first batch (None: a single batch)
           "mesh_size": result["mesh_size"],
           "devices": common.describe_devices(), **result["fid"],
           **quality_figures(spec, result)}
    out["seconds"] = timer.elapsed()
    written.append(os.path.join(run_dir, "results.json"))
    atomic_write_json(written[-1], out)
    for k in ("fid", "frechet_distance", "frechet_distance_real_train_vs_test",
              "classifier_accuracy", "mean_entropy", "classifier_score", "gmm_mean_log_density",
              "gmm_reference_mean_log_density", "gmm_mmd_rbf"):
        if k in out:
            print(f"[jaxdiff sample]   {k}: {out[k]:.4g}", flush=True)
    print(f"[jaxdiff sample] wrote {', '.join(written)}", flush=True)
    return out


def _save_grid(spec: SampleSpec, run_dir: str, src: DenoiserSource, x, labels) -> str:
    """PNG of the first `grid_max` samples (one class per row when cycling 10-20 classes)."""
    k = src.num_classes if labels[0] >= 0 and spec.labels == "cycle" else 0
    return save_grid(os.path.join(run_dir, "samples.png"),
                     jdata.model_space_to_display(x[: spec.grid_max]),
                     ncol=k if k and 10 <= k <= 20 else None,
                     scale=max(1, 64 // src.sample_shape[0]))
