"""Discriminator training for DiffRS / Discriminator Guidance (spec `diffrs.md` §3, §9.2).

A discriminator `d(x_vp, tau, labels) -> logit` separates real data (label 1) from samples of the
base sampler (label 0) at every noise level. At the optimum of the BCE loss its logit is the log
density ratio `log q_tau(x) / p_tau(x)` of the noised real and generated distributions, which is
what DiffRS uses as `log L` (and DG differentiates).

Noise (the reference's DG `train.py`): VP-SDE with linear beta (beta_min 0.1, beta_max 20),

    x_vp = alpha(tau) x0 + sqrt(1 - alpha(tau)^2) z,
    tau importance-sampled on [eps, 1] (eps = 1e-5) so that  log sigma_VE(tau)^2  is uniform,
    sigma_VE(tau)^2 = exp(int_0^tau beta) - 1 = expm1(tau^2 (b1 - b0)/2 + tau b0),

i.e. tau has density proportional to beta(tau) / (1 - exp(-int_0^tau beta)). Real and generated
samples draw their own tau and z. Loss: mean binary cross-entropy of the logits (sigmoid inside).

Optimiser (reference): Adam, lr 3e-4, L2 weight decay 1e-7 (`default_optimizer`). Only the head
is trained; a frozen extractor's parameters stay in `frozen` (`models.discriminator.head_filter`).

For samplers, `logit_fn` / `ve_logit` turn the VP-time network into the sampler contract
`disc_logit(x, sigma, cond) -> [N]` in the EDM/VE convention: `x_vp = x / sqrt(1 + sigma^2)`,
`tau = vp_linear_t(sigma)` (sigma = 0 gives tau = 0: the clean sample is scored).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxdiff.diffusion.schedules import broadcast_like, alpha_from_sigma, vp_linear_t
from jaxdiff.models.discriminator import head_filter

# --------------------------------------------------------------------------------------------
# Noise levels and perturbation
# --------------------------------------------------------------------------------------------


def _log_sigma2(tau, beta_min, beta_max):
    tau = jnp.asarray(tau, jnp.float32)
    return jnp.log(jnp.expm1(0.5 * jnp.square(tau) * (beta_max - beta_min) + tau * beta_min))


def sample_vp_time(key, n: int, *, eps=1e-5, beta_min=0.1, beta_max=20.0):
    """`[n]` VP times tau in [eps, 1] with `log sigma_VE(tau)^2` uniform (importance sampling).

    Returns `(tau [n], sigma [n])`, sigma the matching VE noise level.
    """
    lo = _log_sigma2(eps, beta_min, beta_max)
    hi = _log_sigma2(1.0, beta_min, beta_max)
    log_s2 = lo + (hi - lo) * jax.random.uniform(key, (n,), jnp.float32)
    sigma = jnp.exp(0.5 * log_s2)
    tau = vp_linear_t(sigma, beta_min, beta_max)
    return jnp.clip(tau, eps, 1.0), sigma


def perturb_vp(x0, tau, noise, *, beta_min=0.1, beta_max=20.0):
    """`x_vp = alpha(tau) x0 + sqrt(1 - alpha^2) noise` (per-sample `tau: [N]`)."""
    tau = jnp.asarray(tau, jnp.float32)
    log_a = -0.25 * jnp.square(tau) * (beta_max - beta_min) - 0.5 * tau * beta_min
    a = jnp.exp(log_a)
    s = jnp.sqrt(-jnp.expm1(2.0 * log_a))
    return (broadcast_like(a, x0) * x0 + broadcast_like(s, x0) * noise).astype(x0.dtype)


def ve_logit(vp_logit: Callable, *, beta_min=0.1, beta_max=20.0) -> Callable:
    """Wrap `vp_logit(x_vp, tau, cond) -> [N]` as the sampler's `disc_logit(x, sigma, cond)`.

    `x_vp = x / sqrt(1 + sigma^2)`, `tau = vp_linear_t(sigma)` (spec §3), per-sample sigma `[N]`.
    """

    def disc_logit(x, sigma, cond=None):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        x_vp = x * broadcast_like(alpha_from_sigma(sigma), x).astype(x.dtype)
        tau = vp_linear_t(sigma, beta_min, beta_max)
        return jnp.asarray(vp_logit(x_vp, tau, cond), jnp.float32).reshape(x.shape[0])

    return disc_logit


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def discriminator_loss(
    vp_logit: Callable,
    real: jax.Array,
    fake: jax.Array,
    key: jax.Array,
    real_labels: Any = None,
    fake_labels: Any = None,
    *,
    eps=1e-5,
    beta_min=0.1,
    beta_max=20.0,
):
    """BCE of `vp_logit(x_vp, tau, labels) -> [N]` on noised real (target 1) and fake (target 0).

    Args:
      real, fake: `[Nr, ...]`, `[Nf, ...]` clean samples (same trailing shape), data scale [-1, 1].
      key: draws tau and the noise of both halves.

    Returns:
      `(loss, metrics)`: loss the mean BCE over all Nr + Nf samples; metrics `{"loss",
      "accuracy", "logit_real", "logit_fake"}` (scalars).
    """
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real {real.shape} and fake {fake.shape} must share trailing shape")
    kr_t, kr_z, kf_t, kf_z = jax.random.split(key, 4)
    kw = dict(beta_min=beta_min, beta_max=beta_max)
    tr, _ = sample_vp_time(kr_t, real.shape[0], eps=eps, **kw)
    tf, _ = sample_vp_time(kf_t, fake.shape[0], eps=eps, **kw)
    xr = perturb_vp(real, tr, jax.random.normal(kr_z, real.shape, real.dtype), **kw)
    xf = perturb_vp(fake, tf, jax.random.normal(kf_z, fake.shape, fake.dtype), **kw)
    lr = jnp.asarray(vp_logit(xr, tr, real_labels), jnp.float32)
    lf = jnp.asarray(vp_logit(xf, tf, fake_labels), jnp.float32)
    bce = jnp.concatenate([optax.sigmoid_binary_cross_entropy(lr, jnp.ones_like(lr)),
                           optax.sigmoid_binary_cross_entropy(lf, jnp.zeros_like(lf))])
    loss = jnp.mean(bce)
    acc = (jnp.sum(lr > 0) + jnp.sum(lf <= 0)) / (lr.shape[0] + lf.shape[0])
    return loss, {"loss": loss, "accuracy": acc.astype(jnp.float32),
                  "logit_real": jnp.mean(lr), "logit_fake": jnp.mean(lf)}


# --------------------------------------------------------------------------------------------
# NNX functional train step
# --------------------------------------------------------------------------------------------


class DiscTrainState(NamedTuple):
    """Discriminator training state (a pytree; checkpoint it as is).

    Attributes:
      params: trainable head parameters (`head_filter`).
      frozen: everything else: a frozen extractor's parameters, non-Param variables.
      opt_state: optax state of `params`.
      step: int32 scalar.
    """

    params: Any
    frozen: Any
    opt_state: Any
    step: jax.Array


def default_optimizer(lr=3e-4, weight_decay=1e-7) -> optax.GradientTransformation:
    """The reference's `torch.optim.Adam(lr=3e-4, weight_decay=1e-7)` (L2 added to gradients)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))


