"""Sharding of a distillation step over a 1-D data mesh (DESIGN.md §2 Sharding).

Synthetic instances (the decoded `[N, ...]` set and the leading axis of the parameters and their
optimiser state) and the real batch of every class (`[C, B, ...]`, axis 1) are split over the
mesh's data axis when the axis length divides evenly, and replicated otherwise; XLA's
partitioner shards the networks' batch computations accordingly. On one device every constraint
is a no-op, so the one-device program is exactly the unsharded one.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdiff import sharding


class Placement:
    """Sharding constraints and placement for one mesh (see the module docstring)."""

    def __init__(self, mesh: jax.sharding.Mesh):
        self.mesh = mesh
        self.n = mesh.shape[sharding.DATA_AXIS]

    def _spec(self, shape, axis):
        if self.n > 1 and shape[axis] % self.n == 0:
            return NamedSharding(self.mesh, P(*([None] * axis), sharding.DATA_AXIS))
        return NamedSharding(self.mesh, P())

    def real(self, x: jax.Array) -> jax.Array:
        """Constrain a real batch `[C, B, H, W, Ch]`: B over the mesh."""
        return jax.lax.with_sharding_constraint(x, self._spec(x.shape, 1)) if self.n > 1 else x

    def real_batches(self, shape: tuple[int, ...]) -> NamedSharding:
        """Where a step's real batches `[R, C, B, H, W, Ch]` live: B over the mesh (the same
        split `real` constrains each batch to)."""
        return self._spec(shape, 2)

    def syn(self, x: jax.Array) -> jax.Array:
        """Constrain a decoded set `[N, H, W, Ch]`: N over the mesh."""
        return jax.lax.with_sharding_constraint(x, self._spec(x.shape, 0)) if self.n > 1 else x

    def put_instances(self, tree: Any) -> Any:
        """Place a pytree whose leaves have the instance axis first (params, optimiser state)."""
        return jax.tree.map(
            lambda a: sharding.put(a, self._spec(a.shape, 0) if a.ndim else
                                   NamedSharding(self.mesh, P())), tree)

    def put_state(self, state: Any) -> Any:
        """Place a loop state NamedTuple: `params` and `opt` by instance, every other field
        replicated. Every leaf then lives on the mesh, so a restored state (Orbax restores each
        leaf onto the devices of the state it is given) has the same placement as a fresh one."""
        return state._replace(**{
            name: (self.put_instances(v) if name in ("params", "opt") else self.replicate(v))
            for name, v in state._asdict().items()})

    def replicate(self, tree: Any) -> Any:
        """Place every array of `tree` on every device of the mesh."""
        return sharding.replicate(tree, self.mesh)
