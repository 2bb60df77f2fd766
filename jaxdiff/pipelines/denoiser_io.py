"""Trained-denoiser models for the diffusion pipelines: building, saving and loading.

Shared by `jaxdiff train-denoiser` (which writes a model) and `jaxdiff sample` (which reads one).

Data space. Images are modelled as `x = uint8 / 127.5 - 1`, pixels in [-1, 1] (the EDM/DDPM
convention); `to_model_space` / `to_display` convert. Every denoiser here follows the jaxdiff
contract `denoise(x: [N, H, W, C], sigma: [N], cond) -> x0_hat` with EDM preconditioning
(`jaxdiff.diffusion.edm_denoiser`) around a raw network `F(x_in, c_noise, labels)`.

A trained run directory holds (besides checkpoints and metrics):

* `model.json`  the model spec: `{"name", "kwargs", "image_shape", "num_classes",
                "sigma_data", "dataset", "image_size", "data_scaling", "step"}`;
* `model/<step>/`  an Orbax checkpoint of `{"params", "ema", "rest"}` (raw network parameters,
                their EMA, and the non-trainable variables such as Fourier frequencies).

`load_model(run_dir)` rebuilds the network from the spec and restores the arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.checkpoint import Checkpointer
from jaxdiff.diffusion.train import nnx_denoiser
from jaxdiff.models.mlp_denoiser import MLPDenoiser
from jaxdiff.models.unet import UNet

MODEL_NAMES = ("unet", "mlp")
DATA_SCALING = "x = uint8 / 127.5 - 1 (pixels in [-1, 1])"
MODEL_JSON = "model.json"
MODEL_DIR = "model"


# --------------------------------------------------------------------------------------------
# Data space
# --------------------------------------------------------------------------------------------


def to_model_space(images):
    """`[..., C] uint8 -> float32` in [-1, 1] (`uint8 / 127.5 - 1`). NumPy or jax in, same out."""
    xp = jnp if isinstance(images, jax.Array) else np
    if images.dtype != np.uint8:
        raise TypeError(f"to_model_space expects uint8 images, got dtype {images.dtype}")
    return images.astype(xp.float32) / xp.float32(127.5) - xp.float32(1.0)


def to_display(x) -> np.ndarray:
    """Model-space images `[N, H, W, C]` -> float32 `[0, 1]` (clipped) NumPy, for PNG grids."""
    return np.clip((np.asarray(x, np.float32) + 1.0) * 0.5, 0.0, 1.0)


def to_uint8(x) -> np.ndarray:
    """Model-space images -> uint8 (rounded, clipped): what `samples.npz` stores as `images`."""
    return np.round(to_display(x) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


class ImageMLPDenoiser(nnx.Module):
    """`MLPDenoiser` on flattened images: `F(x_in: [N, H, W, C], c_noise, labels) -> [N, H, W, C]`."""

    def __init__(self, image_shape: Sequence[int], *, hidden: int = 256, depth: int = 3,
                 emb_dim: int = 64, num_classes: int = 0, rngs: nnx.Rngs):
        self.image_shape = tuple(int(s) for s in image_shape)
        self.mlp = MLPDenoiser(int(np.prod(self.image_shape)), hidden=hidden, depth=depth,
                               emb_dim=emb_dim, num_classes=num_classes, rngs=rngs)
        self.num_classes = num_classes

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, x, c_noise, labels=None):
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"expected x of shape [N, {self.image_shape}], got {x.shape}")
        return self.mlp(x.reshape(x.shape[0], -1), c_noise, labels).reshape(x.shape)


def model_spec(model_cfg, image_shape, num_classes: int) -> dict:
    """The JSON-able description of a raw network from the `model` config section.

    Args:
      model_cfg: mapping with `name` ("unet" | "mlp") and the architecture keys: for the U-Net
        `base_channels, channel_mult, num_blocks, attention`; for the MLP `hidden, depth,
        emb_dim`.
      image_shape: `(H, W, C)`.
      num_classes: 0 for an unconditional model; else the number of classes (the model gets
        one extra null label for classifier-free guidance).
    """
    name = model_cfg["name"]
    if name not in MODEL_NAMES:
        raise ValueError(f"config key 'model.name' = {name!r} is not one of {list(MODEL_NAMES)}")
    h, w, c = (int(s) for s in image_shape)
    if name == "unet":
        mult = tuple(int(m) for m in model_cfg["channel_mult"])
        f = 2 ** (len(mult) - 1)
        if h % f or w % f:
            raise ValueError(f"config key 'model.channel_mult' = {mult}: {len(mult)} resolutions "
                             f"need H and W divisible by {f}, images are {h}x{w}")
        kwargs = dict(base_channels=int(model_cfg["base_channels"]), channel_mult=list(mult),
                      num_blocks=int(model_cfg["num_blocks"]),
                      attention=bool(model_cfg["attention"]))
    else:
        kwargs = dict(hidden=int(model_cfg["hidden"]), depth=int(model_cfg["depth"]),
                      emb_dim=int(model_cfg["emb_dim"]))
    return {"name": name, "kwargs": kwargs, "image_shape": [h, w, c],
            "num_classes": int(num_classes)}


def build_model(spec: dict, rngs: nnx.Rngs) -> nnx.Module:
    """Instantiate the raw network `F(x_in, c_noise, labels)` described by `spec`."""
    h, w, c = spec["image_shape"]
    kw = dict(spec["kwargs"])
    if spec["name"] == "unet":
        kw["channel_mult"] = tuple(kw["channel_mult"])
        return UNet(c, num_classes=spec["num_classes"], rngs=rngs, **kw)
    if spec["name"] == "mlp":
        return ImageMLPDenoiser((h, w, c), num_classes=spec["num_classes"], rngs=rngs, **kw)
    raise ValueError(f"unknown model name {spec['name']!r}; valid: {list(MODEL_NAMES)}")


# --------------------------------------------------------------------------------------------
# Saved models
# --------------------------------------------------------------------------------------------


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
        """`denoise(x, sigma, cond)` for a state from `state()` (call inside the jitted function)."""
        params, rest = state
        return nnx_denoiser(self.graphdef, params, rest, self.sigma_data)


def save_model(run_dir: str, params, ema, rest, spec: dict, *, step: int) -> str:
    """Write `model.json` and the Orbax checkpoint `model/<step>/` into `run_dir`; returns the
    model directory. Overwrites an earlier final model of the same run (keeps only the newest)."""
    run_dir = os.path.abspath(run_dir)
    model_dir = os.path.join(run_dir, MODEL_DIR)
    with Checkpointer(model_dir, max_to_keep=1) as ck:
        ck.save(int(step), {"params": params, "ema": ema, "rest": rest}, {"spec": spec}, wait=True)
    tmp = os.path.join(run_dir, MODEL_JSON + ".tmp")
    with open(tmp, "w") as f:
        json.dump({**spec, "step": int(step)}, f, indent=2)
    os.replace(tmp, os.path.join(run_dir, MODEL_JSON))
    return model_dir


def load_model(run_dir: str) -> TrainedDenoiser:
    """Load the final model of a `jaxdiff train-denoiser` run directory.

    Raises:
      FileNotFoundError: `run_dir` does not exist, or holds no finished model (`model.json`).
    """
    run_dir = os.path.abspath(os.path.expanduser(run_dir))
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"model run directory {run_dir} does not exist; train one with "
                                "`jaxdiff train-denoiser` or set --config.model_dir")
    path = os.path.join(run_dir, MODEL_JSON)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{run_dir} holds no finished denoiser ({MODEL_JSON} missing): the training run did "
            "not finish (resume it with `jaxdiff train-denoiser --resume`) or this is not a "
            "train-denoiser run directory")
    with open(path) as f:
        spec = json.load(f)
    model = build_model(spec, nnx.Rngs(0))  # shapes only: the values are restored below
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    like = {"params": params, "ema": params, "rest": rest}
    with Checkpointer(os.path.join(run_dir, MODEL_DIR)) as ck:
        _, state, _ = ck.restore(like, step=spec.get("step"))
    return TrainedDenoiser(graphdef, state["params"], state["ema"], state["rest"], spec)