def init_disc_train_state(model: nnx.Module, tx: optax.GradientTransformation):
    """Split a `Discriminator` into `(graphdef, DiscTrainState)`; only head params train."""
    graphdef, params, frozen = nnx.split(model, head_filter, ...)
    return graphdef, DiscTrainState(params, frozen, tx.init(params), jnp.zeros((), jnp.int32))


def vp_logit_of(graphdef, params, frozen) -> Callable:
    """`vp_logit(x_vp, tau, labels) -> [N]` of a split Discriminator (merge at call time)."""

    def vp_logit(x_vp, tau, labels=None):
        return nnx.merge(graphdef, params, frozen)(x_vp, tau, labels)

    return vp_logit


def logit_fn(graphdef, params, frozen, *, beta_min=0.1, beta_max=20.0) -> Callable:
    """The sampler contract `disc_logit(x, sigma, cond) -> [N]` of a split Discriminator."""
    return ve_logit(vp_logit_of(graphdef, params, frozen), beta_min=beta_min, beta_max=beta_max)


def make_disc_train_step(graphdef, tx: optax.GradientTransformation, *, eps=1e-5,
                         beta_min=0.1, beta_max=20.0) -> Callable:
    """Pure step `step(state, real, fake, key, real_labels=None, fake_labels=None)
    -> (state, metrics)`; jit it (or scan it). Gradients reach the head only."""

    def loss_fn(params, frozen, real, fake, key, rl, fl):
        return discriminator_loss(vp_logit_of(graphdef, params, frozen), real, fake, key, rl, fl,
                                  eps=eps, beta_min=beta_min, beta_max=beta_max)

    def step(state: DiscTrainState, real, fake, key, real_labels=None, fake_labels=None):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.frozen, real, fake, key, real_labels, fake_labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return DiscTrainState(params, state.frozen, opt_state, state.step + 1), metrics

    return step
