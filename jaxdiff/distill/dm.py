"""DM: distribution matching (Zhao & Bilen, WACV 2023; dd-common.md §7) as a distillation step.

Each iteration draws a fresh, randomly initialised network ψ (never trained: dd-common.md §7.2)
and minimises, summed over classes c,

    L = Σ_c ‖ mean_i ψ(A(x^real_c,i)) − mean_j ψ(A(x^syn_c,j)) ‖²,

with one siamese DSA draw A per class shared by the real and the synthetic batch
(`losses.distribution_matching_loss`). The synthetic set is decoded from the parameterisation
inside the differentiated loss, so the gradient reaches pixels, DCT coefficients or neural-field
weights alike; the update is the per-instance optax step (`distill.optim`).

DDiF's reference steps its optimiser once per class inside the class loop; with the per-instance
(masked) optimiser that equals one joint step on the summed loss (class c's fields get gradient
only from class c's term), so this is one step per iteration (docs/design-notes.md).
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

from jaxdiff.data.transforms import normalize_with
from jaxdiff.distill import losses
from jaxdiff.distill.optim import InstanceOptimizer
from jaxdiff.distill.params import Parameterisation
from jaxdiff.distill.placement import Placement
from jaxdiff.distill.step import (DistillState, DistillStep, check_real_shape, fresh_network,
                                  key_data, step_key)
from jaxdiff.models.functional import apply


def make_dm_step(param: Parameterisation, opt: InstanceOptimizer, make_model: Callable,
                 augment: Callable | None, *, batch_real: int, num_classes: int,
                 per_class: int, place: Placement, class_chunk: int = 0) -> DistillStep:
    """The DM step.

    Args:
      param: the parameterisation (decode / labels of the synthetic set).
      opt: the synthetic-set optimiser (`distill.optim.per_instance` or `plain`).
      make_model: `make_model(rngs)` of the embedding network (its `embed` method is ψ).
      augment: siamese DSA `augment(key, images, siamese=True)`, or None.
      batch_real: real images per class per iteration.
      num_classes, per_class: C and the synthetic instances per class (N = C * per_class).
      place: sharding of the synthetic set and the real batch.
      class_chunk: embed the real batches this many classes at a time (0 = all at once;
        `losses.map_class_chunks`): bounds the peak memory by the chunk, not the class count.

    `update(state, step, static, mean [Ch], std [Ch], real [1, C, batch_real, H, W, Ch] uint8)`,
    `real` the batch of `real_keys(step_key)` (`real_pool.real_batches`).
    """

    def init(params, key):
        return DistillState(params, opt.init(params), key_data(key))

    def real_keys(k):
        return jax.random.split(k, 3)[1][None]

    def update(state: DistillState, step, static, mean, std, real):
        check_real_shape(real, 1, num_classes, batch_real)
        k_net, _, k_aug = jax.random.split(step_key(state, step), 3)  # the middle key: real_keys
        graphdef, net_params, rest = fresh_network(make_model, k_net)  # frozen: never trained
        embed = lambda x: apply(graphdef, (net_params, rest), x, method="embed")[0]  # noqa: E731
        real = place.real(normalize_with(real[0], mean, std))

        def loss_fn(p):
            syn = place.syn(param.decode(p, static)).reshape(num_classes, per_class,
                                                             *real.shape[2:])
            return losses.distribution_matching_loss(embed, syn, real, k_aug, augment,
                                                     class_chunk=class_chunk)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = opt.update(grads, state.opt, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(params=params, opt=opt_state), {"loss": loss}

    return DistillStep(init, update, real_keys)
