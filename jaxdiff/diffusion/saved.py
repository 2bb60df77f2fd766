"""Trained diffusion networks on disk: the denoisers `jaxdiff train-denoiser` writes and the
discriminators `jaxdiff train-discriminator` writes, and how `jaxdiff sample` loads them.

Denoiser run directory (besides checkpoints and metrics):

* `model.json`  the network spec (`jaxdiff.models.denoisers.denoiser_spec`) plus `sigma_data`,
                `dataset`, `image_size`, `data_scaling` (`jaxdiff.data.MODEL_SPACE`), `step`;
* `model/<step>/`  an Orbax checkpoint of `{"params", "ema", "rest"}` (raw network parameters,
                their EMA, and the non-trainable variables such as Fourier frequencies).

Discriminator run directory: `discriminator.json` (`discriminator_spec` plus `step`) and
`discriminator/<step>/` (Orbax: the trained head `params` and the `frozen` rest, e.g. a frozen
quality-network feature extractor).

Every denoiser follows the jaxdiff contract `denoise(x: [N, H, W, C], sigma: [N], cond) ->
x0_hat` with EDM preconditioning (`jaxdiff.diffusion.train.nnx_denoiser`); every discriminator
`logit(x, sigma, cond) -> [N]` in the VE convention (`jaxdiff.diffusion.discriminator`).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from flax import nnx

from jaxdiff.checkpoint import Checkpointer
from jaxdiff.data.transforms import MODEL_SPACE
from jaxdiff.diffusion import discriminator as D
from jaxdiff.errors import MissingInputError
from jaxdiff.diffusion.quality_net import QualityNetSpec, get_quality_net
from jaxdiff.diffusion.train import nnx_denoiser
from jaxdiff.files import atomic_write_json
from jaxdiff.models.denoisers import build_denoiser
from jaxdiff.models.discriminator import Discriminator

MODEL_JSON, MODEL_DIR = "model.json", "model"
DISC_JSON, DISC_DIR = "discriminator.json", "discriminator"
EXTRACTORS = ("none", "quality_net")


# ----------------------------------------------------------------------------- denoisers
class TrainedDenoiser(NamedTuple):
    """A loaded model. `params`, `ema`, `rest` are NNX state pytrees (arrays on the host's
    default device); `spec` is `model.json`."""

    graphdef: Any
    params: Any
    ema: Any
    rest: Any
    spec: dict

    @property
    def sigma_data(self) -> float:
        return float(self.spec["sigma_data"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.spec["image_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.spec["num_classes"])

    def state(self, use_ema: bool = True):
        """The array pytree a sampler takes as a (traced) argument: `(params_or_ema, rest)`."""
        return (self.ema if use_ema else self.params, self.rest)

    def make_denoise(self, state):
        """`denoise(x, sigma, cond)` for a state from `state()` (call inside the jitted
        function)."""
        params, rest = state
        return nnx_denoiser(self.graphdef, params, rest, self.sigma_data)


def save_model(run_dir: str, params, ema, rest, spec: dict, *, step: int) -> str:
    """Write `model.json` and the Orbax checkpoint `model/<step>/` into `run_dir`; returns the
    model directory. Overwrites an earlier final model of the same run (keeps only the newest)."""
    run_dir = os.path.abspath(run_dir)
    model_dir = os.path.join(run_dir, MODEL_DIR)
    with Checkpointer(model_dir, max_to_keep=1) as ck:
        ck.save(int(step), {"params": params, "ema": ema, "rest": rest}, {"spec": spec}, wait=True)
    atomic_write_json(os.path.join(run_dir, MODEL_JSON), {**spec, "step": int(step)})
    return model_dir


def read_model_spec(run_dir: str) -> dict:
    """`model.json` of a finished `jaxdiff train-denoiser` run (no arrays loaded).

    Raises `MissingInputError` (a FileNotFoundError and a `UserError`) naming the directory when
    it does not exist or holds no finished model.
    """
    run_dir = os.path.abspath(os.path.expanduser(run_dir))
    if not os.path.isdir(run_dir):
        what = "is a file, not a run directory" if os.path.exists(run_dir) else "does not exist"
        raise MissingInputError(f"model run directory {run_dir} {what}; train one with "
                                "`jaxdiff train-denoiser` or set --config.model_dir")
    path = os.path.join(run_dir, MODEL_JSON)
    if not os.path.exists(path):
        raise MissingInputError(
            f"{run_dir} holds no finished denoiser ({MODEL_JSON} missing): the training run did "
            "not finish (resume it with `jaxdiff train-denoiser --resume`) or this is not a "
            "train-denoiser run directory")
    with open(path) as f:
        return json.load(f)


def load_model(run_dir: str) -> TrainedDenoiser:
    """Load the final model of a `jaxdiff train-denoiser` run directory."""
    spec = read_model_spec(run_dir)
    model = build_denoiser(spec, nnx.Rngs(0))  # shapes only: the values are restored below
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    like = {"params": params, "ema": params, "rest": rest}
    with Checkpointer(os.path.join(os.path.abspath(os.path.expanduser(run_dir)), MODEL_DIR)) as ck:
        _, state, _ = ck.restore(like, step=spec.get("step"))
    return TrainedDenoiser(graphdef, state["params"], state["ema"], state["rest"], spec)


# ----------------------------------------------------------------------------- discriminators
def discriminator_spec(*, extractor: str, width: int, depth: int, emb_dim: int,
                       num_classes: int, image_shape, dataset: str, image_size: int) -> dict:
    """JSON description of a discriminator (enough to rebuild it for loading); VP time
    convention of DG (beta_min 0.1, beta_max 20)."""
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}; valid: {list(EXTRACTORS)}")
    return {"extractor": extractor, "width": int(width), "depth": int(depth),
            "emb_dim": int(emb_dim), "num_classes": int(num_classes),
            "image_shape": [int(s) for s in image_shape], "dataset": dataset,
            "image_size": int(image_size), "beta_min": 0.1, "beta_max": 20.0,
            "data_scaling": MODEL_SPACE}


def build_discriminator(spec: dict, rngs: nnx.Rngs) -> Discriminator:
    """The discriminator of `spec`; extractor "quality_net" puts the (cached, pretrained)
    quality classifier of the dataset in front as a frozen feature extractor (as DG freezes the
    ADM classifier)."""
    extractor, method = None, "embed"
    if spec["extractor"] == "quality_net":
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
    """Write `discriminator.json` and `discriminator/<step>/`; returns the checkpoint dir."""
    run_dir = os.path.abspath(run_dir)
    d = os.path.join(run_dir, DISC_DIR)
    with Checkpointer(d, max_to_keep=1) as ck:
        ck.save(int(step), {"params": params, "frozen": frozen}, {"spec": spec}, wait=True)
    atomic_write_json(os.path.join(run_dir, DISC_JSON), {**spec, "step": int(step)})
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
