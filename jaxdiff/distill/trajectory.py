"""Trajectory matching (MTT, Cazenavette et al. 2022) and TESLA's constant-memory gradient.

    loss = mtt_loss(syn_images, syn_labels, syn_lr, start_params, target_params, key,
                    apply_fn=..., syn_steps=20, batch_syn=None, augment=dsa, mode="remat")

One distillation iteration (dd-common.md §8.2): from an expert snapshot θ₀ = θ(t) with
t ~ U{0, …, max_start_epoch − 1}, a student takes N = `syn_steps` SGD steps on minibatches of the
(decoded) synthetic images with a learnable step size α (`syn_lr`),

    θ_{k+1} = θ_k − α ∇_θ CE(apply_fn(θ_k, A_k(X[b_k])), y[b_k])       (per-sample DSA A_k)

and is compared with the expert M epochs later, θ* = θ(t + M):

    L = ‖θ_N − θ*‖² / ‖θ₀ − θ*‖²        (sums of squares over all parameters; the references'
                                          division by the parameter count cancels)

`params` may be any pytree; a flat vector (`jax.flatten_util.ravel_pytree`, the references'
`ReparamModule`, see `flat_student`) is the recommended form: the SGD update is then one fused op.

Gradient modes (`mode`), all giving the same loss value:

* ``"unroll"`` — `lax.scan`, differentiated by JAX as is: every step's activations and inner-VJP
  residuals stay alive until the outer backward pass. Memory grows ~linearly with N.
* ``"remat"`` — the scan body under `jax.checkpoint`: only the carry θ_k (P floats per step) is
  kept; each step's forward and inner gradient are recomputed in the backward pass. Gradients are
  **exactly** those of "unroll" (up to float reassociation), memory O(N·P + one step).
* ``"tesla"`` — TESLA (Cui et al. 2023; dd-common.md §9) as a `jax.custom_vjp`. The forward pass
  keeps nothing but θ₀ and θ_N. The backward pass *replays* the trajectory from θ₀ in forward
  order and, at each step, takes the VJP of that step's gradient g_k w.r.t. its images with the
  fixed cotangent −α·v, v = ∂L/∂θ_N = 2(θ_N − θ*)/D, while re-accumulating G = Σ g_k; then
  ∂L/∂α = −⟨G, v⟩. Memory is O(P + one step), independent of N; cost ≈ "remat" (one extra
  inner forward/backward per step). This is the published estimator, which **drops the
  Hessian-vector terms** (∂θ_j/∂X_i for j > i, i.e. it propagates the cotangent as if
  ∂θ_{k+1}/∂θ_k = I). It is exact for N = 1, and for N > 1 its error is O(α·‖H‖·N) relative;
  `tests/distill/test_trajectory.py` quantifies it. (The reference stores the θ_i; because the
  approximate cotangent is the same at every step we can instead recompute them in forward
  order, which is what makes the memory independent of N.) Use "remat" for the exact gradient.

Minibatching with static shapes (dd-common.md §8.6, pitfall 8): the reference splits a random
permutation of the synthetic set into chunks of `batch_syn` (the last chunk is smaller) and
re-permutes when the chunks run out. `minibatch_schedule` reproduces this exactly with fixed
shapes: every chunk is padded to `batch_syn` with weight-0 entries and the CE of a step is
divided by the true chunk size. Padded entries still go through the network (wasted work when
`batch_syn` does not divide the set), and the masking is only exact for networks whose outputs
are per-sample (instance/group/layer norm, no BatchNorm). Choosing `batch_syn` that divides the
number of synthetic images avoids both. The reference pops chunks from the end of the list (the
short chunk first); we take them in order, which has the same distribution.

The learnable step size α is a raw scalar (not log-parameterised), optimised by its own SGD with
momentum 0.5 (`syn_lr_optimizer`); FreD/DDiF clip it to ≥ 0.001 after every update
(`clip_syn_lr`), vanilla MTT does not (mtt-distillation issue #16).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree

MODES = ("unroll", "remat", "tesla")
MIN_SYN_LR = 1e-3  # FreD/DDiF's clip of the learnable step size (dd-common.md §8.5)

ApplyFn = Callable[[Any, jax.Array], jax.Array]        # apply_fn(params, images) -> logits
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]  # augment(key, images) -> images
InnerLoss = Callable[[jax.Array, jax.Array], jax.Array]  # inner_loss(logits, labels) -> [B]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample softmax cross-entropy `[B]` of `logits [B, C]` and integer `labels [B]`."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


# --------------------------------------------------------------------------- minibatch schedule
def minibatch_schedule(key: jax.Array, num_syn: int, syn_steps: int,
                       batch_syn: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Indices and weights of the N student minibatches, with static shapes.

    The reference's semantics: chunks of `batch_syn` from a random permutation of the
    `num_syn` images, the last chunk of a permutation smaller when `batch_syn` does not divide
    `num_syn`, a fresh permutation when the chunks run out. Permutation p uses
    `fold_in(key, p)`.

    Returns:
      idx: `[syn_steps, b]` int32 image indices (b = batch_syn, or num_syn if None/0);
      weights: `[syn_steps, b]` float32, 1 for real entries, 0 for padding (the padded
        entries point at image 0).
    """
    if num_syn < 1:
        raise ValueError(f"num_syn must be >= 1, got {num_syn}")
    if syn_steps < 1:
        raise ValueError(f"syn_steps must be >= 1, got {syn_steps}")
    b = num_syn if not batch_syn else int(batch_syn)
    if b < 1:
        raise ValueError(f"batch_syn must be >= 1 (or None/0 for all images), got {batch_syn}")
    b = min(b, num_syn)
    chunks = math.ceil(num_syn / b)
    pad = chunks * b - num_syn
    perms = math.ceil(syn_steps / chunks)

    def one(p):
        perm = jax.random.permutation(jax.random.fold_in(key, p), num_syn)
        idx = jnp.concatenate([perm, jnp.zeros(pad, perm.dtype)]).reshape(chunks, b)
        w = jnp.concatenate([jnp.ones(num_syn), jnp.zeros(pad)]).reshape(chunks, b)
        return idx, w

    idx, w = jax.vmap(one)(jnp.arange(perms))
    idx = idx.reshape(perms * chunks, b)[:syn_steps].astype(jnp.int32)
    w = w.reshape(perms * chunks, b)[:syn_steps].astype(jnp.float32)
    return idx, w


