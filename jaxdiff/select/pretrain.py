"""The selection model: pre-training on the candidate pool and its features (lcmat.md §3 Step 0).

LCMat-S and the baselines select from the features of a classifier trained on the whole
un-augmented training split: SGD with momentum (optionally Nesterov) and coupled weight decay at
a constant learning rate, a fresh permutation every epoch (the partial last batch masked,
`jaxdiff.batching`). `make_pretrain_step` is one jitted step whose batch (`pretrain_rows`, read
on the host) and randomness are a function of the step index only, so a driver can checkpoint
and resume it exactly; its state
also records, for every epoch, whether each sample was classified correctly when presented
(`correct [E, N]`), the events `forgetting` counts.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiff.batching import epoch_batches
from jaxdiff.data.transforms import normalize_with
from jaxdiff.distributed import to_host
from jaxdiff.models.functional import apply, masked_cross_entropy, with_mode
from jaxdiff.sharding import batch_sharding, put


def pretrain_optimizer(lr: float, momentum: float, nesterov: bool,
                       weight_decay: float) -> optax.GradientTransformation:
    """`torch.optim.SGD(lr, momentum, nesterov, weight_decay)`: decay added to the gradient
    before the momentum trace; momentum 0 = plain SGD."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(lr, momentum=momentum or None, nesterov=bool(nesterov)))


def init_pretrain_state(make_model: Callable, seed: int, tx, num_epochs: int, n: int):
    """`(graphdef, state)`: the model of `seed` in train mode, split, and the step's state
    `{"params", "rest", "opt", "key", "correct" [E, N] int8}`."""
    model = make_model(nnx.Rngs(jax.random.key(seed)))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = {"params": params, "rest": rest, "opt": tx.init(params),
             "key": jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 7)),
             "correct": jnp.zeros((num_epochs, n), jnp.int8)}
    return graphdef, state


def pretrain_rows(state: dict, n: int, batch: int, steps_per_epoch: int):
    """`rows(step) -> [batch]` int32: the pool rows of step `step` of `make_pretrain_step`,
    batch `step % steps_per_epoch` of `epoch_batches(fold_in(key, epoch), n, batch)` (the
    padding of the last batch repeats row 0); for `feeding.HostBatches`."""
    key = jax.random.wrap_key_data(jnp.asarray(to_host(state["key"])))

    def rows(step):
        epoch, s = step // steps_per_epoch, step % steps_per_epoch
        return epoch_batches(jax.random.fold_in(key, epoch), n, batch)[0][s]
    return rows


def make_pretrain_step(graphdef, tx, n: int, batch: int, steps_per_epoch: int,
                       mesh: jax.sharding.Mesh | None = None):
    """Jitted `(state, step, images_u8 [b, H, W, C], labels [b], rows [b], mean, std) ->
    (state, metrics)`: step `step` on its batch, the pool rows `rows = pretrain_rows(...)(step)`
    and their images and labels (read on the host, `feeding.HostBatches`).

    The padding of the last batch of an epoch has weight 0 and is left out of `correct`. With a
    `mesh` (its size dividing `batch`), the batch is split over its devices (data parallel; the
    state replicated on it): the same step, BatchNorm statistics over the whole batch.
    """
    split = None if mesh is None else batch_sharding(mesh)
    # the padding weights depend on the step only (the last batch's tail), not on the draw
    weights = epoch_batches(jax.random.key(0), n, batch)[1]                # [S, b]

    def step(state, step_idx, images, labels, idx, mean, std):
        epoch = step_idx // steps_per_epoch
        w = weights[step_idx % steps_per_epoch]
        if split is not None:
            images, labels, idx, w = (jax.lax.with_sharding_constraint(a, split)
                                      for a in (images, labels, idx, w))
        x = normalize_with(images, mean, std)
        y = labels

        def loss_fn(params):
            logits, (_, rest) = apply(graphdef, (params, state["rest"]), x)
            return masked_cross_entropy(logits, y, w), (rest, logits)

        (loss, (rest, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        hit = (jnp.argmax(logits, -1) == y).astype(jnp.int8)
        # padding rows scatter to index n, which mode="drop" discards
        correct = state["correct"].at[epoch, jnp.where(w > 0, idx, n)].set(hit, mode="drop")
        acc = jnp.sum(hit * w) / jnp.sum(w)
        return ({**state, "params": params, "rest": rest, "opt": opt, "correct": correct},
                {"loss": loss, "train_accuracy": acc})

    return jax.jit(step, donate_argnums=0)


def extract_features(graphdef, params, rest, images: np.ndarray, mean, std,
                     batch_size: int = 1000, mesh: jax.sharding.Mesh | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode penultimate embeddings `[N, D]` and logits `[N, C]` (float32, host) of uint8
    `images [N, H, W, C]`, in fixed-size batches (the last one padded: one compiled shape).
    With a `mesh` every batch is split over its devices (`params`/`rest` must be replicated
    on it; the batch size is rounded up to a multiple of the mesh size)."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    if mesh is not None:
        batch_size = -(-batch_size // mesh.size) * mesh.size
        split = batch_sharding(mesh)

    @jax.jit
    def feats(params, rest, xb):
        model = with_mode(nnx.merge(graphdef, params, rest, copy=True), train=False)
        emb = model.embed(normalize_with(xb, mean, std))
        return emb, model.classifier(emb)

    n = len(images)
    embs, logits = [], []
    for s in range(0, n, batch_size):
        xb = images[s:s + batch_size]
        if len(xb) < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - len(xb), *xb.shape[1:]), xb.dtype)])
        e, z = feats(params, rest, jnp.asarray(xb) if mesh is None else put(xb, split))
        embs.append(e)
        logits.append(z)
    # One gather at the end: the batches are dispatched without waiting for the host.
    embs, logits = to_host((embs, logits))
    return (np.concatenate(embs)[:n].astype(np.float32),
            np.concatenate(logits)[:n].astype(np.float32))
