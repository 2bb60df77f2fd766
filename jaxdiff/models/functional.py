"""Functional NNX models: split outside jit, merge inside (DESIGN.md §2; jax-practice §2.2).

    graphdef, state = nnx.split(model)              # once, outside the jitted loop
    logits, state = apply(graphdef, state, x)       # inside: merge, call, return the new state

`graphdef` is static structure (hashable, no arrays; close over it or pass it as a static
argument); `state` is a plain pytree that jit, vmap, grad, optax and Orbax all accept.

Optimisers should see parameters only, so split them from the rest (BatchNorm statistics,
RNG counters):

    graphdef, params, rest = split_params(model)    # nnx.split(model, nnx.Param, ...)
    (logits, (params, rest)) = apply(graphdef, (params, rest), x)

Pools of models (vmapped evaluation networks, fresh nets per distillation step) are stacked
states with a leading model axis, made by `init_pool` and applied with `apply_pool`.

Train/eval mode (BatchNorm's `use_running_average`) is a static attribute, so it lives in the
graphdef: choose it before splitting with `with_mode(model, train=...)`, or call
`with_mode(nnx.merge(graphdef, *states), train=False)` inside the traced function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from jaxdiff.batching import masked_mean

State = Any  # an nnx.State, or a (params, rest) pair from `split_params`


def split_params(model: nnx.Module):
    """`model -> (graphdef, params, rest)`: `nnx.Param` leaves apart from all other state."""
    return nnx.split(model, nnx.Param, ...)


def merge_params(graphdef, params, rest) -> nnx.Module:
    """Inverse of `split_params` (a fresh module; call it inside the traced function)."""
    return nnx.merge(graphdef, params, rest)


def with_mode(model: nnx.Module, *, train: bool) -> nnx.Module:
    """A view of `model` in train (batch statistics, active dropout) or eval mode.

    Shares the arrays with `model`; only the static mode attributes differ. Models without
    mode-dependent layers are returned as an equivalent view.
    """
    return nnx.view(model, use_running_average=not train, deterministic=not train,
                    raise_if_not_found=False)


def apply(graphdef, state: State, *args, method: str = "__call__", **kwargs):
    """Merge, call `method(*args, **kwargs)`, and return `(outputs, new_state)`. Pure.

    Args:
      graphdef: from `nnx.split` / `split_params` / `init_pool`.
      state: an `nnx.State` (from `nnx.split(model)`), or a `(params, rest)` pair from
        `split_params`; the new state comes back in the same form.
      method: name of the module method, e.g. "__call__" or "embed".

    Returns:
      `(outputs, new_state)`. The new state differs from the input only where the call
      mutated variables, e.g. BatchNorm running statistics in train mode; parameters pass
      through unchanged (and differentiably).

    The merge copies the Variables (`copy=True`): a state that comes from an outer trace (a
    scan carry used inside `jax.grad`) otherwise yields Variables that NNX refuses to update
    in the inner trace (`TraceContextError` on BatchNorm statistics). The copy is trace-time
    Python work only.
    """
    if isinstance(state, tuple):
        if len(state) != 2:
            raise ValueError(
                "state must be an nnx.State or a (params, rest) pair from split_params")
        params, rest = state
        model = nnx.merge(graphdef, params, rest, copy=True)
        out = getattr(model, method)(*args, **kwargs)
        _, _, new_rest = nnx.split(model, nnx.Param, ...)
        return out, (params, new_rest)
    model = nnx.merge(graphdef, state, copy=True)
    out = getattr(model, method)(*args, **kwargs)
    return out, nnx.state(model)


def init_pool(make_model: Callable[[nnx.Rngs], nnx.Module], keys: jax.Array, *filters):
    """Initialise P models with stacked state: `(graphdef, *states)`, each leaf `[P, ...]`.

    `make_model(nnx.Rngs(key))` is called under `jax.jit(jax.vmap(...))` over `keys` (plain JAX
    transforms: NNX modules build from pure JAX ops, so initialising under vmap gives exactly
    the parameters each key gives on its own). The static graphdef is read off the traced
    model; it is the same for every key. `filters` are passed to `nnx.split`, e.g.
    `init_pool(make, keys, nnx.Param, ...)` returns `(graphdef, params, rest)`.

    Args:
      make_model: builds one model from an `nnx.Rngs` (e.g. a `functools.partial` of ConvNet).
      keys: `[P]` typed PRNG keys.
    """
    graphdefs = []

    def one(key):
        graphdef, *states = nnx.split(make_model(nnx.Rngs(key)), *filters)
        graphdefs.append(graphdef)
        return tuple(states)

    # Under jit: one compilation instead of one per random op and shape (eager initialisation
    # of a ConvNet costs seconds on CPU).
    states = jax.jit(jax.vmap(one))(keys)
    return (graphdefs[0], *states)


def apply_pool(graphdef, state: State, *args, method: str = "__call__", in_axes=None,
               **kwargs):
    """`apply` for a stacked pool: vmapped over the leading model axis of `state`.

    Args:
      in_axes: vmap axes of `args` (a single value for all, or a tuple): None (default) feeds
        the same inputs to every model, 0 gives each model its own slice.

    Returns:
      `(outputs [P, ...], new_state)` with the stacked state in the same form as `state`.
    """
    if not isinstance(in_axes, tuple):
        in_axes = (in_axes,) * len(args)
    fn = lambda s, *a: apply(graphdef, s, *a, method=method, **kwargs)  # noqa: E731
    return jax.vmap(fn, in_axes=(0, *in_axes))(state, *args)


def num_params(tree) -> int:
    """Number of parameter scalars of a model (its `nnx.Param`s) or of a state/pytree."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean of the softmax cross-entropy: `sum(w * ce) / sum(w)` (0 when all w = 0).

    Args:
      logits: `[B, K]`; labels: `[B]` int; weights: `[B]` float (0 masks the padding of a
        partial last batch, `jaxdiff.batching.epoch_batches`; other values weight samples).
    """
    return masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), weights)