# --------------------------------------------------------------------------- the student step
def _tree_sqnorm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def _tree_dot(a, b) -> jax.Array:
    return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _batch_loss(params, x, y, w, apply_fn, inner_loss):
    """Weighted mean inner loss: Σ w·ℓ / Σ w (the true chunk size)."""
    per = inner_loss(apply_fn(params, x), y)
    return jnp.sum(per * w) / jnp.sum(w)


def _step_inputs(syn_images, syn_labels, idx_k, key_k, augment):
    x = syn_images[idx_k]
    if augment is not None:
        x = augment(key_k, x)
    return x, syn_labels[idx_k]


def _unrolled_trajectory(syn_images, syn_labels, syn_lr, start_params, idx, wts, keys, *,
                         apply_fn, augment, inner_loss, remat):
    grad_fn = jax.grad(_batch_loss)

    def step(theta, xs):
        idx_k, w_k, key_k = xs
        x, y = _step_inputs(syn_images, syn_labels, idx_k, key_k, augment)
        g = grad_fn(theta, x, y, w_k, apply_fn, inner_loss)
        theta = jax.tree.map(lambda p, gg: p - syn_lr * gg, theta, g)
        return theta, None

    if remat:
        step = jax.checkpoint(step)
    theta_n, _ = jax.lax.scan(step, start_params, (idx, wts, keys))
    return theta_n


def _normalised_distance(theta_n, start_params, target_params):
    num = _tree_sqnorm(jax.tree.map(jnp.subtract, theta_n, target_params))
    den = _tree_sqnorm(jax.tree.map(jnp.subtract, start_params, target_params))
    return num / den


# --------------------------------------------------------------------------- TESLA custom VJP
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _tesla_loss(apply_fn, augment, inner_loss, syn_images, syn_labels, syn_lr, start_params,
                target_params, idx, wts, keys):
    theta_n = _unrolled_trajectory(syn_images, syn_labels, syn_lr, start_params, idx, wts, keys,
                                   apply_fn=apply_fn, augment=augment, inner_loss=inner_loss,
                                   remat=False)
    return _normalised_distance(theta_n, start_params, target_params)


def _tesla_fwd(apply_fn, augment, inner_loss, syn_images, syn_labels, syn_lr, start_params,
               target_params, idx, wts, keys):
    # Under custom_vjp nothing inside the forward is differentiated, so the scan keeps no
    # residuals: memory is the carry only.
    theta_n = _unrolled_trajectory(syn_images, syn_labels, syn_lr, start_params, idx, wts, keys,
                                   apply_fn=apply_fn, augment=augment, inner_loss=inner_loss,
                                   remat=False)
    loss = _normalised_distance(theta_n, start_params, target_params)
    res = (syn_images, syn_labels, syn_lr, start_params, target_params, idx, wts, keys, theta_n)
    return loss, res


