"""Per-instance optimisers for synthetic sets: instances that got no gradient keep their state.

PyTorch optimisers skip parameters whose gradient is `None`: no moment decay, no step, no step
count. The DDiF/FreD references rely on this whenever only part of the synthetic set is used in a
step (TM decodes a random subset; DDiF's DM steps once per class; DM/DC with `batch_syn > 0`),
see ddif.md §11 pitfall 1. `optax.adam` with a zero gradient instead decays the moments and moves
the parameters by the stale momentum.

`per_instance(tx)` reproduces PyTorch's behaviour exactly: the optax transformation is vmapped over
the leading instance axis (so every instance has its own state, including Adam's step count and
hence its own bias correction), and a boolean `used [N]` mask keeps the parameters and state of
unused instances bit-identical. With `used` all true it equals `tx` applied to the whole set.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class InstanceOptimizer(NamedTuple):
    """`init(params) -> state`; `update(grads, state, params, used=None) -> (updates, state)`.

    All leaves of `params`/`grads` carry the instance axis first (`[N, ...]`); `used` is `[N]` bool
    (None = all used).
    """

    init: Any
    update: Any


def per_instance(tx: optax.GradientTransformation) -> InstanceOptimizer:
    def init(params):
        return jax.vmap(tx.init)(params)

    def update(grads, state, params, used=None):
        updates, new_state = jax.vmap(tx.update)(grads, state, params)
        if used is None:
            return updates, new_state

        def pick(new, old):
            mask = used.reshape(used.shape + (1,) * (new.ndim - 1))
            return jnp.where(mask, new, old)

        updates = jax.tree.map(lambda u: pick(u, jnp.zeros_like(u)), updates)
        new_state = jax.tree.map(pick, new_state, state)
        return updates, new_state

    return InstanceOptimizer(init, update)


def plain(tx: optax.GradientTransformation) -> InstanceOptimizer:
    """The unmasked alternative (one shared state; unused instances still drift with momentum)."""
    return InstanceOptimizer(tx.init, lambda g, s, p, used=None: tx.update(g, s, p))


OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, lr: float, *, momentum: float = 0.0, groups: tuple[str, ...] = (),
                   group_lr: dict[str, float] | None = None, masked: bool = True
                   ) -> InstanceOptimizer:
    """The synthetic-set optimiser: `optax.adam(lr)` or `optax.sgd(lr, momentum)` (momentum 0 =
    none), one per parameter group when `group_lr` gives some group its own rate (the others use
    `lr`), per-instance masked (`per_instance`) unless `masked` is False (`plain`).

    Args:
      name: "adam" | "sgd".
      groups: the keys of the parameterisation's `params` dict (`params.PARAM_GROUPS[name]`).
      group_lr: `{group: lr}` for some of `groups`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser {name!r}; valid: {list(OPTIMIZERS)}")

    def make(rate):
        return optax.adam(rate) if name == "adam" else optax.sgd(rate, momentum=momentum or None)

    if group_lr:
        unknown = sorted(set(group_lr) - set(groups))
        if unknown:
            raise ValueError(f"group learning rates name {unknown}, but the parameter groups "
                             f"are {sorted(groups)}")
        rates = {g: group_lr.get(g, lr) for g in groups}
        tx = optax.multi_transform({g: make(r) for g, r in rates.items()}, {g: g for g in groups})
    else:
        tx = make(lr)
    return per_instance(tx) if masked else plain(tx)
