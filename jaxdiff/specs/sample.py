"""`jaxdiff sample`: config -> `SampleSpec`.

* `source`: "run" (a `jaxdiff train-denoiser` run, `model_dir`; its `model.json` is read here to
  check the labels and the data set), "edm" (an NVlabs/edm network pickle or a directory from
  `jaxdiff import-checkpoint`, `model_dir`; its constructor kwargs are read here) or "gmm" (an
  analytic Gaussian mixture, `gmm`);
* `solver`: name (aliases resolved) and its traced hyperparameters (edm: churn; ddim: eta), a
  Karras grid of `steps` levels;
* `guidance`: "none", "diffrs" (`batch_samplers.DiffRSSettings`; `disc_dir` a `jaxdiff
  train-discriminator` run or a DG discriminator imported by `models.dg.import_discriminator`),
  "dg" (Discriminator Guidance, `diffusion.dg.DGSettings`: that `disc_dir`, or DG's two `.pt`
  files `classifier` + `head`) or a reward-guided method of
  `reward_samplers.REWARD_SAMPLERS` (lidar, gradient, best_of_n, svdd, fk) with its settings and
  `reward` section; a key the config leaves out takes the settings' default (printed);
* `labels`: "cycle" (sample i gets class i mod K), "none", or one class number.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxdiff.diffusion import guidance as GD
from jaxdiff.diffusion import quality_net as QN
from jaxdiff.diffusion import solvers
from jaxdiff.diffusion.batch_samplers import DiffRSSettings
from jaxdiff.diffusion.dg import DGSettings
from jaxdiff.diffusion.reward_samplers import (REWARD_SAMPLERS, REWARDS, RewardSettings,
                                              fk_resample_mask)
from jaxdiff.diffusion.saved import DISC_JSON, read_model_spec
from jaxdiff.errors import UserError
from jaxdiff.models import dg as dg_model
from jaxdiff.models import edm
from jaxdiff.specs.base import Resolution, Resolver, SpecError, absolute_path
from jaxdiff.specs.common import RunSpec, run_spec

SOURCES = ("run", "gmm", "edm")
EDM_PRETRAINED_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
ADM_64_CLASSIFIER_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
                         "64x64_classifier.pt")
# Solver hyperparameters read from the `solver` section (passed traced: no recompiles).
SOLVER_HPARAMS = {"edm": ("s_churn", "s_tmin", "s_tmax", "s_noise"), "ddim": ("eta",)}
GUIDANCE = ("none", "diffrs", "dg", *REWARD_SAMPLERS)


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    name: str            # canonical (`solvers.SOLVERS`)
    steps: int
    sigma_min: float
    sigma_max: float
    rho: float
    hparams: dict        # {name: float}, traced


@dataclasses.dataclass(frozen=True)
class GMMSpec:
    """A mixture of `num_components` isotropic Gaussians (std `std`) over `image_shape`, means
    `mean_scale * N(0, 1)` drawn from `seed`, equal weights; component k is class k."""

    image_shape: tuple
    num_components: int
    std: float
    mean_scale: float
    seed: int


@dataclasses.dataclass(frozen=True)
class QualitySpec:
    enabled: bool
    num_real: int        # real test images for the Frechet distance (0 = all)
    net: dict            # `quality_net.QualityNetSpec` fields besides the data set


@dataclasses.dataclass(frozen=True)
class FIDSpec:
    """Inception FID of the samples (`jaxdiff.fid`): on when `ref` names reference statistics
    (an EDM-format `.npz`); `weights` is pytorch-fid's Inception file, `resize` the detector's
    preprocessing ("tf": EDM's, the default; "pytorch-fid")."""

    ref: str
    weights: str
    resize: str

    @property
    def enabled(self) -> bool:
        return bool(self.ref)


@dataclasses.dataclass(frozen=True)
class GuidanceSpec:
    name: str
    settings: Any        # DiffRSSettings / LidarSettings / ... (None for "none")


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    source: str
    model_dir: str
    model_spec: dict | None   # model.json of `model_dir` (source "run"); `edm.describe` ("edm")
    use_ema: bool
    data_dir: str
    gmm: GMMSpec
    solver: SolverSpec
    num_samples: int
    batch_size: int
    labels: str
    num_classes: int          # of the source (0 = unconditional)
    guidance: GuidanceSpec
    quality: QualitySpec
    fid: FIDSpec
    save_samples: bool        # samples.npz of every sample (else only the grid's and figures)
    grid_max: int
    run: RunSpec
    resolution: Resolution


def resolve(config) -> SampleSpec:
    """Resolve a `jaxdiff sample` config; SpecError on bad values."""
    r = Resolver("sample", config)
    source = r.choice("source", SOURCES)
    gmm = _gmm(r)
    model_dir, model_spec = "", None
    if source == "run":
        model_dir = r.path("model_dir")
        if not model_dir:
            raise SpecError("source=run needs --config.model_dir=RUN_DIR (a train-denoiser run)")
        try:
            model_spec = read_model_spec(model_dir)
        except FileNotFoundError as e:
            raise SpecError(f"config key 'model_dir': {e}") from None
        num_classes = int(model_spec["num_classes"])
    elif source == "edm":
        model_dir = r.path("model_dir")
        if not model_dir:
            raise SpecError("source=edm needs --config.model_dir=FILE_OR_DIR (an NVlabs/edm "
                            "network pickle, or a directory from `jaxdiff import-checkpoint`)")
        if not os.path.exists(model_dir):
            raise SpecError(f"config key 'model_dir' = {model_dir}: no such file; the official "
                            f"networks are at {EDM_PRETRAINED_URL}<name>.pkl (e.g. "
                            "edm-cifar10-32x32-cond-vp.pkl), or give a directory from `jaxdiff "
                            "import-checkpoint`")
        try:
            model_spec = edm.describe(model_dir)
        except UserError as e:
            raise SpecError(f"config key 'model_dir': {e}") from None
        num_classes = int(model_spec["constructor"].get("label_dim", 0))
        _check_network(r, model_dir, int(model_spec["constructor"]["img_resolution"]),
                       num_classes)
    else:
        num_classes = gmm.num_components
    solver = _solver(r)
    if source == "edm":
        solver = _within_network_range(r, solver, model_spec["precond"])
    batch_size = r.integer("batch_size", minimum=1)
    guidance = _guidance(r, solver.name, batch_size)
    quality = _quality(r)
    fid = _fid(r)
    if fid.enabled and source == "gmm":
        raise SpecError("config key 'fid.ref': Inception FID needs images (source run or edm); "
                        "source=gmm reports exact mixture figures instead")
    save = r.flag("save_samples") if r.has("save_samples") else r.fill(
        "save_samples", True, "default")
    return SampleSpec(source, model_dir, model_spec, r.flag("use_ema"), r.get("data_dir", ""),
                      gmm, solver, r.integer("num_samples", minimum=1), batch_size,
                      _labels(r, num_classes), num_classes, guidance, quality, fid, bool(save),
                      r.integer("grid_max", minimum=0), run_spec(r, loop=False),
                      r.resolution(resumable=False))


def _check_network(r: Resolver, model_dir: str, size: int, num_classes: int) -> None:
    """`expect.image_size` / `expect.num_classes` (0 or absent: anything) against the network:
    a benchmark preset names what its FID reference was computed for, so a checkpoint of
    another resolution or label count is refused before sampling, both values named."""
    for key, have in (("image_size", size), ("num_classes", num_classes)):
        want = r.integer(f"expect.{key}", minimum=0) if r.has(f"expect.{key}") else 0
        if want and want != have:
            raise SpecError(f"config key 'expect.{key}' = {want}, but the network {model_dir} "
                            f"has {key} {have}: use the checkpoint this preset is for, or set "
                            f"--config.expect.{key}={have} (and a matching fid.ref)")


def _within_network_range(r: Resolver, solver: SolverSpec, precond: dict) -> SolverSpec:
    """EDM's generate.py clamps the sigma grid to the network's range (VP and VE networks have
    sigma_min 0.002 / 0.02 and finite sigma_max; EDMPrecond 0 and inf): the same here,
    printed in the resolved block."""
    lo = max(solver.sigma_min, float(precond.get("sigma_min", 0.0)))
    hi = min(solver.sigma_max, float(precond.get("sigma_max", float("inf"))))
    if lo >= hi:
        raise SpecError(f"config keys 'solver.sigma_min' / 'solver.sigma_max' = "
                        f"{solver.sigma_min} / {solver.sigma_max} do not overlap the network's "
                        f"range [{precond.get('sigma_min')}, {precond.get('sigma_max')}]")
    why = f"the network's {precond.get('class_name', 'preconditioner')} range, as EDM's generate.py"
    if lo != solver.sigma_min:
        r.adjust("solver.sigma_min", solver.sigma_min, lo, why)
    if hi != solver.sigma_max:
        r.adjust("solver.sigma_max", solver.sigma_max, hi, why)
    return dataclasses.replace(solver, sigma_min=lo, sigma_max=hi)


FID_KEYS = ("ref", "weights", "resize")


def _fid(r: Resolver) -> FIDSpec:
    """The `fid` section (absent = off). With `ref` set, the reference statistics (dimension
    2048) and the Inception weights are checked here, before any sampling."""
    from jaxdiff.fid.inception import RESIZE_MODES
    from jaxdiff.fid.stats import load_reference
    from jaxdiff.fid.weights import resolve_weights_path

    section = r.section("fid") if r.has("fid") else {}
    for k in section:
        if k not in FID_KEYS:
            raise SpecError(f"config key 'fid.{k}' is unknown; valid: {list(FID_KEYS)}")
    resize = str(section.get("resize", "tf"))
    if resize not in RESIZE_MODES:
        raise SpecError(f"config key 'fid.resize' = {resize!r} is not one of {RESIZE_MODES}")
    if not section.get("ref"):
        return FIDSpec("", "", resize)
    ref = r.path("fid.ref")
    try:
        load_reference(ref)
    except UserError as e:
        raise SpecError(f"config key 'fid.ref': {e}") from None
    try:   # '' = $JAXDIFF_FID_WEIGHTS
        weights = str(resolve_weights_path(r.path("fid.weights") if section.get("weights")
                                           else None))
    except UserError as e:
        raise SpecError(f"config key 'fid.weights': {e}") from None
    return FIDSpec(ref, weights, resize)


def _gmm(r: Resolver) -> GMMSpec:
    shape = tuple(int(s) for s in r.get("gmm.image_shape"))
    k = r.integer("gmm.num_components", minimum=1)
    if not shape or min(shape) < 1:
        raise SpecError(f"config key 'gmm.image_shape' = {shape} must be positive")
    return GMMSpec(shape, k, r.number("gmm.std", 0.0, strict=True), r.number("gmm.mean_scale"),
                   r.integer("gmm.seed", minimum=0))


def _quality(r: Resolver) -> QualitySpec:
    """The `quality` section: `enabled`, `num_real` and the quality net's fields. The net's
    values are kept as written (they are its cache key: `QualityNetSpec.key`)."""
    q = r.section("quality")
    fields = {f.name for f in dataclasses.fields(QN.QualityNetSpec)} - {"dataset", "image_size",
                                                                        "data_dir"}
    for k in q:
        if k not in fields | {"enabled", "num_real"}:
            raise SpecError(f"config key 'quality.{k}' is unknown; valid: "
                            f"{sorted(fields | {'enabled', 'num_real'})}")
    for k in ("seed", "depth"):
        if k in q:
            r.integer(f"quality.{k}", minimum=0)
    for k in ("width", "feature_dim", "epochs", "batch_size"):
        if k in q:
            r.integer(f"quality.{k}", minimum=1)
    if "lr" in q:
        r.number("quality.lr", 0.0, strict=True)
    enabled = r.flag("quality.enabled") if "enabled" in q else False
    num_real = r.integer("quality.num_real", minimum=0) if "num_real" in q else 0
    return QualitySpec(enabled, num_real,
                       {k: v for k, v in q.items() if k not in ("enabled", "num_real")})


def _solver(r: Resolver) -> SolverSpec:
    name = str(r.get("solver.name"))
    canon = solvers.SOLVER_ALIASES.get(name, name)
    if canon not in solvers.SOLVERS:
        valid = sorted(solvers.SOLVERS) + sorted(solvers.SOLVER_ALIASES)
        raise SpecError(f"config key 'solver.name' = {name!r} is not one of {valid}")
    if canon != name:
        r.derive("solver.name", canon, "solvers.SOLVER_ALIASES")
    hp = {k: r.number(f"solver.{k}") for k in SOLVER_HPARAMS.get(canon, ())}
    return SolverSpec(canon, r.integer("solver.steps", minimum=1),
                      *r.sigma_range("solver"),
                      r.number("solver.rho", 0.0, strict=True), hp)


def _labels(r: Resolver, num_classes: int) -> str:
    mode = str(r.get("labels"))
    if mode == "none" or num_classes == 0:
        if mode not in ("none", "cycle"):
            raise SpecError(f"config key 'labels' = {mode!r}: the model is unconditional; use "
                            "'none' or 'cycle'")
        return "none" if num_classes == 0 else mode
    if mode == "cycle":
        return mode
    try:
        c = int(mode)
    except ValueError:
        raise SpecError(f"config key 'labels' = {mode!r} is not 'cycle', 'none' or a class "
                        f"number in [0, {num_classes})") from None
    if not 0 <= c < num_classes:
        raise SpecError(f"config key 'labels' = {c} outside [0, {num_classes})")
    return str(c)


# ----------------------------------------------------------------------------- guidance
def _guidance(r: Resolver, solver: str, batch_size: int) -> GuidanceSpec:
    name = r.choice("guidance.name", GUIDANCE)
    if name == "none":
        return GuidanceSpec(name, None)
    if name == "diffrs":
        return GuidanceSpec(name, _diffrs(r, solver))
    if name == "dg":
        return GuidanceSpec(name, _dg(r, solver))
    settings_type, _ = REWARD_SAMPLERS[name]
    known = {"name", "reward"} | {k for t, _ in REWARD_SAMPLERS.values() for k in t._fields}
    for k in r.section("guidance"):
        if k not in known:
            raise SpecError(f"config key 'guidance.{k}' is not a {name!r} hyperparameter; "
                            f"valid: {sorted(f for f in settings_type._fields if f != 'reward')} "
                            "and 'reward'")
    values = _with_defaults(r, "guidance", settings_type, exclude=("reward",))
    settings = settings_type(**values, reward=_reward(r))
    return GuidanceSpec(name, _checked(name, settings, solver, batch_size))


def _with_defaults(r: Resolver, prefix: str, settings_type, exclude=()) -> dict:
    """`settings_type`'s fields read from the config section `prefix`, defaults filled in."""
    out = {}
    for field in settings_type._fields:
        if field in exclude:
            continue
        key = f"{prefix}.{field}"
        if r.has(key):
            out[field] = r.get(key)
        else:
            out[field] = r.fill(key, settings_type._field_defaults[field],
                                f"{settings_type.__name__} default")
    return out


def _diffrs(r: Resolver, solver: str) -> DiffRSSettings:
    if solver != "heun":
        raise SpecError(f"DiffRS wraps the deterministic Heun sampler; config key 'solver.name' "
                        f"= {solver!r} must be 'heun'")
    v = _with_defaults(r, "guidance", DiffRSSettings)
    if not v["disc_dir"]:
        raise SpecError("config key 'guidance.disc_dir' must name a `jaxdiff "
                        "train-discriminator` run directory or a DG discriminator imported by "
                        "jaxdiff.models.dg.import_discriminator")
    s = DiffRSSettings(absolute_path(v["disc_dir"]), r.number("guidance.gamma", 0.0, maximum=1.0),
                       r.integer("guidance.warmup", minimum=1),
                       r.integer("guidance.warmup_batch", minimum=1),
                       r.integer("guidance.max_iter", minimum=0), bool(v["clamp_zero"]),
                       r.integer("guidance.warmup_seed", minimum=0))
    if s.warmup % s.warmup_batch:
        raise SpecError("config keys 'guidance.warmup' / 'guidance.warmup_batch': warmup must be "
                        "a positive multiple of warmup_batch")
    return s


def _disc_dir(value) -> str:
    """DG's `disc_dir`: a finished `jaxdiff train-discriminator` run or a DG discriminator
    imported by `models.dg.import_discriminator` (absolute path). (DiffRS's is checked when it
    is loaded: its warm-up cache may be prepared before the run finishes.)"""
    path = absolute_path(value)
    if not (dg_model.is_imported(path) or os.path.isfile(os.path.join(path, DISC_JSON))):
        raise SpecError(f"config key 'guidance.disc_dir' = {path} holds neither a finished "
                        f"`jaxdiff train-discriminator` run ({DISC_JSON}) nor an imported DG "
                        f"discriminator ({dg_model.IMPORTED_JSON})")
    return path


def _dg(r: Resolver, solver: str) -> DGSettings:
    """DG guidance: DG's Heun (solver 'heun'), the discriminator, DG's weights and window."""
    if solver != "heun":
        raise SpecError(f"DG guidance wraps EDM's deterministic Heun sampler (separate weights "
                        f"for its two evaluations); config key 'solver.name' = {solver!r} must "
                        "be 'heun'")
    for k in r.section("guidance"):
        if k != "name" and k not in DGSettings._fields:
            raise SpecError(f"config key 'guidance.{k}' is not a 'dg' setting; valid: "
                            f"{list(DGSettings._fields)}")
    v = _with_defaults(r, "guidance", DGSettings)
    if v["disc_dir"]:
        if v["classifier"] or v["head"]:
            raise SpecError("config keys 'guidance.disc_dir' and 'guidance.classifier' / "
                            "'guidance.head' are exclusive: give an imported discriminator "
                            "directory or DG's two .pt files")
        files = {"disc_dir": _disc_dir(v["disc_dir"])}
    else:
        files = {k: _dg_file(v[k], k) for k in ("classifier", "head")}
    w = {k: r.number(f"guidance.{k}", 0.0) for k in ("weight", "weight_2nd")}
    lo, hi = (r.number(f"guidance.{k}", 0.0, maximum=1.0) for k in ("time_min", "time_max"))
    if lo > hi:
        raise SpecError(f"config keys 'guidance.time_min' = {lo} and 'guidance.time_max' = "
                        f"{hi}: the VP time window needs time_min <= time_max")
    if v["time"] not in dg_model.TIME_CONVENTIONS:
        raise SpecError(f"config key 'guidance.time' = {v['time']!r} is not one of "
                        f"{list(dg_model.TIME_CONVENTIONS)}")
    return DGSettings(**{**dict(disc_dir="", classifier="", head=""), **files}, **w,
                      time_min=lo, time_max=hi, time=str(v["time"]))


def _dg_file(value, key: str) -> str:
    """One of DG's `.pt` files (absolute); missing: the message names the file and its URL."""
    what = "ADM classifier (32x32_classifier.pt)" if key == "classifier" else \
        "discriminator head (discriminator_60.pt / discriminator_250.pt)"
    if not value:
        raise SpecError(f"DG guidance needs config key 'guidance.disc_dir' (an imported DG "
                        f"discriminator) or 'guidance.{key}': DG's {what}")
    path = absolute_path(value)
    if not os.path.isfile(path):
        if key == "classifier":
            where = (f"DG's 32 px classifier 32x32_classifier.pt from {dg_model.CLASSIFIER_URL}; "
                     f"the 64 px one is guided-diffusion's {ADM_64_CLASSIFIER_URL}")
        else:
            where = ("DG's CIFAR-10 heads from " + "; ".join(
                f"{k}: {u}" for k, u in dg_model.HEAD_URLS.items()) + " (for other data DG "
                "publishes none: train one with DG's train.py)")
        raise SpecError(f"config key 'guidance.{key}' = {path} does not exist: download {where}")
    return path


def _reward(r: Resolver) -> RewardSettings:
    defaults = RewardSettings()
    for k in r.section("guidance.reward"):
        if k not in RewardSettings._fields:
            raise SpecError(f"config key 'guidance.reward.{k}' is unknown; valid: "
                            f"{sorted(RewardSettings._fields)}")
    v = _with_defaults(r, "guidance.reward", RewardSettings, exclude=("quality",))
    quality = dict(defaults.quality)
    for k, value in r.section("guidance.reward.quality").items():
        if k not in quality:
            raise SpecError(f"config key 'guidance.reward.quality.{k}' is unknown; valid: "
                            f"{sorted(quality)}")
        quality[k] = value
    if v["name"] not in REWARDS:
        raise SpecError(f"config key 'guidance.reward.name' = {v['name']!r} is not one of "
                        f"{list(REWARDS)}")
    return RewardSettings(str(v["name"]), int(v["target"]), bool(v["clip"]),
                          float(v["threshold"]), quality)


def _positive_int(v, key: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < minimum:
        raise SpecError(f"config key 'guidance.{key}' must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _positive(v, key: str, strict: bool = True) -> float:
    f = float(v)
    if not f == f or f in (float("inf"), float("-inf")) or f < 0 or (strict and f == 0):
        raise SpecError(f"config key 'guidance.{key}' must be a finite number "
                        f"{'>' if strict else '>='} 0, got {v}")
    return f


def _window(w) -> tuple[float, float]:
    w = tuple(float(v) for v in w)
    if len(w) != 2 or not 0 <= w[0] <= w[1]:
        raise SpecError(f"config key 'guidance.window' must be (sigma_lo, sigma_hi) with "
                        f"0 <= sigma_lo <= sigma_hi, got {w}")
    return w


def _checked(name: str, s, solver: str, batch_size: int):
    """The method's settings checked and converted (ints, floats, a float window)."""
    if name in ("svdd", "fk") and solver != "ddim":
        raise SpecError(f"guidance {name!r} uses the DDIM(eta) kernel: config key 'solver.name' "
                        f"= {solver!r} must be 'ddim' (eta = solver.eta)")
    if name in ("lidar", "gradient"):
        s = s._replace(lam=_positive(s.lam, "lam"), scale=_positive(s.scale, "scale", strict=False),
                       window=_window(s.window))
    if name == "lidar":
        n = _positive_int(s.num_lookahead, "num_lookahead")
        subset = int(s.subset)
        if not 0 <= subset <= n:
            raise SpecError(f"config key 'guidance.subset' = {s.subset} must be in "
                            f"[0, num_lookahead={n}] (0 = use the whole lookahead set)")
        if s.subset_mode not in ("random", "top"):
            raise SpecError(f"config key 'guidance.subset_mode' = {s.subset_mode!r} is not "
                            "'random' or 'top'")
        look = str(s.lookahead_solver)
        if solvers.SOLVER_ALIASES.get(look, look) not in solvers.SOLVERS:
            raise SpecError(f"config key 'guidance.lookahead_solver' = {look!r} is not one of "
                            f"{sorted(solvers.SOLVERS) + sorted(solvers.SOLVER_ALIASES)}")
        s = s._replace(num_lookahead=n, subset=subset, lookahead_solver=look,
                       lookahead_steps=_positive_int(s.lookahead_steps, "lookahead_steps"),
                       lookahead_rho=_positive(s.lookahead_rho, "lookahead_rho"))
    if name == "best_of_n":
        s = s._replace(group_size=_positive_int(s.group_size, "group_size"))
    if name == "svdd":
        s = s._replace(num_candidates=_positive_int(s.num_candidates, "num_candidates"),
                       temperature=_positive(s.temperature, "temperature", strict=False))
    if name == "fk":
        k = _positive_int(s.num_particles, "num_particles")
        if batch_size % k:
            raise SpecError(f"config key 'guidance.num_particles' = {k} must divide "
                            f"'batch_size' = {batch_size}")
        if s.potential not in GD.FK_POTENTIALS:
            raise SpecError(f"config key 'guidance.potential' = {s.potential!r} is not one of "
                            f"{list(GD.FK_POTENTIALS)}")
        try:
            fk_resample_mask(s.resample, 2)
        except ValueError as e:
            raise SpecError(str(e)) from None
        s = s._replace(num_particles=k, lam=_positive(s.lam, "lam"),
                       ess_threshold=_positive(s.ess_threshold, "ess_threshold", strict=False))
    return s