def _tesla_bwd(apply_fn, augment, inner_loss, res, ct):
    syn_images, syn_labels, syn_lr, start, target, idx, wts, keys, theta_n = res
    diff_n = jax.tree.map(jnp.subtract, theta_n, target)
    diff_0 = jax.tree.map(jnp.subtract, start, target)
    num, den = _tree_sqnorm(diff_n), _tree_sqnorm(diff_0)
    v = jax.tree.map(lambda d: (2.0 / den) * d, diff_n)          # ∂L/∂θ_N
    grad_fn = jax.grad(_batch_loss)

    def step(carry, xs):
        theta, g_sum, img_ct = carry
        idx_k, w_k, key_k = xs

        def g_of_images(x_raw):
            x = augment(key_k, x_raw) if augment is not None else x_raw
            return grad_fn(theta, x, syn_labels[idx_k], w_k, apply_fn, inner_loss)

        g, vjp = jax.vjp(g_of_images, syn_images[idx_k])
        # θ_{k+1} = θ_k − α g_k, so ∂L/∂X_k = −α (∂g_k/∂X_k)ᵀ v  (Hessian terms dropped).
        (x_ct,) = vjp(jax.tree.map(lambda vv: -syn_lr * vv, v))
        img_ct = img_ct.at[idx_k].add(x_ct)
        theta = jax.tree.map(lambda p, gg: p - syn_lr * gg, theta, g)
        g_sum = jax.tree.map(jnp.add, g_sum, g)
        return (theta, g_sum, img_ct), None

    zeros = jax.tree.map(jnp.zeros_like, start)
    (_, g_sum, img_ct), _ = jax.lax.scan(step, (start, zeros, jnp.zeros_like(syn_images)),
                                         (idx, wts, keys))
    d_lr = -_tree_dot(g_sum, v)                                   # θ_N = θ₀ − αG, G held fixed
    # θ*: exact given θ_N. θ₀: under the same approximation ∂θ_N/∂θ₀ = I.
    d_target = jax.tree.map(lambda dn, d0: -(2.0 / den) * dn + (2.0 * num / den ** 2) * d0,
                            diff_n, diff_0)
    d_start = jax.tree.map(lambda dn, d0: (2.0 / den) * dn - (2.0 * num / den ** 2) * d0,
                           diff_n, diff_0)
    scale = lambda t: jax.tree.map(lambda x: ct * x, t)  # noqa: E731
    return (ct * img_ct, None, (ct * d_lr).astype(jnp.result_type(syn_lr)), scale(d_start),
            scale(d_target), None, None, None)


_tesla_loss.defvjp(_tesla_fwd, _tesla_bwd)


