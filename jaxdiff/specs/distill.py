"""`jaxdiff distill`: config -> `DistillSpec` (every default filled, every value checked).

Where a value comes from when the config leaves it open:

* `opt.name`/`opt.momentum`/`opt.lr` ("auto" / 0): the references' optimiser for (param, loss),
  `jaxdiff.distill.presets.OPTIMIZER_DEFAULTS`;
* `loss.tm.*` (0): the TM table for (dataset, IPC): DDiF's own for DDiF, FreD's for pixel/FreD
  (`presets.DDIF_TM_DEFAULTS`, `presets.TM_DEFAULTS`); a row fills `syn_steps` with
  `expert_epochs` and `lr_lr` with `lr_teacher`, as the references' scripts set them together;
* `param.ddif.depth`/`width` (0): the reference's SIREN for (dataset, IPC)
  (`params.DDIF_PRESETS`, with w0_initial and w0);
* derived, not written into the config: `loss.dc.outer`/`inner` (0: `losses.dc_loops(ipc)`),
  DSA strategies ("auto": by dataset), the ConvNet depth (0: by image size), `loss.batch_real`
  cut to the smallest class's size (an adjustment, printed).

The fingerprint that guards checkpoints is that of the config with the table values filled in
(the run-control keys left out), as before the spec existed, so existing runs resume.
"""

from __future__ import annotations

import dataclasses

from jaxdiff import data as jdata
from jaxdiff.distill import losses, presets
from jaxdiff.distill.budget import BudgetReport
from jaxdiff.distill.optim import OPTIMIZERS
from jaxdiff.distill.params import (PARAM_GROUPS, PARAMETERISATIONS, ddif_preset,
                                    get_parameterisation)
from jaxdiff.distill.tm import open_experts
from jaxdiff.distill.trajectory import MODES
from jaxdiff.specs.base import Resolution, Resolver, SpecError
from jaxdiff.specs.common import (ClassifierSpec, DataSpec, RunSpec, classifier_spec, data_spec,
                                  dsa_strategy, run_spec)
from jaxdiff.specs.evaluate import run_mode

LOSSES = ("dm", "dc", "tm", "lcmat")
DC_METRICS = ("ours", "mse", "cos")
LCMAT_PERTURBATIONS = ("global", "per_class")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """The parameterisation: `get_parameterisation(name, ipc=ipc, **options)`."""

    name: str
    options: dict
    budget: BudgetReport


@dataclasses.dataclass(frozen=True)
class DCSpec:
    outer: int          # image updates per iteration
    inner: int          # network epochs between them
    metric: str
    lr_net: float
    batch_train: int


@dataclasses.dataclass(frozen=True)
class TMSpec:
    buffer_dir: str
    syn_steps: int
    expert_epochs: int
    max_start_epoch: int
    lr_lr: float
    lr_teacher: float
    batch_syn: int      # 0 = all instances per student step
    mode: str           # "unroll" | "remat" | "tesla"
    min_syn_lr: float | None


