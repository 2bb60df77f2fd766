"""The contract of a distillation step (DM, DC, LCMat-C, TM), in optax's shape.

A method is a factory `make_<method>_step(...) -> DistillStep(init, update)`:

* `init(params, key) -> state`: the loop state at step 0 (parameters, optimiser state, the run's
  key data, and whatever else the method learns, e.g. TM's step size);
* `update(state, step, *arrays) -> (state, {"loss": scalar, ...})`: one iteration, pure and
  jittable; its randomness is `fold_in(key, step)` (`step_key`), so a resumed run draws exactly
  what the uninterrupted one drew. `arrays` are the large inputs passed as arguments (the frozen
  arrays of the parameterisation, the step's real batches, expert snapshots), never closed over.
  Real batches are drawn on the host from keys the step names (`real_keys`), so each process
  reads only its share of them (`real_pool.real_batches`).

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
    """`init(params, key) -> state`; `update(state, step, *arrays) -> (state, metrics)`;
    `real_keys(step_key) -> [R] keys`: the keys of the R real batches an update reads (its last
    array, `[R, C, B, H, W, Ch]` uint8 from `real_pool.real_batches`), None if it reads none."""

    init: Callable[..., Any]
    update: Callable[..., tuple[Any, dict]]
    real_keys: Callable[[jax.Array], jax.Array] | None = None


def step_key(state, step) -> jax.Array:
    """This iteration's typed key: `fold_in(loop key, step)`."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), step)


def check_real_shape(real: jax.Array, batches: int, num_classes: int, batch: int) -> None:
    """Trace-time check that an update's real batches are `[batches, num_classes, batch, ...]`."""
    if tuple(real.shape[:3]) != (batches, num_classes, batch):
        raise ValueError(f"real batches of shape {tuple(real.shape)}; this step reads "
                         f"[{batches}, {num_classes}, {batch}, H, W, Ch] (batches per step, "
                         "classes, batch_real)")


def fresh_network(make_model: Callable[[nnx.Rngs], nnx.Module], key: jax.Array):
    """A freshly initialised classifier in functional form: `(graphdef, params, rest)`."""
    return nnx.split(make_model(nnx.Rngs(key)), nnx.Param, ...)


def key_data(key: jax.Array) -> jax.Array:
    """uint32 key data of a typed key (what states store: Orbax saves plain arrays)."""
    return jax.random.key_data(key)
