"""`jaxdiff select`: config -> `SelectSpec`.

Methods are named as `jaxdiff.select.methods.METHODS` spells them ('-' and '_' alike, any
case); per-method options must be keyword options of that method (not its data inputs). The
candidate pool (the first `pool_per_class` training images of each class, 0 = all) and the
per-class budgets of every fraction (`round(fraction * n_c)`) are computed here from the
training labels, so a fraction that selects nothing from some class is refused before any work.
Derived: the ConvNet depths (0: by image size) and the DSA strategy ("auto": by dataset).
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from jaxdiff import data as jdata
from jaxdiff.checkpoint import RUN_CONTROL_KEYS
from jaxdiff.select import methods as M
from jaxdiff.specs.base import Resolution, Resolver, SpecError
from jaxdiff.specs.common import (ClassifierSpec, DataSpec, RunSpec, as_tuple, classifier_spec,
                                  data_spec, dsa_strategy, run_spec)

# A method's data inputs (`select.methods`): computed by the pipeline, never options.
INPUT_NAMES = ("embeddings", "logits", "correct")
# A table's rows are keyed by (method, fraction, seed): `--resume` may add or drop methods,
# fractions and seeds (finished rows are kept, new ones computed); any other change is refused.
SELECT_RESUME_SAFE = ("select.methods", "select.fractions", "seeds", "pretrain.cache_dir")
# The `eval` section decides the table's numbers here (for distill it only drives the final
# evaluation), so it is part of select's identity: a resume with other `eval` values is refused.
SELECT_IGNORE = tuple(k for k in RUN_CONTROL_KEYS if k != "eval")


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
    """The selection model (lcmat.md §3 Step 0): SGD with momentum (optionally Nesterov) and
    coupled weight decay at a constant learning rate, on the whole un-augmented pool.
    `model_config` is the `pretrain.model` section as written (part of the cache key)."""

    model: ClassifierSpec
    model_config: dict
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    per_seed: bool
    seed: int
    cache_dir: str
    checkpoint_every: int
    log_every: int


@dataclasses.dataclass(frozen=True)
class SelectEvalSpec:
    model: ClassifierSpec
    epochs: int
    lr: float
    batch_size: int
    num_runs: int
    dsa_strategy: str
    test_size: int          # 0 = the whole test split
    use_weights: bool


@dataclasses.dataclass(frozen=True)
class SelectSpec:
    """`pool`: dataset indices of the candidate pool `[P]`; `budgets[f]`: per-class budgets `[C]`
    of fraction f; `options[m]`: keyword options of method m; `data_config`: the `data` section
    as written (part of the pre-training cache key)."""

    data: DataSpec
    data_config: dict
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    options: dict
    pool_per_class: int
    pool: np.ndarray
    budgets: dict
    pretrain: PretrainSpec
    eval: SelectEvalSpec
    run: RunSpec
    resolution: Resolution


def resolve(config) -> SelectSpec:
    """Resolve a `jaxdiff select` config; SpecError on bad values."""
    r = Resolver("select", config)
    data = data_spec(r)   # data.stats (LCMat's CIFAR statistics) is read there
    methods = _methods(r)
    options = _options(r)
    fractions = tuple(float(f) for f in as_tuple(r.get("select.fractions"), "select.fractions"))
    seeds = as_tuple(r.get("seeds"), "seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SpecError(f"config key 'seeds' must be non-negative integers, got {seeds}")
    per_class = r.integer("select.pool_per_class", minimum=0)
    labels = np.asarray(data.load("train", mmap=True).labels)   # the labels only
    pool = candidate_pool(labels, data.info.num_classes, per_class)
    budgets = {}
    for f in fractions:
        try:
            budgets[f] = M.class_budgets(labels[pool], data.info.num_classes, f)
        except (TypeError, ValueError) as e:
            raise SpecError(f"config key 'select.fractions' ({f!r}): {e}") from None
    shape = data.info.image_shape
    return SelectSpec(data, r.section("data"), methods, fractions, tuple(seeds), options,
                      per_class, pool, budgets, _pretrain(r, shape), _eval(r, data),
                      run_spec(r, loop=False, loss_divergence=True),
                      r.resolution(SELECT_IGNORE, resume_safe=SELECT_RESUME_SAFE))


def candidate_pool(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """Dataset indices of the candidate pool: the first `per_class` training indices of each
    class, sorted (0 = the whole split)."""
    if not per_class:
        return np.arange(len(labels))
    idx = jdata.class_indices(labels, num_classes)
    short = [c for c, i in enumerate(idx) if len(i) < per_class]
    if short:
        raise SpecError(f"config key 'select.pool_per_class' = {per_class} exceeds the size of "
                        f"classes {short}")
    return np.sort(np.concatenate([i[:per_class] for i in idx]))


def _methods(r: Resolver) -> tuple[str, ...]:
    methods = []
    for m in as_tuple(r.get("select.methods"), "select.methods"):
        try:
            M.get_method(m)
        except ValueError as e:
            raise SpecError(f"config key 'select.methods': {e}") from None
        methods.append(str(m).lower().replace("-", "_"))
    if len(set(methods)) != len(methods):
        raise SpecError(f"config key 'select.methods' lists a method twice: {methods}")
    return tuple(methods)


def _options(r: Resolver) -> dict:
    options = r.section("select.options")
    for name, opts in options.items():
        if name not in M.METHODS:
            raise SpecError(f"config key 'select.options.{name}': unknown method; valid names: "
                            f"{', '.join(sorted(M.METHODS))}")
        sig = inspect.signature(M.METHODS[name]).parameters
        bad = [k for k in opts if k not in sig or k in INPUT_NAMES or
               sig[k].kind is not inspect.Parameter.KEYWORD_ONLY]
        if bad:
            valid = [k for k, p in sig.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
                     and k not in INPUT_NAMES + ("mesh",)]
            raise SpecError(f"config key 'select.options.{name}': unknown option(s) {bad}; "
                            f"valid: {valid}")
        for k, v in opts.items():
            try:
                M.OPTION_CHECKS.get(k, lambda v: v)(v)
            except (TypeError, ValueError) as e:
                raise SpecError(f"config key 'select.options.{name}.{k}': {e}") from None
    return options


def _pretrain(r: Resolver, image_shape) -> PretrainSpec:
    p = "pretrain"
    return PretrainSpec(
        classifier_spec(r, f"{p}.model", image_shape), r.section(f"{p}.model"),
        epochs=r.integer(f"{p}.epochs", minimum=1), batch_size=r.integer(f"{p}.batch_size", minimum=1),
        lr=r.number(f"{p}.lr", 0.0, strict=True), momentum=r.number(f"{p}.momentum", 0.0),
        nesterov=r.flag(f"{p}.nesterov"), weight_decay=r.number(f"{p}.weight_decay", 0.0),
        per_seed=r.flag(f"{p}.per_seed"), seed=r.integer(f"{p}.seed", minimum=0),
        cache_dir=r.path(f"{p}.cache_dir"),
        checkpoint_every=r.integer(f"{p}.checkpoint_every", minimum=1),
        log_every=r.integer(f"{p}.log_every", minimum=1))


def _eval(r: Resolver, data: DataSpec) -> SelectEvalSpec:
    e = "eval"
    return SelectEvalSpec(
        classifier_spec(r, f"{e}.model", data.info.image_shape),
        epochs=r.integer(f"{e}.epochs", minimum=0), lr=r.number(f"{e}.lr", 0.0, strict=True),
        batch_size=r.integer(f"{e}.batch_size", minimum=1),
        num_runs=r.integer(f"{e}.num_runs", minimum=0),
        dsa_strategy=dsa_strategy(r, f"{e}.dsa_strategy", data.name),
        test_size=r.integer(f"{e}.test_size", minimum=0), use_weights=r.flag(f"{e}.use_weights"))