@dataclasses.dataclass(frozen=True)
class LCMatSpec:
    rho: float
    weight: float
    perturbation: str


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The matching loss. `dsa_strategy` is resolved ('' = no augmentation)."""

    name: str
    batch_real: int
    dsa_strategy: str
    dc: DCSpec | None
    tm: TMSpec | None
    lcmat: LCMatSpec | None
    class_chunk: int = 0   # DM/DC: real batches this many classes at a time (0: auto, `plan`)


@dataclasses.dataclass(frozen=True)
class OptSpec:
    name: str
    lr: float
    momentum: float
    masked: bool
    group_lr: dict      # {parameter group: learning rate}


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """The train-on-synthetic / test-on-real protocol after (and during) distillation."""

    epochs: int
    num_runs: int
    lr: float
    batch_size: int
    dsa_strategy: str
    compare_random: bool
    run_mode: str = "auto"  # distill.evaluate.RUN_MODES (optional key eval.run_mode)


DIVERGENCE_LIMIT = 100.0  # |synthetic value| in normalised units beyond which a run stops


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    data: DataSpec
    ipc: int
    param: ParamSpec
    loss: LossSpec
    opt: OptSpec
    model: ClassifierSpec
    eval: EvalSpec
    iterations: int
    eval_every: int
    run: RunSpec
    resolution: Resolution
    divergence_limit: float = DIVERGENCE_LIMIT


def resolve(config) -> DistillSpec:
    """Resolve a `jaxdiff distill` config (see the module docstring); SpecError on bad values."""
    r = Resolver("distill", config)
    data = data_spec(r)
    ipc = r.integer("ipc", minimum=1)
    param_name = r.choice("param.name", PARAMETERISATIONS)
    loss_name = r.choice("loss.name", LOSSES)
    _fill_optimizer(r, param_name, loss_name)
    if loss_name == "tm":
        _fill_tm(r, data.name, ipc, param_name)
    if param_name == "ddif":
        _fill_siren(r, data.name, ipc)
    param = _param(r, param_name, ipc, data)
    _check_real_init(ipc, param, data)
    loss = LossSpec(loss_name, _batch_real(r, data), dsa_strategy(r, "loss.dsa_strategy", data.name),
                    _dc(r, ipc) if loss_name in ("dc", "lcmat") else None,
                    _tm(r, data) if loss_name == "tm" else None,
                    _lcmat(r) if loss_name == "lcmat" else None,
                    _class_chunk(r, loss_name))
    opt = OptSpec(r.choice("opt.name", OPTIMIZERS), r.number("opt.lr", 0.0),
                  _momentum(r), r.flag("opt.masked"),
                  _group_lr(r, PARAM_GROUPS[param_name]))
    model = classifier_spec(r, "model", data.info.image_shape)
    ev = EvalSpec(r.integer("eval.epochs", minimum=0), r.integer("eval.num_runs", minimum=0),
                  r.number("eval.lr", 0.0, strict=True), r.integer("eval.batch_size", minimum=1),
                  dsa_strategy(r, "eval.dsa_strategy", data.name), r.flag("eval.compare_random"),
                  run_mode(r, "eval.run_mode"))
    return DistillSpec(data, ipc, param, loss, opt, model, ev,
                       iterations=r.integer("iterations", minimum=0),
                       eval_every=r.integer("eval_every", minimum=0),
                       run=run_spec(r, loss_divergence=False),
                       resolution=r.resolution(),
                       divergence_limit=(r.number("divergence_limit", 0.0)
                                         if r.has("divergence_limit") else DIVERGENCE_LIMIT))


# ----------------------------------------------------------------------------- table defaults
def _fill_optimizer(r: Resolver, param: str, loss: str) -> None:
    if r.get("opt.name") != "auto" and r.get("opt.lr"):
        return
    try:
        name, lr, momentum = presets.optimizer_default(param, loss)
    except KeyError:
        raise SpecError(f"no default optimiser for param.name={param!r} with loss.name={loss!r}; "
                        "set opt.name and opt.lr explicitly") from None
    if param == "fred" and r.get("param.fred.dct_norm", None) == "ortho":
        raise SpecError("the references' FreD learning rates are for the unnormalised DCT; with "
                        "param.fred.dct_norm='ortho' set opt.lr explicitly (see "
                        "jaxdiff.distill.params.ortho_learning_rates)")
    table = f"distill.presets.OPTIMIZER_DEFAULTS[{param!r}, {loss!r}]"
    if r.get("opt.name") == "auto":
        r.fill("opt.name", name, table)
        r.fill("opt.momentum", momentum, table)
    if not r.get("opt.lr"):
        r.fill("opt.lr", lr, table)


def _fill_tm(r: Resolver, dataset: str, ipc: int, param: str) -> None:
    tm = "loss.tm"
    if r.get(f"{tm}.syn_steps") and r.get(f"{tm}.max_start_epoch") and r.get(f"{tm}.lr_lr"):
        return
    try:
        row = presets.tm_default(dataset, ipc, param)
    except KeyError:
        raise SpecError(f"no TM defaults for {dataset!r} IPC {ipc}; set loss.tm.syn_steps, "
                        "loss.tm.max_start_epoch and loss.tm.lr_lr") from None
    table = (f"distill.presets.{'DDIF_TM_DEFAULTS' if param == 'ddif' else 'TM_DEFAULTS'}"
             f"[{presets.DATASET_FAMILY[dataset]!r}, {ipc}]")
    # The row's pairs are set together, as the references' scripts do; say when that replaces
    # a value the config gave.
    for sentinel, partner in (("syn_steps", "expert_epochs"), ("max_start_epoch", None),
                              ("lr_lr", "lr_teacher")):
        if r.get(f"{tm}.{sentinel}"):
            continue
        r.fill(f"{tm}.{sentinel}", getattr(row, sentinel), table)
        if partner is not None:
            given = r.get(f"{tm}.{partner}")
            if given != getattr(row, partner):
                r.note(f"{tm}.{partner} = {given!r} replaced: the table sets it with {sentinel}")
            r.fill(f"{tm}.{partner}", getattr(row, partner), table)


def _fill_siren(r: Resolver, dataset: str, ipc: int) -> None:
    if r.get("param.ddif.depth") and r.get("param.ddif.width"):
        return
    family = presets.DATASET_FAMILY.get(dataset)
    if family is None:
        raise SpecError(f"no DDiF SIREN preset for dataset {dataset!r}; set param.ddif.depth and "
                        "param.ddif.width")
    try:
        s = ddif_preset(family, ipc)
    except ValueError as e:
        raise SpecError(f"param.ddif.depth/width are 0 and {e}") from None
    table = f"distill.params.DDIF_PRESETS[{family!r}, {ipc}]"
    for key in ("depth", "width", "w0_initial", "w0"):
        r.fill(f"param.ddif.{key}", getattr(s, key), table)


# ----------------------------------------------------------------------------- sections
def _param(r: Resolver, name: str, ipc: int, data: DataSpec) -> ParamSpec:
    options = r.section(f"param.{name}")
    try:
        param = get_parameterisation(name, ipc=ipc, **options)
        budget = param.plan(data.info.image_shape, data.info.num_classes)
    except ValueError as e:
        raise SpecError(f"config section 'param.{name}' with ipc={ipc}: {e}") from None
    r.derive("budget", str(budget), f"param.{name} at ipc {ipc}")
    return ParamSpec(name, options, budget)


def _batch_real(r: Resolver, data: DataSpec) -> int:
    """`loss.batch_real`, cut to the smallest class of the training split (the real-image pool
    holds that many images per class; `jaxdiff.data.train_class_counts`)."""
    asked = r.integer("loss.batch_real", minimum=1)
    smallest = int(min(jdata.train_class_counts(data.name, data.data_dir)))
    if asked > smallest:
        return r.adjust("loss.batch_real", asked, smallest,
                        f"the smallest class of {data.name} train has {smallest} images")
    return asked


def _dc(r: Resolver, ipc: int) -> DCSpec:
    outer, inner = r.integer("loss.dc.outer", minimum=0), r.integer("loss.dc.inner", minimum=0)
    if not outer:
        outer, inner = losses.dc_loops(ipc)
        r.derive("loss.dc.outer/inner", (outer, inner), f"distill.losses.dc_loops({ipc})")
    return DCSpec(outer, inner, r.choice("loss.dc.metric", DC_METRICS),
                  r.number("loss.dc.lr_net", 0.0), r.integer("loss.dc.batch_train", minimum=1))


def _tm(r: Resolver, data: DataSpec) -> TMSpec:
    buffer_dir = r.path("loss.tm.buffer_dir")
    if not buffer_dir:
        raise SpecError("loss.name=tm needs --config.loss.tm.buffer_dir=DIR (made by "
                        "`jaxdiff experts`)")
    spec = TMSpec(buffer_dir, r.integer("loss.tm.syn_steps", minimum=1),
                  r.integer("loss.tm.expert_epochs", minimum=1),
                  r.integer("loss.tm.max_start_epoch", minimum=1),
                  r.number("loss.tm.lr_lr", 0.0), r.number("loss.tm.lr_teacher", 0.0, strict=True),
                  r.integer("loss.tm.batch_syn", minimum=0), r.choice("loss.tm.mode", MODES),
                  r.number("loss.tm.min_syn_lr", 0.0) or None)
    # the store exists, matches the data and holds the segments TM will read (a UserError
    # naming the directory otherwise), before the run directory is touched
    open_experts(buffer_dir, data.name, data.info.image_shape, stats=data.info.stats,
                 max_start_epoch=spec.max_start_epoch, expert_epochs=spec.expert_epochs)
    return spec


def _check_real_init(ipc: int, param: ParamSpec, data: DataSpec) -> None:
    """Pixel (init real), FreD and DDiF start from distinct real images of every class: refuse
    an IPC that needs more than the smallest class holds (`jaxdiff.data.train_class_counts`)."""
    if param.name == "pixel" and param.options.get("init", "real") != "real":
        return
    need = param.budget.instances_per_class
    smallest = int(min(jdata.train_class_counts(data.name, data.data_dir)))
    if need > smallest:
        fix = (" or --config.param.pixel.init=noise" if param.name == "pixel" else "")
        raise SpecError(f"config key 'ipc' = {ipc}: param.name={param.name} initialises its "
                        f"{need} instances per class from distinct real images, but the smallest "
                        f"class of {data.name} train has {smallest}; lower ipc{fix}")


def _class_chunk(r: Resolver, loss: str) -> int:
    """`class_chunk`: DM and DC embed / take the gradients of the real batches this many classes
    at a time, bounding the peak memory by the chunk instead of the class count. Absent or 0:
    auto, chosen by the fit check before the run (`pipelines.distill.plan`): one class on CPU,
    the most classes that fit on accelerators. The loss is the same up to float rounding, so like the
    device count it is a run-control key (a resume may change it). LCMat-C's global
    perturbation needs every class's real gradient at once, so it takes no chunk."""
    chunk = r.integer("class_chunk", minimum=0) if r.has("class_chunk") else 0
    if chunk and loss not in ("dm", "dc"):
        raise SpecError(f"config key 'class_chunk' = {chunk}: only loss.name dm and dc "
                        f"process classes in chunks, not {loss!r}; set it to 0")
    return chunk