# --------------------------------------------------------------------------- the loss
def mtt_loss(
    syn_images: jax.Array,
    syn_labels: jax.Array,
    syn_lr: jax.Array,
    start_params: Any,
    target_params: Any,
    key: jax.Array,
    *,
    apply_fn: ApplyFn,
    syn_steps: int,
    batch_syn: int | None = None,
    augment: AugmentFn | None = None,
    mode: str = "remat",
    inner_loss: InnerLoss = cross_entropy,
) -> jax.Array:
    """Normalised trajectory-matching loss ‖θ_N − θ*‖² / ‖θ₀ − θ*‖² (dd-common.md §8.2).

    Args:
      syn_images: `[N_syn, H, W, C]` decoded synthetic images (differentiable), in the space the
        experts were trained in (normalised or ZCA).
      syn_labels: `[N_syn]` int class labels.
      syn_lr: α, scalar float (differentiable), the student's SGD step size.
      start_params: θ₀, the expert snapshot at the start epoch (pytree; flat vector recommended).
      target_params: θ*, the snapshot `expert_epochs` later (same structure).
      key: randomness of the minibatch schedule and of the per-step DSA
        (`split(key)` -> schedule key, augmentation key; step k uses `fold_in(aug_key, k)`).
      apply_fn: `apply_fn(params, images [B, H, W, C]) -> logits [B, num_classes]`, pure
        (e.g. `flat_student(...).apply_fn`); it must not close over traced arrays (mode
        "tesla" passes it through `jax.custom_vjp` as a static argument).
      syn_steps: N, the number of student SGD steps (static).
      batch_syn: synthetic images per student step; None or 0 = all (static). See the module
        docstring for the masked last chunk.
      augment: per-sample DSA `augment(key, images) -> images`, or None.
      mode: "unroll", "remat" or "tesla" (module docstring).
      inner_loss: `inner_loss(logits, labels) -> [B]` per-sample student loss (default CE).

    Returns:
      scalar float32 loss (1 when θ_N = θ₀, 0 when the student lands on θ*).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    syn_images = jnp.asarray(syn_images)
    syn_labels = jnp.asarray(syn_labels, jnp.int32)
    if syn_images.ndim < 2:
        raise ValueError(f"syn_images must be [N, ...], got shape {syn_images.shape}")
    if syn_labels.shape != syn_images.shape[:1]:
        raise ValueError(f"syn_labels has shape {syn_labels.shape}; expected "
                         f"({syn_images.shape[0]},) to match syn_images {syn_images.shape}")
    if jax.tree.structure(start_params) != jax.tree.structure(target_params):
        raise ValueError("start_params and target_params have different structures")
    if int(syn_steps) < 1:
        raise ValueError(f"syn_steps must be >= 1, got {syn_steps}")
    syn_lr = jnp.asarray(syn_lr, jnp.float32)
    if syn_lr.ndim != 0:
        raise ValueError(f"syn_lr must be a scalar, got shape {syn_lr.shape}")
    k_sched, k_aug = jax.random.split(key)
    idx, wts = minibatch_schedule(k_sched, syn_images.shape[0], int(syn_steps), batch_syn)
    keys = jax.vmap(lambda k: jax.random.fold_in(k_aug, k))(jnp.arange(int(syn_steps)))
    if mode == "tesla":
        return _tesla_loss(apply_fn, augment, inner_loss, syn_images, syn_labels, syn_lr,
                           start_params, target_params, idx, wts, keys)
    theta_n = _unrolled_trajectory(syn_images, syn_labels, syn_lr, start_params, idx, wts, keys,
                                   apply_fn=apply_fn, augment=augment, inner_loss=inner_loss,
                                   remat=mode == "remat")
    return _normalised_distance(theta_n, start_params, target_params)


# --------------------------------------------------------------------------- helpers
class FlatStudent(NamedTuple):
    """A classifier in flat-parameter form (the references' `ReparamModule`).

    apply_fn: `apply_fn(flat [P], images) -> logits`; hashable (a `functools.partial`), so it
      can key jit caches and be a static argument.
    init_flat: `[P]` float32, the parameters of `make_model(nnx.Rngs(key))` flattened in
      `ravel_pytree` order of its `nnx.Param` state (the order `ExpertStore` files use).
    unravel: `[P] -> nnx.State` of parameters.
    """

    apply_fn: Callable
    init_flat: jax.Array
    unravel: Callable


def _flat_apply(flat, images, *, graphdef, unravel, rest):
    model = nnx.merge(graphdef, unravel(flat), rest, copy=True)
    return model(images)


def flat_student(make_model: Callable[[nnx.Rngs], nnx.Module], key: jax.Array) -> FlatStudent:
    """Build `FlatStudent` for `make_model` (e.g. `functools.partial(ConvNet, ...)`).

    Models with non-parameter state that changes in training (BatchNorm statistics) are
    rejected: the student, like the reference's, is a function of its parameters only.
    """
    model = make_model(nnx.Rngs(key))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if any(hasattr(x, "shape") and np.size(x) > 1 for x in jax.tree.leaves(rest)):
        raise ValueError("flat_student supports models whose only arrays are nnx.Params "
                         "(e.g. ConvNet with instance norm); this model has other state "
                         "(BatchNorm statistics?)")
    flat, unravel = ravel_pytree(params)
    apply_fn = functools.partial(_flat_apply, graphdef=graphdef, unravel=unravel, rest=rest)
    return FlatStudent(apply_fn, flat, unravel)


def syn_lr_optimizer(lr_lr: float = 1e-5, momentum: float = 0.5) -> optax.GradientTransformation:
    """α's own optimiser: SGD with momentum 0.5 and learning rate `lr_lr` (dd-common.md §8.2)."""
    return optax.sgd(lr_lr, momentum=momentum)


def clip_syn_lr(syn_lr: jax.Array, min_value: float | None = MIN_SYN_LR) -> jax.Array:
    """FreD/DDiF's α ≥ 0.001 after every update; `min_value=None` is vanilla MTT (no clip)."""
    if min_value is None:
        return syn_lr
    return jnp.maximum(syn_lr, min_value)


def sample_segment(key: jax.Array, num_experts: int, max_start_epoch: int
                   ) -> tuple[jax.Array, jax.Array]:
    """(expert, start_epoch): expert ~ U{0..num_experts−1} (MTT's `--load_all`), start ~
    U{0..max_start_epoch−1} (exclusive bound, as `randint(0, max_start_epoch)`)."""
    if num_experts < 1 or max_start_epoch < 1:
        raise ValueError(f"need num_experts >= 1 and max_start_epoch >= 1, got {num_experts}, "
                         f"{max_start_epoch}")
    k1, k2 = jax.random.split(key)
    return (jax.random.randint(k1, (), 0, num_experts),
            jax.random.randint(k2, (), 0, max_start_epoch))
