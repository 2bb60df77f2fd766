"""FreD: synthetic images stored as K selected DCT-II coefficients per channel (fred.md).

Storage is compact (fred.md §9): `params = {"coefficients": [N, K, Ch]}` and, frozen in `static`,
`positions: [C, K]` int32 flat indices (row-major over the spatial axes) of the K frequencies of
each class, shared by its instances and all channels, plus `labels [N]` and the exact inverse
DCT matrix of every spatial axis (`idct_0`, `idct_1`, ...). Decoding scatters an instance's K
coefficients into a zero spectrum at its class's positions and applies the inverse DCT along
every spatial axis (two small matmuls per image for 2-D; three for volumes). This equals the
reference's dense `IDCT(mask * freq_syn)` (fred.md §2.3) without storing a dense tensor.

Mask (fred.md §2.4): per class, the DCT of the channel-mean of its N_pc initialisation images,
then the per-position variance across those images (ddof=1), top-K. The ranking always uses the
reference's unnormalised coefficients, whatever `dct_norm` stores, so both scalings represent
exactly the same images (the orthonormal variance would favour other frequencies, because the
unnormalised row/column 0 is scaled up by sqrt(2)). With N_pc = 1 the variance is undefined
(fred.md pitfall 3); positions are then ranked by the single image's energy (squared coefficient).

Learning rates (fred.md §4). With D = diag(s) Q per axis (`dct.dct_scale`), an unnormalised
coefficient is c_u = r * c_o, r[k, l] = s_k s_l (`coefficient_scale`). Decoded images agree, and
the gradients obey g_u = g_o / r. Hence:

* SGD (with or without momentum; the update is linear in the gradients) on c_u with rate `lr`
  produces the same images as SGD on c_o with the per-coefficient rate `lr / r^2`. At 32 px this
  is lr/4096 for k, l > 0, lr/8192 on row/column 0 and lr/16384 at (0, 0) — not one scalar, so a
  single rescaled learning rate is *not* equivalent.
* Adam's update is invariant to a per-coordinate gradient scale (exactly when eps = 0), so Adam
  on c_u with `lr` equals Adam on c_o with the per-coefficient rate `lr / r` (and eps * r).

`ortho_learning_rates` returns these arrays; an optax chain applies them by multiplying the
updates elementwise (e.g. `optax.chain(optax.trace(0.5), optax.stateless(...))`, see the tests).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.distill.budget import BudgetReport, fred_budget
from jaxdiff.distill.params import dct
from jaxdiff.distill.params.base import (
    Parameterisation,
    class_sorted_labels,
    labels_fn,
    real_images_shape,
    select_real_images,
    take_instances,
)

__all__ = [
    "make_fred",
    "select_frequencies",
    "coefficient_scale",
    "ortho_learning_rates",
    "scatter_spectrum",
]


def select_frequencies(init_images: jax.Array, k: int) -> jax.Array:
    """Per-class top-K frequency positions by explained variance (fred.md §2.4).

    Args:
      init_images: `[C, n_pc, *spatial, Ch]` the real images that initialise each class.
      k: positions to keep per class.
    Returns:
      `[C, k]` int32 flat (row-major) indices into the spatial frequency grid, highest variance
      of the channel-mean unnormalised DCT first; ties go to the lower index (`lax.top_k`).
    """
    c, n_pc = init_images.shape[:2]
    spatial = init_images.shape[2:-1]
    mean_img = jnp.mean(init_images, axis=-1)  # DCT is linear: DCT of the mean = mean of DCTs
    coeffs = dct.dctn(mean_img, num_axes=len(spatial), first_axis=2, norm=None)
    coeffs = coeffs.reshape(c, n_pc, math.prod(spatial))
    if n_pc > 1:
        score = jnp.var(coeffs, axis=1, ddof=1)
    else:
        score = jnp.square(coeffs[:, 0])  # one image: variance undefined, rank by its energy
    _, positions = jax.lax.top_k(score, k)
    return positions.astype(jnp.int32)


def scatter_spectrum(coefficients: jax.Array, positions: jax.Array, spatial: tuple[int, ...]) -> jax.Array:
    """Zero spectrum with `coefficients` `[B, K, Ch]` at `positions` `[B, K]`: `[B, *spatial, Ch]`."""
    b, _, ch = coefficients.shape
    dense = jnp.zeros((b, math.prod(spatial), ch), coefficients.dtype)
    dense = dense.at[jnp.arange(b)[:, None], positions].set(coefficients)
    return dense.reshape(b, *spatial, ch)


def _idct_mats(static: dict) -> list[jax.Array]:
    # one key per spatial axis ("idct_0", "idct_1", ...): every static value stays a single
    # array, so `static` saves with np.savez even for non-square images
    return [static[f"idct_{a}"] for a in range(sum(k.startswith("idct_") for k in static))]


def _spatial_from_static(static: dict) -> tuple[int, ...]:
    return tuple(int(m.shape[0]) for m in _idct_mats(static))


def coefficient_scale(static: dict) -> jax.Array:
    """`[N, K, 1]` r with c_unnormalised = r * c_ortho for every stored coefficient.

    r = prod over spatial axes a of s_a[k_a] (`dct.dct_scale`), gathered at each instance's
    class positions; broadcasts over channels.
    """
    spatial = _spatial_from_static(static)
    r = np.ones(spatial)
    for a, n in enumerate(spatial):
        shape = [1] * len(spatial)
        shape[a] = n
        r = r * dct.dct_scale(n).reshape(shape)
    r = jnp.asarray(r.reshape(-1), jnp.float32)
    pos = static["positions"][static["labels"]]  # [N, K]
    return r[pos][..., None]


def ortho_learning_rates(lr: float, static: dict, optimizer: str = "sgd") -> jax.Array:
    """Per-coefficient rates `[N, K, 1]` that make an orthonormal-DCT FreD follow exactly the
    trajectory of the reference's unnormalised one trained with scalar rate `lr`.

    optimizer: "sgd" (any momentum): lr / r^2; "adam": lr / r (exact for eps = 0).
    See the module docstring for the derivation.
    """
    r = coefficient_scale(static)
    if optimizer == "sgd":
        return lr / jnp.square(r)
    if optimizer == "adam":
        return lr / r
    raise ValueError(f"unknown optimizer {optimizer!r}; valid: 'sgd', 'adam'")


@functools.partial(jax.jit, static_argnames=("num_classes", "n_pc", "k", "norm"))
def _init_arrays(images, *, num_classes, n_pc, k, norm):
    """Mask, labels and retained coefficients of the class-sorted init images `[N, *sp, Ch]`."""
    image_shape = images.shape[1:]
    spatial = image_shape[:-1]
    positions = select_frequencies(images.reshape(num_classes, n_pc, *image_shape), k)
    labels = class_sorted_labels(num_classes, n_pc)
    spectrum = dct.dctn(images, num_axes=len(spatial), first_axis=1, norm=norm)
    spectrum = spectrum.reshape(images.shape[0], math.prod(spatial), image_shape[-1])
    coefficients = jnp.take_along_axis(spectrum, positions[labels][..., None], axis=1)
    return coefficients, positions, labels


def make_fred(*, ipc: int, k: int, dct_norm: str | None = None) -> Parameterisation:
    """FreD parameterisation.

    Args:
      ipc: budget in images per class; N_pc = floor(ipc * prod(spatial) / k).
      k: retained coefficients per channel (`msz_per_channel`), e.g. 64 for CIFAR-10 TM.
      dct_norm: None — the reference's unnormalised DCT-II (use the paper's learning rates,
        1e3..1e9); "ortho" — orthonormal DCT-II (rescale rates with `ortho_learning_rates`).
    """
    if dct_norm not in dct.DCT_NORMS:
        raise ValueError(
            f"unknown dct_norm {dct_norm!r}; valid: None (unnormalised, the reference's) or 'ortho'"
        )

    def plan(image_shape, num_classes: int) -> BudgetReport:
        return fred_budget(ipc, image_shape, num_classes, k)

    def init_fn(key: jax.Array, real_by_class: Any) -> tuple[dict, dict]:
        """Mask from, and coefficients of, N_pc distinct real images per class (fred.md §2.5)."""
        num_classes, image_shape, _ = real_images_shape(real_by_class)
        n_pc = plan(image_shape, num_classes).instances_per_class
        spatial = image_shape[:-1]
        images = select_real_images(key, real_by_class, n_pc, name="fred")  # [N, *sp, Ch]
        coefficients, positions, labels = _init_arrays(
            images, num_classes=num_classes, n_pc=n_pc, k=k, norm=dct_norm
        )
        static = {
            "labels": labels,
            "positions": positions,
            **{
                f"idct_{a}": jnp.asarray(dct.idct_matrix(n, dct_norm), jnp.float32)
                for a, n in enumerate(spatial)
            },
        }
        return {"coefficients": coefficients}, static

    def decode(params: dict, static: dict, index: jax.Array | None = None) -> jax.Array:
        """`[B, *spatial, Ch]` = inverse DCT of each instance's scattered coefficients."""
        coefficients = take_instances(params, index)["coefficients"]
        positions = static["positions"][labels_fn(static, index)]
        spectrum = scatter_spectrum(coefficients, positions, _spatial_from_static(static))
        return dct.apply_along(spectrum, _idct_mats(static), first_axis=1)

    def storage_floats(params: dict, static: dict) -> int:
        del static  # the positions (mask) are not charged (fred.md §2.3)
        return int(params["coefficients"].size)

    return Parameterisation("fred", plan, init_fn, decode, labels_fn, storage_floats)
