"""Pixel parameterisation: the synthetic images are the parameters (vanilla DC/DM/MTT baseline).

params = {"images": [N, *spatial, Ch] float32} in normalised space, N = C * ipc, class-sorted.
Storage: every pixel, prod(image_shape) floats per instance, so N_pc = ipc.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.distill.budget import BudgetReport, pixel_budget
from jaxdiff.distill.params.base import (
    Parameterisation,
    class_sorted_labels,
    labels_fn,
    real_images_shape,
    select_real_images,
    take_instances,
)

__all__ = ["make_pixel", "PIXEL_INITS"]

PIXEL_INITS = ("real", "noise")


@functools.partial(jax.jit, static_argnums=(1, 2))
def _noise(key: jax.Array, n: int, image_shape: tuple[int, ...]) -> jax.Array:
    """`[n, *image_shape]` N(0, 1); instance i from fold_in(key, i) (independent of n)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n, dtype=jnp.uint32))
    return jax.vmap(lambda k: jax.random.normal(k, image_shape, jnp.float32))(keys)


def make_pixel(*, ipc: int, init: str = "real") -> Parameterisation:
    """Pixel parameterisation with `ipc` images per class.

    Args:
      ipc: images per class (the budget).
      init: "real" — distinct real images of each class (chosen by `select_real_images`);
        "noise" — N(0, 1) per pixel in normalised space, instance i drawn from fold_in(key, i).
    """
    if init not in PIXEL_INITS:
        raise ValueError(f"unknown pixel init {init!r}; valid: {', '.join(PIXEL_INITS)}")

    def plan(image_shape, num_classes: int) -> BudgetReport:
        return pixel_budget(ipc, image_shape, num_classes)

    def init_fn(key: jax.Array, real_by_class: Any) -> tuple[dict, dict]:
        num_classes, image_shape, _ = real_images_shape(real_by_class)
        n_pc = plan(image_shape, num_classes).instances_per_class
        if init == "real":
            images = select_real_images(key, real_by_class, n_pc, name="pixel")
        else:
            images = _noise(key, num_classes * n_pc, image_shape)
        return {"images": images}, {"labels": class_sorted_labels(num_classes, n_pc)}

    def decode(params: dict, static: dict, index: jax.Array | None = None) -> jax.Array:
        """`[B, *spatial, Ch]`: the stored images themselves."""
        del static
        return take_instances(params, index)["images"]

    def storage_floats(params: dict, static: dict) -> int:
        del static
        return int(params["images"].size)

    return Parameterisation("pixel", plan, init_fn, decode, labels_fn, storage_floats)
