"""Distillation losses as pure functions of decoded images, labels, real batches, network
parameters and a key (DESIGN.md §2).

* Distribution matching (DM, Zhao & Bilen 2023; dd-common.md §7): squared distance between class
  means of `embed` features of a frozen, freshly initialised network, siamese DSA per class.
* Gradient matching (DC/DSA, Zhao et al. 2021; dd-common.md §5): per-class distance between the
  network gradient on real and on synthetic images, layer-wise "ours" distance.

Images of all classes are passed class-major, `[C, n, H, W, Ch]`, so the per-class work is one
batched forward pass instead of the references' Python loop over classes.
Trajectory matching lives in its own module (it needs expert trajectories).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxdiff.random import sample_keys

Augment = Callable[..., jax.Array]  # augment(key, images, siamese=True) -> images


def siamese_by_class(augment, keys, images_by_class):
    """Apply one DSA draw per class (the same draw for real and synthetic: same keys)."""
    if augment is None:
        return images_by_class
    return jax.vmap(lambda k, x: augment(k, x, siamese=True))(keys, images_by_class)


def _flat(x):
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def map_class_chunks(fn: Callable[..., Any], xs: tuple, chunk: int = 0) -> Any:
    """`fn(*xs)` for per-class inputs `xs` (every leaf's leading axis is the class, C), computed
    `chunk` classes at a time: peak memory of `fn` over `chunk` classes instead of all C.

    The groups run in sequence (`lax.map`); when `chunk` does not divide C the last group is
    filled up with the first classes again and their rows are dropped. `fn` must treat classes
    independently (its output row c depends only on input row c). `chunk` 0 or >= C: one call,
    exactly `fn(*xs)`. Returns `fn`'s output pytree, leaves `[C, ...]`.
    """
    num = jax.tree.leaves(xs)[0].shape[0]
    if not chunk or chunk >= num:
        return fn(*xs)
    groups = -(-num // chunk)
    fill = groups * chunk - num

    def grouped(a):
        a = jnp.concatenate([a, a[:fill]]) if fill else a
        return a.reshape(groups, chunk, *a.shape[1:])

    out = jax.lax.map(lambda g: fn(*g), jax.tree.map(grouped, xs))
    return jax.tree.map(lambda a: a.reshape(groups * chunk, *a.shape[2:])[:num], out)


def distribution_matching_loss(
    embed: Callable[[jax.Array], jax.Array],
    syn_by_class: jax.Array,
    real_by_class: jax.Array,
    key: jax.Array,
    augment: Augment | None = None,
    *,
    class_chunk: int = 0,
) -> jax.Array:
    """DM loss Σ_c ‖mean_i φ(A(x^real_c,i)) − mean_j φ(A(x^syn_c,j))‖²  (dd-common.md §7.2).

    Args:
      embed: `embed(images [B, H, W, Ch]) -> [B, F]` of a frozen network (per-sample ops only,
        e.g. instance norm, so batching classes together does not change the features).
      syn_by_class: `[C, n, H, W, Ch]` decoded synthetic images (differentiable).
      real_by_class: `[C, B, H, W, Ch]` real images (treated as constants).
      key: class c's siamese DSA draw uses `fold_in(key, c)`.
      augment: siamese-capable DSA `augment(key, images, siamese=True)`, or None.
      class_chunk: embed the real batches `class_chunk` classes at a time (`map_class_chunks`;
        0 = all at once). The real side holds C x B images against the synthetic side's C x n,
        so it sets the peak memory; the synthetic side stays one batch.

    Returns:
      scalar loss, summed over classes and feature dimensions.
    """
    num_classes = syn_by_class.shape[0]
    keys = sample_keys(key, num_classes)
    syn = siamese_by_class(augment, keys, syn_by_class)
    f_syn = embed(_flat(syn)).reshape(num_classes, syn.shape[1], -1).mean(axis=1)

    def real_features(k, x):   # [K] keys, [K, B, H, W, Ch] -> [K, F]
        x = siamese_by_class(augment, k, x)
        return embed(_flat(x)).reshape(x.shape[0], x.shape[1], -1).mean(axis=1)

    f_real = jax.lax.stop_gradient(map_class_chunks(
        real_features, (keys, jax.lax.stop_gradient(real_by_class)), class_chunk))
    return jnp.sum(jnp.square(f_real - f_syn))


def layer_distance(g_syn: jax.Array, g_real: jax.Array, eps: float = 1e-6) -> jax.Array:
    """DC's per-layer distance ("ours", dd-common.md §5.4): Σ_rows (1 − cos) with rows = outputs.

    Kernels are stored output-last (Flax: conv `[kh, kw, in, out]`, dense `[in, out]`), so the
    last axis is moved first before flattening each output row. 1-D tensors (biases, norm
    scales and shifts) contribute 0, as in the reference.
    """
    if g_syn.ndim <= 1:
        return jnp.zeros((), g_syn.dtype)
    a = jnp.moveaxis(g_syn, -1, 0).reshape(g_syn.shape[-1], -1)
    b = jnp.moveaxis(g_real, -1, 0).reshape(g_real.shape[-1], -1)
    cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + eps)
    return jnp.sum(1.0 - cos)


def gradient_distance(g_syn: Any, g_real: Any, metric: str = "ours") -> jax.Array:
    """Distance between two gradient pytrees: 'ours' (layer-wise), 'mse' or 'cos' (global)."""
    if metric == "ours":
        return sum(jax.tree.leaves(jax.tree.map(layer_distance, g_syn, g_real)))
    a = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g_syn)])
    b = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g_real)])
    if metric == "mse":
        return jnp.sum(jnp.square(a - b))
    if metric == "cos":
        return 1.0 - jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-6)
    raise ValueError(f"unknown gradient-matching metric {metric!r}; use 'ours', 'mse' or 'cos'")


def class_gradient(apply: Callable[[Any, jax.Array], jax.Array], params: Any, images: jax.Array,
                   c) -> Any:
    """`∇_θ mean CE(θ; images, c)`: the gradient of one class's batch `[B, H, W, Ch]`, all
    labelled `c` (a pytree like `params`)."""
    def ce(p):
        labels = jnp.full((images.shape[0],), c, jnp.int32)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply(p, images), labels))
    return jax.grad(ce)(params)


def class_gradients(apply: Callable[[Any, jax.Array], jax.Array], params: Any,
                    images_by_class: jax.Array, classes: jax.Array | None = None) -> Any:
    """`class_gradient` of every class of `[C, B, H, W, Ch]`, vmapped: leaves `[C, ...]`;
    `classes [C]` the labels (default 0..C-1)."""
    if classes is None:
        classes = jnp.arange(images_by_class.shape[0])
    return jax.vmap(lambda x, c: class_gradient(apply, params, x, c))(images_by_class, classes)


def gradient_matching_loss(
    apply: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    syn_by_class: jax.Array,
    real_by_class: jax.Array,
    key: jax.Array,
    augment: Augment | None = None,
    metric: str = "ours",
    *,
    class_chunk: int = 0,
) -> jax.Array:
    """DC/DSA loss Σ_c D(∇_θ CE(θ; A(x^syn_c), c), ∇_θ CE(θ; A(x^real_c), c))  (dd-common.md §5.3).

    Args:
      apply: `apply(params, images [B, H, W, Ch]) -> logits [B, C]`.
      params: network parameters θ (the pytree the gradient is taken of).
      syn_by_class: `[C, n, H, W, Ch]`, differentiable; real_by_class: `[C, B, H, W, Ch]`.
      key: class c's siamese DSA draw uses `fold_in(key, c)`.
      metric: 'ours' (layer-wise, the default), 'mse' or 'cos'.
      class_chunk: take the real batches' gradients `class_chunk` classes at a time
        (`map_class_chunks`; 0 = all at once): they set the peak memory (C x B images).

    Returns:
      scalar loss summed over classes. Differentiating it w.r.t. the synthetic images is a
      second-order derivative through `jax.grad`, which JAX handles natively.
    """
    num_classes = syn_by_class.shape[0]
    keys = sample_keys(key, num_classes)
    syn = siamese_by_class(augment, keys, syn_by_class)

    def real_gradients(k, x, c):   # [K] keys, [K, B, ...] images, [K] labels -> leaves [K, ...]
        return class_gradients(apply, params, siamese_by_class(augment, k, x), c)

    g_real = jax.lax.stop_gradient(map_class_chunks(
        real_gradients, (keys, jax.lax.stop_gradient(real_by_class), jnp.arange(num_classes)),
        class_chunk))
    g_syn = class_gradients(apply, params, syn)
    per_class = jax.vmap(lambda a, b: gradient_distance(a, b, metric))(g_syn, g_real)
    return jnp.sum(per_class)


# (outer loop, inner loop) counts of DC/DSA by images per class (dd-common.md §5.2), with FreD's
# additions 2 -> (1, 1), 11 -> (10, 50), 51 -> (50, 10).
_DC_LOOPS = {1: (1, 1), 2: (1, 1), 10: (10, 50), 11: (10, 50), 20: (20, 25), 30: (30, 20),
             40: (40, 15), 50: (50, 10), 51: (50, 10)}


def dc_loops(ipc: int) -> tuple[int, int]:
    """DC's `get_loops(ipc)` -> (outer_loop, inner_loop), indexed by the *budget* IPC."""
    if ipc not in _DC_LOOPS:
        raise ValueError(f"DC/DSA defines loop counts only for IPC in {sorted(_DC_LOOPS)}; got {ipc}. "
                         "For other IPCs set outer_loop/inner_loop explicitly (the DC maintainers "
                         "suggest (50, 10) or (20, 25) above 50).")
    return _DC_LOOPS[ipc]
