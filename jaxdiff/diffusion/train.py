"""EDM denoiser training: the loss (Karras et al. 2022, Eq. 2 and Table 1), a pure jittable
train step in the functional NNX style (split outside, merge inside; DESIGN.md §2) with optax,
and an exponential moving average of the parameters.

EDM loss. For data `x0`, `ln sigma ~ N(P_mean, P_std^2)`, `n ~ N(0, sigma^2 I)`:

    L = E[ lambda(sigma) |D(x0 + n; sigma) - x0|^2 ],  lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2

(sd = sigma_data). With EDM preconditioning this is `E[|F - F*|^2]` with a unit-variance target.
Here the squared error is averaged over elements (EDM sums over them; the factor is the
constant data dimension, so the minimiser is the same).

Typical use (what the pipelines call)::

    model = MLPDenoiser(2, rngs=nnx.Rngs(0))
    graphdef, state = init_train_state(model, tx)
    step = jax.jit(make_train_step(graphdef, tx), donate_argnums=0)
    for i, batch in enumerate(batches):
        state, metrics = step(state, batch, jax.random.fold_in(key, i))
    denoise = nnx_denoiser(graphdef, state.ema, state.rest)   # for `solvers.sample`
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxdiff.data.transforms import to_model_space
from jaxdiff.diffusion.denoiser import edm_denoiser
from jaxdiff.diffusion.schedules import broadcast_like

# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def edm_loss_weight(sigma, sigma_data=0.5):
    """`lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2` (EDM Table 1)."""
    sigma = jnp.asarray(sigma)
    sd2 = jnp.square(jnp.asarray(sigma_data, sigma.dtype))
    return (jnp.square(sigma) + sd2) / (jnp.square(sigma) * sd2)


def sample_training_sigmas(key, n: int, p_mean=-1.2, p_std=1.2, dtype=jnp.float32):
    """`[n]` noise levels with `ln sigma ~ N(P_mean, P_std^2)` (EDM defaults -1.2, 1.2)."""
    return jnp.exp(jax.random.normal(key, (n,), dtype) * p_std + p_mean)


def edm_loss(
    denoise: Callable,
    x0: jax.Array,
    key: jax.Array,
    cond: Any = None,
    *,
    p_mean=-1.2,
    p_std=1.2,
    sigma_data=0.5,
    reduce: bool = True,
):
    """EDM training loss of `denoise(x, sigma, cond)` on clean data `x0: [N, ...]`.

    Args:
      key: draws sigma (log-normal) and the noise.
      p_mean, p_std, sigma_data: may be traced.
      reduce: return the scalar batch mean; else the per-sample losses `[N]`.
    """
    k_sigma, k_noise = jax.random.split(key)
    sigma = sample_training_sigmas(k_sigma, x0.shape[0], p_mean, p_std, x0.dtype)
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype) * broadcast_like(sigma, x0)
    d = denoise(x0 + noise, sigma, cond)
    per_elem = jnp.square(d - x0).reshape(x0.shape[0], -1)
    per_sample = edm_loss_weight(sigma, sigma_data) * jnp.mean(per_elem, axis=1)
    return jnp.mean(per_sample) if reduce else per_sample


# --------------------------------------------------------------------------------------------
# NNX functional state and the train step
# --------------------------------------------------------------------------------------------


class TrainState(NamedTuple):
    """Everything a training loop carries (a pytree: checkpoint it as is).

    Attributes:
      params: trainable `nnx.Param` state.
      rest: the model's other variables (fixed Fourier frequencies, ...), never updated.
      opt_state: optax state of `params`.
      ema: exponential moving average of `params` (use it for sampling).
      step: int32 scalar, number of updates applied.
    """

    params: Any
    rest: Any
    opt_state: Any
    ema: Any
    step: jax.Array


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation):
    """Split `model` once (outside any loop): returns `(graphdef, TrainState)`; EMA = params."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = TrainState(
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        ema=jax.tree.map(jnp.copy, params),
        step=jnp.zeros((), jnp.int32),
    )
    return graphdef, state


def nnx_network(graphdef, params, rest) -> Callable:
    """The raw network `F(x_in, c_noise, cond)` of a split NNX model, merged at call time
    (so it can be used inside jit with `params` traced)."""

    def net(x_in, c_noise, cond):
        return nnx.merge(graphdef, params, rest)(x_in, c_noise, cond)

    return net


def nnx_denoiser(graphdef, params, rest, sigma_data=0.5) -> Callable:
    """EDM denoiser `denoise(x, sigma, cond)` of a split NNX raw network (params e.g. the EMA)."""
    return edm_denoiser(nnx_network(graphdef, params, rest), sigma_data)


