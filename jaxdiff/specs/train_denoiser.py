"""`jaxdiff train-denoiser`: config -> `TrainDenoiserSpec`.

The network is described by the JSON spec `model.json` records (`models.denoisers.denoiser_spec`
plus `sigma_data`, `dataset`, `image_size`, `data_scaling`); a conditional model gets one extra
null label. The checkpoint fingerprint leaves out the keys that only drive the run (`resume`,
`progress`, `stop_after`, `run_dir` and `checkpoint.RUN_CONTROL_KEYS`), so `--resume` may change
them.
"""

from __future__ import annotations

import dataclasses

from jaxdiff.checkpoint import RUN_CONTROL_KEYS
from jaxdiff.data.transforms import MODEL_SPACE
from jaxdiff.diffusion import solvers
from jaxdiff.models.denoisers import denoiser_spec
from jaxdiff.specs.base import Resolution, Resolver, SpecError
from jaxdiff.specs.common import DataSpec, RunSpec, data_spec, run_spec

# Keys that do not change what a run computes (left out of the checkpoint fingerprint).
DRIVE_KEYS = ("resume", "progress", "stop_after", "run_dir")


@dataclasses.dataclass(frozen=True)
class DenoiserTrainSpec:
    """EDM training (Karras et al. 2022): Adam at `lr` after `warmup_steps` of linear warm-up,
    global-norm clipping, EMA `ema_decay` (ramped from (1 + s) / (10 + s) with `ema_warmup`),
    log-normal sigma (`p_mean`, `p_std`), label dropout for classifier-free guidance."""

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    grad_clip: float
    ema_decay: float
    ema_warmup: bool
    sigma_data: float
    p_mean: float
    p_std: float
    label_dropout: float


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """Sample grids during training: `num` samples by `solver` on a `steps`-level Karras grid,
    every `every` steps (0 = only at the end)."""

    every: int
    num: int
    solver: str
    steps: int
    sigma_min: float
    sigma_max: float
    rho: float


@dataclasses.dataclass(frozen=True)
class TrainDenoiserSpec:
    data: DataSpec
    num_classes: int          # 0 = unconditional
    net: dict                 # what model.json records (without the step)
    train: DenoiserTrainSpec
    grid: GridSpec
    stop_after: int           # > 0: stop (checkpointed) after this many steps
    run: RunSpec
    resolution: Resolution


def resolve(config) -> TrainDenoiserSpec:
    """Resolve a `jaxdiff train-denoiser` config; SpecError on bad values."""
    r = Resolver("train-denoiser", config)
    data = data_spec(r)
    conditional = r.flag("conditional")
    num_classes = data.info.num_classes if conditional else 0
    try:
        net = denoiser_spec(r.section("model"), data.info.image_shape, num_classes)
    except (KeyError, ValueError) as e:
        raise SpecError(f"config section 'model': {e}") from None
    t = "train"
    train = DenoiserTrainSpec(
        r.integer(f"{t}.steps", minimum=1), r.integer(f"{t}.batch_size", minimum=1),
        r.number(f"{t}.lr", 0.0, strict=True), r.integer(f"{t}.warmup_steps", minimum=0),
        r.number(f"{t}.grad_clip", 0.0), _unit(r, f"{t}.ema_decay"), r.flag(f"{t}.ema_warmup"),
        r.number(f"{t}.sigma_data", 0.0, strict=True), r.number(f"{t}.p_mean"),
        r.number(f"{t}.p_std", 0.0, strict=True),
        _unit(r, f"{t}.label_dropout") if conditional else float(r.get(f"{t}.label_dropout")))
    net.update(sigma_data=train.sigma_data, dataset=data.name,
               image_size=int(data.image_size or data.info.image_shape[0]),
               data_scaling=MODEL_SPACE)
    run = run_spec(r)
    grid = _grid(r, run.log_every)
    return TrainDenoiserSpec(data, num_classes, net, train, grid,
                             r.integer("stop_after", minimum=0), run,
                             r.resolution(ignore=RUN_CONTROL_KEYS + DRIVE_KEYS))


def _unit(r: Resolver, key: str) -> float:
    v = r.number(key, 0.0)
    if v >= 1.0:
        raise SpecError(f"config key {key!r} must be in [0, 1), got {v:g}")
    return v


def _grid(r: Resolver, log_every: int) -> GridSpec:
    every = r.integer("sample.every", minimum=0)
    if every and every % log_every:
        raise SpecError(f"config key 'sample.every' = {every} must be a multiple of "
                        f"'log_every' = {log_every} (grids are written at log steps)")
    name = str(r.get("sample.solver"))
    if solvers.SOLVER_ALIASES.get(name, name) not in solvers.SOLVERS:
        raise SpecError(f"config key 'sample.solver' = {name!r} is not one of "
                        f"{sorted(solvers.SOLVERS) + sorted(solvers.SOLVER_ALIASES)}")
    return GridSpec(every, r.integer("sample.num", minimum=1), name,
                    r.integer("sample.steps", minimum=1),
                    *r.sigma_range("sample"),
                    r.number("sample.rho", 0.0, strict=True))