def _momentum(r: Resolver) -> float:
    """`opt.momentum` in [0, 1): SGD's momentum (1 or more never forgets, so diverges)."""
    m = r.number("opt.momentum", 0.0)
    if m >= 1.0:
        raise SpecError(f"config key 'opt.momentum' = {m:g} must be < 1 (0 = plain SGD)")
    return m


def _lcmat(r: Resolver) -> LCMatSpec:
    return LCMatSpec(r.number("loss.lcmat.rho", 0.0),
                     r.number("loss.lcmat.weight", 0.0, maximum=1.0),
                     r.choice("loss.lcmat.perturbation", LCMAT_PERTURBATIONS))


def _group_lr(r: Resolver, groups: tuple[str, ...]) -> dict:
    """`opt.group_lr` "W1=1e-4,bo=1e-3" -> {"W1": 1e-4, "bo": 1e-3}; names must be groups."""
    out = {}
    for item in filter(None, (t.strip() for t in str(r.get("opt.group_lr")).split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise SpecError(f"config key 'opt.group_lr': entry {item!r} is not NAME=LR")
        if name not in groups:
            raise SpecError(f"config key 'opt.group_lr' names {name!r}, but the parameter groups "
                            f"are {sorted(groups)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise SpecError(f"config key 'opt.group_lr': {value!r} is not a number") from None
    return out
