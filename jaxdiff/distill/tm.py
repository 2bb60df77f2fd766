"""TM: trajectory matching (MTT, Cazenavette et al. CVPR 2022; dd-common.md §8) as a
distillation step over stored expert trajectories.

One iteration (dd-common.md §8.2): draw an expert e and a start epoch t (`segment_feeder`), decode
the synthetic set, unroll `syn_steps` student SGD steps with the learnable step size α from the
expert snapshot θ₀ = θ_e(t), and minimise

    L = ‖θ_N − θ*‖² / ‖θ₀ − θ*‖²,   θ* = θ_e(t + expert_epochs)          (`trajectory.mtt_loss`)

over the set and α. α has its own optimiser (SGD, lr `lr_lr`, momentum 0.5) and is clipped below
at `min_syn_lr` (FreD/DDiF, §8.5). Instances the minibatch schedule did not use this iteration
(`syn_steps * batch_syn < N`) get an all-zero gradient; they are marked unused so the
per-instance optimiser leaves their state untouched, as PyTorch does for a None gradient
(ddif.md §11 pitfall 1).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.distill import trajectory
from jaxdiff.distill.experts import ExpertStore
from jaxdiff.errors import UserError
from jaxdiff.distill.optim import InstanceOptimizer
from jaxdiff.distill.params import Parameterisation
from jaxdiff.distill.placement import Placement
from jaxdiff.distill.step import DistillStep, key_data, step_key

SEGMENT_STREAM = 0x7E5  # fold_in tag of the segment draws (independent of the step keys)


class TMState(NamedTuple):
    """TM loop state: the DM/DC fields plus the learned student step size α and its optimiser."""

    params: Any
    opt: Any
    key: jax.Array
    syn_lr: jax.Array
    lr_opt: Any


def used_instances(grads: dict, num_instances: int) -> jax.Array:
    """`[N]` bool: instances with a nonzero gradient in any leaf (leaves `[N, ...]`)."""
    used = jnp.zeros(num_instances, bool)
    for leaf in jax.tree.leaves(grads):
        used = used | jnp.any(leaf.reshape(leaf.shape[0], -1) != 0, axis=1)
    return used


def make_tm_step(param: Parameterisation, opt: InstanceOptimizer,
                 student: trajectory.FlatStudent, augment: Callable | None, *, syn_steps: int,
                 batch_syn: int, mode: str, lr_lr: float, lr_teacher: float,
                 min_syn_lr: float | None, place: Placement) -> DistillStep:
    """The TM step.

    Args:
      param, opt, place: as `dm.make_dm_step`.
      student: the flat-parameter classifier the experts were trained as.
      augment: per-image DSA of the student steps, or None.
      syn_steps: student steps N per iteration; batch_syn: images per student step (0 = all).
      mode: "unroll" | "remat" | "tesla" (`trajectory.mtt_loss`).
      lr_lr, lr_teacher: α's learning rate and initial value; min_syn_lr: α's clip (None: none).

    `init(params, key)`; `update(state, step, static, start [P], target [P])`; metrics "loss"
    and "syn_lr".
    """
    lr_opt = trajectory.syn_lr_optimizer(lr_lr)

    def init(params, key):
        syn_lr = jnp.asarray(lr_teacher, jnp.float32)
        return TMState(params, opt.init(params), key_data(key), syn_lr, lr_opt.init(syn_lr))

    def update(state: TMState, step, static, start, target):
        key = step_key(state, step)
        labels = param.labels(static)

        def loss_fn(p, syn_lr):
            images = place.syn(param.decode(p, static))
            return trajectory.mtt_loss(images, labels, syn_lr, start, target, key,
                                       apply_fn=student.apply_fn, syn_steps=syn_steps,
                                       batch_syn=batch_syn or None, augment=augment, mode=mode)

        loss, (g, g_lr) = jax.value_and_grad(loss_fn, argnums=(0, 1))(state.params, state.syn_lr)
        used = used_instances(g, labels.shape[0])
        updates, opt_state = opt.update(g, state.opt, state.params, used)
        params = optax.apply_updates(state.params, updates)
        lr_updates, lr_state = lr_opt.update(g_lr, state.lr_opt, state.syn_lr)
        syn_lr = trajectory.clip_syn_lr(optax.apply_updates(state.syn_lr, lr_updates), min_syn_lr)
        return (TMState(params, opt_state, state.key, syn_lr, lr_state),
                {"loss": loss, "syn_lr": syn_lr})

    return DistillStep(init, update)


def open_experts(buffer_dir: str, dataset: str, image_shape, *, max_start_epoch: int,
                 expert_epochs: int, stats=None) -> ExpertStore:
    """The expert store at `buffer_dir`, checked against the dataset being distilled, its
    normalisation statistics `stats` = (mean, std) (the experts saw images normalised so; TM
    matches their trajectories on the synthetic set normalised the same way) and the segment
    lengths TM will read (errors name the directory and the limit)."""
    store = ExpertStore(buffer_dir)
    store.check(dataset=dataset, image_shape=list(image_shape))
    if stats is not None and "mean" in store.meta:
        have = (store.meta["mean"], store.meta["std"])
        if not all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(have, stats)):
            raise UserError(f"the experts in {buffer_dir} were trained on images normalised with "
                            f"mean {have[0]} / std {have[1]}, this run normalises with mean "
                            f"{list(stats[0])} / std {list(stats[1])}: set --config.data.stats "
                            "as the experts preset did, or train experts with these statistics")
    if store.meta.get("zca"):
        raise UserError(f"the experts in {buffer_dir} were trained on ZCA-whitened images; "
                        "distilling in ZCA space is not wired into `jaxdiff distill` yet")
    if len(store) == 0:
        raise UserError(f"{buffer_dir} holds no complete expert yet; finish `jaxdiff experts` "
                        "(--resume) first")
    if max_start_epoch + expert_epochs > store.epochs:
        raise UserError(f"loss.tm.max_start_epoch ({max_start_epoch}) + loss.tm.expert_epochs "
                        f"({expert_epochs}) exceeds the {store.epochs} epochs stored in "
                        f"{store.root}; lower one of them")
    return store


def segment_feeder(store: ExpertStore, *, max_start_epoch: int, expert_epochs: int, seed: int,
                   place: Placement) -> Callable[[int], tuple[jax.Array, jax.Array]]:
    """`step -> (start [P], target [P])`, replicated on the mesh: expert e ~ U{experts}, start
    epoch t ~ U[0, max_start_epoch), drawn from the step index (a resumed run draws the same
    segments) and read lazily from the memory-mapped store."""
    key = jax.random.fold_in(jax.random.key(seed), SEGMENT_STREAM)

    def feed(step):
        e, t = trajectory.sample_segment(jax.random.fold_in(key, step), len(store),
                                         max_start_epoch)
        start, target = store.segment(store.completed()[int(e)], int(t), expert_epochs)
        return place.replicate((jnp.asarray(start), jnp.asarray(target)))

    return feed
