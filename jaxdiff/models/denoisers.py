"""Raw denoiser networks `F(x_in, c_noise, labels)` by name, and their JSON description.

A trained denoiser is described by a JSON-able spec (`denoiser_spec`): `{"name": "unet" | "mlp",
"kwargs": constructor arguments, "image_shape": [H, W, C], "num_classes": K}` (K = 0:
unconditional; a conditional model gets one extra null label for classifier-free guidance).
`build_denoiser(spec, rngs)` instantiates it. EDM preconditioning around the raw network lives in
`jaxdiff.diffusion.train.nnx_denoiser`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flax import nnx

from jaxdiff.models.mlp_denoiser import MLPDenoiser
from jaxdiff.models.unet import UNet

DENOISERS = ("unet", "mlp")


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


def denoiser_spec(model: Mapping, image_shape, num_classes: int) -> dict:
    """The JSON description of a raw network from a `model` mapping.

    Args:
      model: `name` ("unet" | "mlp") and the architecture keys: for the U-Net `base_channels,
        channel_mult, num_blocks, attention`; for the MLP `hidden, depth, emb_dim`.
      image_shape: `(H, W, C)`.
      num_classes: 0 for an unconditional model, else the number of classes.

    Raises ValueError naming the `model.*` key for an unknown name or a U-Net whose resolutions
    do not divide the image.
    """
    name = model["name"]
    if name not in DENOISERS:
        raise ValueError(f"config key 'model.name' = {name!r} is not one of {list(DENOISERS)}")
    h, w, c = (int(s) for s in image_shape)
    if name == "unet":
        mult = tuple(int(m) for m in model["channel_mult"])
        f = 2 ** (len(mult) - 1)
        if h % f or w % f:
            raise ValueError(f"config key 'model.channel_mult' = {mult}: {len(mult)} resolutions "
                             f"need H and W divisible by {f}, images are {h}x{w}")
        kwargs = dict(base_channels=int(model["base_channels"]), channel_mult=list(mult),
                      num_blocks=int(model["num_blocks"]), attention=bool(model["attention"]))
    else:
        kwargs = dict(hidden=int(model["hidden"]), depth=int(model["depth"]),
                      emb_dim=int(model["emb_dim"]))
    return {"name": name, "kwargs": kwargs, "image_shape": [h, w, c],
            "num_classes": int(num_classes)}


def build_denoiser(spec: Mapping, rngs: nnx.Rngs) -> nnx.Module:
    """Instantiate the raw network `F(x_in, c_noise, labels)` described by `spec`."""
    h, w, c = spec["image_shape"]
    kw = dict(spec["kwargs"])
    if spec["name"] == "unet":
        kw["channel_mult"] = tuple(kw["channel_mult"])
        return UNet(c, num_classes=spec["num_classes"], rngs=rngs, **kw)
    if spec["name"] == "mlp":
        return ImageMLPDenoiser((h, w, c), num_classes=spec["num_classes"], rngs=rngs, **kw)
    raise ValueError(f"unknown model name {spec['name']!r}; valid: {list(DENOISERS)}")
