"""The synthetic-set interface shared by all parameterisations (dd-common.md §10, DESIGN.md §2).

A parameterisation is a bundle of pure functions over two pytrees:

* `params`: what the optimiser updates. A dict of arrays whose leading axis is the synthetic
  instance (N = num_classes * instances_per_class, class-sorted). Its keys are the param groups
  a pipeline may give different learning rates: pixel `{"images"}`, FreD `{"coefficients"}`,
  DDiF `{"W1", "b1", "Wh", "bh", "Wo", "bo"}`.
* `static`: frozen arrays (labels, FreD masks and DCT matrices, DDiF coordinate grid). Only
  arrays, so `static` can be passed to `jax.jit` as an ordinary argument; configuration (w0, K,
  DCT scaling) lives in the closure of the functions.

Fields of `Parameterisation`:

* `plan(image_shape, num_classes) -> BudgetReport`: the budget arithmetic only; raises
  ValueError when no instance fits. `init` calls it first, so bad budgets fail before any work.
* `init(key, real_by_class) -> (params, static)`; `real_by_class` is `[C, n_real, *spatial, Ch]`
  float32 in normalised space (or a sequence of C arrays `[n_c, *spatial, Ch]`, or a pool read
  on demand: an object with that `shape` and `take_per_class(idx [C, k]) -> [C, k, *spatial,
  Ch]`, e.g. `real_pool.NormalisedPool`, of which only the chosen images are read).
* `decode(params, static, index=None) -> [B, *spatial, Ch]`; `index` is `[B]` int (any order,
  repeats allowed) or None for all N instances. Pure and jittable.
* `labels(static, index=None) -> [B] int32` hard class labels (class-sorted for index=None).
* `storage_floats(params, static) -> int`: stored floats as the paper counts them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.distill.budget import BudgetReport

__all__ = [
    "Parameterisation",
    "select_real_images",
    "class_sorted_labels",
    "take_instances",
    "real_images_shape",
]

class Parameterisation(NamedTuple):
    """Pure functions of one parameterisation; see the module docstring for the contracts."""

    name: str
    plan: Callable[[Sequence[int], int], BudgetReport]
    init: Callable[[jax.Array, Any], tuple[dict, dict]]
    decode: Callable[..., jax.Array]
    labels: Callable[..., jax.Array]
    storage_floats: Callable[[dict, dict], int]


def real_images_shape(real_by_class: Any) -> tuple[int, tuple[int, ...], list[int]]:
    """(num_classes, image_shape, per-class counts) of `[C, n, *spatial, Ch]` or a list of
    `[n_c, *spatial, Ch]` arrays (or a pool read on demand, by its `shape`); ValueError on
    ragged image shapes or too few axes."""
    lazy = hasattr(real_by_class, "take_per_class")
    if isinstance(real_by_class, (list, tuple)) and not lazy:
        shapes = {tuple(x.shape[1:]) for x in real_by_class}
        if len(real_by_class) == 0 or len(shapes) != 1:
            raise ValueError(
                f"real_by_class must hold one image shape for every class, got {sorted(shapes)}"
            )
        image_shape = shapes.pop()
        counts = [int(x.shape[0]) for x in real_by_class]
        num_classes = len(real_by_class)
    else:
        if real_by_class.ndim < 4:
            raise ValueError(
                "real_by_class must be [C, n_real, *spatial, channels] (at least 4 axes), got "
                f"shape {tuple(real_by_class.shape)}"
            )
        num_classes = int(real_by_class.shape[0])
        image_shape = tuple(int(s) for s in real_by_class.shape[2:])
        counts = [int(real_by_class.shape[1])] * num_classes
    if len(image_shape) < 2:
        raise ValueError(f"images must be (*spatial, channels), got per-image shape {image_shape}")
    return num_classes, image_shape, counts


def select_real_images(key: jax.Array, real_by_class: Any, n_per_class: int, name: str = "") -> jax.Array:
    """Distinct real images per class, chosen deterministically from `key`.

    Class c draws `permutation(fold_in(key, c), n_c)[:n_per_class]` (the references take the
    first N_pc of a random permutation of the class), so the choice for one class does not
    depend on the other classes or on how many there are.

    Args:
      key: typed PRNG key.
      real_by_class: `[C, n_real, *spatial, Ch]` or a sequence of C arrays `[n_c, *spatial, Ch]`.
      n_per_class: images to take from every class.
    Returns:
      `[C * n_per_class, *spatial, Ch]`, class-sorted.
    Raises:
      ValueError if a class has fewer than `n_per_class` images.
    """
    _, _, counts = real_images_shape(real_by_class)
    for c, n_c in enumerate(counts):
        if n_c < n_per_class:
            who = f"{name} " if name else ""
            raise ValueError(
                f"class {c} has {n_c} real images, but {who}needs {n_per_class} distinct real "
                f"images per class to initialise its instances"
            )
    if hasattr(real_by_class, "take_per_class"):  # read on demand: only the chosen images
        classes = jnp.arange(len(counts), dtype=jnp.uint32)
        idx = jax.vmap(lambda c: _class_choice(key, c, counts[0], n_per_class))(classes)
        picks = jnp.asarray(real_by_class.take_per_class(np.asarray(idx)))
        return picks.reshape(-1, *picks.shape[2:]).astype(jnp.float32)
    if not isinstance(real_by_class, (list, tuple)):
        return _select_stacked(key, jnp.asarray(real_by_class), n_per_class)
    picks = [
        jnp.asarray(x)[_class_choice(key, c, counts[c], n_per_class)]
        for c, x in enumerate(real_by_class)
    ]
    return jnp.concatenate(picks, axis=0).astype(jnp.float32)


def _class_choice(key: jax.Array, c, n_c: int, n: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, c), n_c)[:n]


@functools.partial(jax.jit, static_argnums=2)
def _select_stacked(key: jax.Array, real: jax.Array, n: int) -> jax.Array:
    # one program for all classes; vmapped draws equal the per-class ones of the list path
    classes = jnp.arange(real.shape[0], dtype=jnp.uint32)
    idx = jax.vmap(lambda c: _class_choice(key, c, real.shape[1], n))(classes)  # [C, n]
    picks = jax.vmap(lambda x, i: x[i])(real, idx)
    return picks.reshape(-1, *real.shape[2:]).astype(jnp.float32)


def class_sorted_labels(num_classes: int, n_per_class: int) -> jax.Array:
    """`[C * n_per_class]` int32: [0]*n + [1]*n + ... (hard, fixed labels)."""
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), n_per_class)


def take_instances(params: Any, index: jax.Array | None) -> Any:
    """Gather instances `index` ([B] int) along the leading axis of every leaf; None = all."""
    if index is None:
        return params
    index = jnp.asarray(index)
    return jax.tree.map(lambda a: jnp.take(a, index, axis=0), params)


def labels_fn(static: dict, index: jax.Array | None = None) -> jax.Array:
    """Labels of the instances `index` (all when None): `[B]` int32."""
    lab = static["labels"]
    return lab if index is None else jnp.take(lab, jnp.asarray(index), axis=0)
