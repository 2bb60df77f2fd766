"""The contract of a distillation step (DM, DC, LCMat-C, TM), in optax's shape.

A method is a factory `make_<method>_step(...) -> DistillStep(init, update)`:

* `init(params, key) -> state`: the loop state at step 0 (parameters, optimiser state, the run's
  key data, and whatever else the method learns, e.g. TM's step size);
* `update(state, step, *arrays) -> (state, {"loss": scalar, ...})`: one iteration, pure and
  jittable; its randomness is `fold_in(key, step)` (`step_key`), so a resumed run draws exactly
  what the uninterrupted one drew. `arrays` are the large inputs passed as arguments (the frozen
  arrays of the parameterisation, the real-image pool, expert snapshots), never closed over.

State NamedTuples keep the field names of the dicts earlier versions checkpointed (`params`,
`opt`, `key`, TM's `syn_lr`, `lr_opt`); Orbax restores by name, so old run directories resume.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
from flax import nnx


class DistillState(NamedTuple):
    """DM / DC / LCMat-C loop state.

    Attributes:
      params: the parameterisation's trainable arrays (dict, instance axis first).
      opt: the synthetic-set optimiser's state.
      key: uint32 key data of the run's loop key (`jax.random.key_data`).
    """

    params: Any
    opt: Any
    key: jax.Array


class DistillStep(NamedTuple):
    """`init(params, key) -> state`; `update(state, step, *arrays) -> (state, metrics)`."""

    init: Callable[..., Any]
    update: Callable[..., tuple[Any, dict]]


def step_key(state, step) -> jax.Array:
    """This iteration's typed key: `fold_in(loop key, step)`."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), step)


def fresh_network(make_model: Callable[[nnx.Rngs], nnx.Module], key: jax.Array):
    """A freshly initialised classifier in functional form: `(graphdef, params, rest)`."""
    return nnx.split(make_model(nnx.Rngs(key)), nnx.Param, ...)


def key_data(key: jax.Array) -> jax.Array:
    """uint32 key data of a typed key (what states store: Orbax saves plain arrays)."""
    return jax.random.key_data(key)