def ema_update(ema, params, decay):
    """`ema <- decay * ema + (1 - decay) * params` (decay may be traced)."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


def drop_labels(key, labels, p, null_label):
    """Replace each label by `null_label` with probability p (classifier-free guidance training)."""
    drop = jax.random.bernoulli(key, p, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    *,
    sigma_data=0.5,
    p_mean=-1.2,
    p_std=1.2,
    label_dropout=0.0,
    null_label: int | None = None,
) -> Callable:
    """Pure EDM train step `step(state, x0, key, labels=None, ema_decay=0.999) -> (state, metrics)`.

    Not jitted: wrap it (`jax.jit(step, donate_argnums=0)`) or call it inside a `lax.scan`.
    `ema_decay` is a traced argument (EDM ramps its EMA; a schedule can be computed outside).
    With `label_dropout > 0`, labels are replaced by `null_label` at that rate.

    Returns metrics `{"loss", "grad_norm"}` (scalars).
    """
    if label_dropout and null_label is None:
        raise ValueError("label_dropout > 0 needs null_label (the model's unconditional label)")

    def loss_fn(params, rest, x0, key, labels):
        den = nnx_denoiser(graphdef, params, rest, sigma_data)
        return edm_loss(den, x0, key, labels, p_mean=p_mean, p_std=p_std, sigma_data=sigma_data)

    def step(state: TrainState, x0, key, labels=None, ema_decay=0.999):
        k_loss, k_drop = jax.random.split(key)
        if labels is not None and label_dropout:
            labels = drop_labels(k_drop, labels, label_dropout, null_label)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, state.rest, x0, k_loss, labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema, params, jnp.asarray(ema_decay, jnp.float32))
        new = TrainState(params, state.rest, opt_state, ema, state.step + 1)
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return step


def train_loop(step: Callable, state: TrainState, data: jax.Array, key, *, num_steps: int,
               batch_size: int, ema_decay=0.999, labels: jax.Array | None = None):
    """Run `num_steps` updates on minibatches drawn with replacement from an in-memory dataset,
    as one `lax.scan` (no host round-trips). The update with counter `state.step = s` uses
    `fold_in(key, s)`, so a resumed run continues the same random stream.

    Args:
      step: from `make_train_step`.
      data: `[M, ...]` training set (device-resident); labels `[M]` optional.
    Returns:
      `(state, metrics)` with per-step metrics stacked (`[num_steps]` each).
    """

    def body(state, _):
        k = jax.random.fold_in(key, state.step)
        k_idx, k_step = jax.random.split(k)
        idx = jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])
        lab = None if labels is None else labels[idx]
        return step(state, data[idx], k_step, lab, ema_decay)

    return jax.lax.scan(body, state, None, length=num_steps)


# --------------------------------------------------------------------------------------------
# The data-parallel loop step of `jaxdiff train-denoiser`
# --------------------------------------------------------------------------------------------


def denoiser_optimizer(lr: float, warmup_steps: int = 0,
                       grad_clip: float = 0.0) -> optax.GradientTransformation:
    """Adam with a linear warm-up to `lr` over `warmup_steps`, after global-norm clipping at
    `grad_clip` (0 = no clipping)."""
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    sched = optax.linear_schedule(0.0, lr, warmup_steps) if warmup_steps > 0 else lr
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    return optax.chain(*parts, optax.adam(sched))


def ema_decay_at(step, decay, warmup: bool):
    """EMA decay of update `step` (0-based): `min(decay, (1 + s) / (10 + s))` with warm-up (so
    short runs are not dominated by the initial weights), else `decay`. Traced."""
    decay = jnp.asarray(decay, jnp.float32)
    if not warmup:
        return decay
    s = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + s) / (10.0 + s))


class LoopState(NamedTuple):
    """`jaxdiff train-denoiser`'s loop state (field names as the checkpoints store them):
    `train` (a `TrainState`), `key` (uint32 key data of the run), `loss_sum` (losses since the
    last log step)."""

    train: TrainState
    key: jax.Array
    loss_sum: jax.Array


def batch_rows(loop_key: jax.Array, batch_size: int, num_images: int):
    """`rows(step) -> [batch_size]` int32: the training-set rows of step `step` of
    `make_loop_step`, uniform with replacement from `split(fold_in(loop_key, step))[0]`."""
    def rows(step):
        k_idx = jax.random.split(jax.random.fold_in(loop_key, step))[0]
        return jax.random.randint(k_idx, (batch_size,), 0, num_images)
    return rows


def make_loop_step(graphdef, tx: optax.GradientTransformation, *, batch_size: int,
                   sigma_data: float, p_mean: float, p_std: float, label_dropout: float,
                   null_label: int | None, ema_decay: float, ema_warmup: bool, log_every: int,
                   batch_sharding=None) -> Callable:
    """`step(state: LoopState, step, images_u8 [B, H, W, C], labels [B]) -> (state, metrics)`.

    Step s uses `fold_in(key, s)`: its batch is the rows `batch_rows(key, B, M)(s)` of the
    training set (drawn with replacement, as `train_loop`; read on the host by
    `feeding.HostBatches`), then the EDM sigma/noise and label-dropout keys; images go to model
    space on device. With `batch_sharding` the batch is the only sharded operand: each device
    runs its slice of the forward and backward pass and XLA all-reduces the gradients of the
    replicated parameters.
    Metric `loss_avg` is the mean loss since the last log step (`loss` is this step's, noisy).
    `null_label` None: unconditional (labels ignored).
    """
    conditional = null_label is not None
    base = make_train_step(graphdef, tx, sigma_data=sigma_data, p_mean=p_mean, p_std=p_std,
                           label_dropout=label_dropout if conditional else 0.0,
                           null_label=null_label)
    log_every = max(int(log_every), 1)
    constrain = ((lambda x: jax.lax.with_sharding_constraint(x, batch_sharding))
                 if batch_sharding is not None else (lambda x: x))

    def step(state: LoopState, step_idx, images, labels):
        if images.shape[0] != batch_size:
            raise ValueError(f"a batch of {images.shape[0]} images; this step trains on "
                             f"batch_size={batch_size}")
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), step_idx)
        k_step = jax.random.split(key)[1]  # the first key drew the batch (`batch_rows`)
        x0 = constrain(to_model_space(images))
        lab = constrain(labels) if conditional else None
        decay = ema_decay_at(step_idx, ema_decay, ema_warmup)
        train, metrics = base(state.train, x0, k_step, lab, decay)
        phase = step_idx % log_every
        loss_sum = jnp.where(phase == 0, 0.0, state.loss_sum) + metrics["loss"]
        return LoopState(train, state.key, loss_sum), {
            **metrics, "loss_avg": loss_sum / (phase + 1).astype(jnp.float32),
            "ema_decay": decay}

    return step
