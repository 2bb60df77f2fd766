"""`jaxdiff experts`: config -> `ExpertsSpec`.

Expert trajectories for trajectory matching (dd-common.md §8.1). Derived: the DSA strategy
("auto": by dataset). The store at `buffer_dir` records what defines the experts (`store_meta`);
a store made with another config is refused when resumed.
"""

from __future__ import annotations

import dataclasses

from jaxdiff.specs.base import Resolution, Resolver, SpecError
from jaxdiff.specs.common import (ClassifierSpec, DataSpec, RunSpec, classifier_spec, data_spec,
                                  dsa_strategy, run_spec)

MODELS = ("convnet", "mlp")


@dataclasses.dataclass(frozen=True)
class ExpertsSpec:
    """Attributes besides the shared sections: `model_config` is the `model` section as written
    (the store's meta keeps it so), `parallel` experts train in one vmapped program."""

    data: DataSpec
    zca: bool
    zca_reg: float
    model: ClassifierSpec
    model_config: dict
    num_experts: int
    parallel: int
    epochs: int
    lr: float
    batch_size: int
    dsa_strategy: str
    run: RunSpec
    resolution: Resolution


def resolve(config) -> ExpertsSpec:
    """Resolve a `jaxdiff experts` config; SpecError on bad values."""
    r = Resolver("experts", config)
    data = data_spec(r)
    r.choice("model.name", MODELS)
    if r.get("model.name") == "convnet" and r.get("model.norm") == "batchnorm":
        raise SpecError("config key 'model.norm' = 'batchnorm' is not supported for experts: "
                        "snapshots hold parameters only (as MTT's); use 'instancenorm'")
    model = classifier_spec(r, "model", data.info.image_shape)
    return ExpertsSpec(
        data, r.flag("zca"), r.number("zca_reg", 0.0), model, r.section("model"),
        num_experts=r.integer("num_experts", minimum=1), parallel=r.integer("parallel", minimum=1),
        epochs=r.integer("epochs", minimum=1), lr=r.number("lr", 0.0, strict=True),
        batch_size=r.integer("batch_size", minimum=1),
        dsa_strategy=dsa_strategy(r, "dsa_strategy", data.name),
        run=run_spec(r, run_dir_key="buffer_dir", loop=False, loss_divergence=True), resolution=r.resolution(resume_safe=("num_experts", "parallel", "buffer_dir")))
