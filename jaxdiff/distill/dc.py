"""DC/DSA: gradient matching (Zhao, Mopuri & Bilen, ICLR 2021; Zhao & Bilen, ICML 2021;
dd-common.md §5) as a distillation step, and LCMat-C on the same machinery.

One iteration (dd-common.md §5.3) draws a fresh network θ and runs `outer` rounds; round l:

    L(S) = Σ_c D( ∇_θ CE(θ; A(x^syn_c), c), ∇_θ CE(θ; A(x^real_c), c) )      (D: §5.4, "ours")
    S ← optimiser step on ∇_S L;   then, except after the last round, train θ for `inner`
    epochs of SGD (lr `lr_net`, batch `batch_train`, per-sample DSA) on the current synthetic set.

`match_loss` has `losses.gradient_matching_loss`'s signature; LCMat-C passes its
curvature-matching loss (`distill.curvature.lcmat_loss`: matching at θ and at θ + ε*) and reuses
everything else.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxdiff.batching import epoch_batches
from jaxdiff.data.transforms import normalize_with
from jaxdiff.distill import losses
from jaxdiff.distill.optim import InstanceOptimizer
from jaxdiff.distill.params import Parameterisation
from jaxdiff.distill.placement import Placement
from jaxdiff.distill.step import (DistillState, DistillStep, check_real_shape, fresh_network,
                                  key_data, step_key)
from jaxdiff.models.functional import apply, masked_cross_entropy


def train_network(net: Callable, theta, images: jax.Array, labels: jax.Array, key: jax.Array, *,
                  epochs: int, batch_size: int, lr: float, augment: Callable | None):
    """`epochs` epochs of plain SGD of `net(theta, x) -> logits` on `images [N, H, W, Ch]`,
    `labels [N]` (dd-common.md §5.3 inner loop): epoch e shuffles with `fold_in(key, e)`, batch s
    of it augments with `fold_in(fold_in(key, e), s + 1)`; the partial last batch is masked
    (`jaxdiff.batching`). Returns the trained `theta`."""
    n = images.shape[0]

    def epoch(theta, e):
        ke = jax.random.fold_in(key, e)
        idx, wts = epoch_batches(ke, n, batch_size)

        def sgd(theta, s):
            x = images[idx[s]]
            if augment is not None:
                x = augment(jax.random.fold_in(ke, s + 1), x)
            g = jax.grad(lambda t: masked_cross_entropy(net(t, x), labels[idx[s]], wts[s]))(theta)
            return jax.tree.map(lambda t, gi: t - lr * gi, theta, g), None

        return jax.lax.scan(sgd, theta, jnp.arange(idx.shape[0]))[0], None

    return jax.lax.scan(epoch, theta, jnp.arange(epochs))[0]


def make_dc_step(param: Parameterisation, opt: InstanceOptimizer, make_model: Callable,
                 augment: Callable | None, per_sample_augment: Callable | None, *,
                 batch_real: int, num_classes: int, per_class: int, outer: int, inner: int,
                 metric: str, lr_net: float, batch_train: int, place: Placement,
                 match_loss: Callable = losses.gradient_matching_loss) -> DistillStep:
    """The DC/DSA (or LCMat-C) step.

    Args:
      param, opt, make_model, place: as `dm.make_dm_step`.
      augment: siamese DSA for the matching loss; per_sample_augment: per-image DSA for the
        inner network training (None: no augmentation).
      batch_real, num_classes, per_class: as `dm.make_dm_step`.
      outer, inner: the loop counts (`losses.dc_loops(ipc)` by default).
      metric: gradient distance, "ours" | "mse" | "cos".
      lr_net, batch_train: the inner SGD's learning rate and batch size.
      match_loss: `losses.gradient_matching_loss` or `curvature.lcmat_loss` (partial with rho,
        weight, perturbation).

    `update(state, step, static, mean, std, real [outer, C, batch_real, H, W, Ch] uint8)`, round
    o matching against `real[o]`, drawn from `real_keys(step_key)[o]`; metric "loss" is the mean
    over rounds.
    """

    def init(params, key):
        return DistillState(params, opt.init(params), key_data(key))

    def round_keys(k, ol):  # (real, augmentation, inner training) keys of round `ol`
        return jax.random.split(jax.random.fold_in(jax.random.split(k)[1], ol), 3)

    def real_keys(k):
        return jax.vmap(lambda ol: round_keys(k, ol)[0])(jnp.arange(outer))

    def update(state: DistillState, step, static, mean, std, real):
        check_real_shape(real, outer, num_classes, batch_real)
        k_step = step_key(state, step)
        k_net = jax.random.split(k_step)[0]
        graphdef, net_params, rest = fresh_network(make_model, k_net)
        labels = param.labels(static)
        net = lambda p, x: apply(graphdef, (p, rest), x)[0]  # noqa: E731

        def round_(carry, xs):
            ol, real_u8 = xs
            params, opt_state, theta, _ = carry
            _, k_aug, k_train = round_keys(k_step, ol)
            real = place.real(normalize_with(real_u8, mean, std))

            def loss_fn(p):
                syn = place.syn(param.decode(p, static)).reshape(num_classes, per_class,
                                                                 *real.shape[2:])
                return match_loss(net, theta, syn, real, k_aug, augment, metric)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            syn_all = jax.lax.stop_gradient(param.decode(params, static))
            theta = jax.lax.cond(
                ol < outer - 1,
                lambda: train_network(net, theta, syn_all, labels, k_train, epochs=inner,
                                      batch_size=batch_train, lr=lr_net,
                                      augment=per_sample_augment),
                lambda: theta)
            return (params, opt_state, theta, loss), loss

        (params, opt_state, _, _), round_losses = jax.lax.scan(
            round_, (state.params, state.opt, net_params, jnp.float32(0)),
            (jnp.arange(outer), real))
        return state._replace(params=params, opt=opt_state), {"loss": jnp.mean(round_losses)}

    return DistillStep(init, update, real_keys)
