"""The selection model's pre-training step (`jaxdiff.select.pretrain`): one epoch equals plain
SGD over the documented batches with a masked last batch, and `correct` records exactly the real
rows' hits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import models
from jaxdiff.batching import epoch_batches
from jaxdiff.models.functional import apply, masked_cross_entropy
from jaxdiff.select.pretrain import (init_pretrain_state, make_pretrain_step, pretrain_optimizer,
                                     pretrain_rows)


def test_one_epoch_equals_plain_masked_sgd():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 4, 4, 1), dtype=np.uint8)
    labels = jnp.asarray(rng.integers(0, 3, 10), jnp.int32)
    make = functools.partial(models.MLP, in_features=16, out_features=3, hidden=(5,))
    tx = pretrain_optimizer(0.1, 0.0, False, 0.0)                       # plain SGD
    graphdef, state = init_pretrain_state(make, 3, tx, 1, 10)
    step = make_pretrain_step(graphdef, tx, 10, 4, 3)                   # 3 batches: 4, 4, 2+2 pad
    mean, std = jnp.asarray([0.5]), jnp.asarray([0.25])
    x = (jnp.asarray(images, jnp.float32) / 255.0 - mean) / std
    # the step donates its state: keep copies for the reference
    params, rest = jax.tree.map(jnp.copy, (state["params"], state["rest"]))
    idx, w = epoch_batches(jax.random.fold_in(jax.random.wrap_key_data(state["key"]), 0), 10, 4)
    rows = pretrain_rows(state, 10, 4, 3)
    hits = np.full(10, -1)
    for s in range(3):
        r = np.asarray(rows(s))
        np.testing.assert_array_equal(r, idx[s])        # the documented batch
        state, m = step(state, np.int32(s), images[r], labels[r], jnp.asarray(r), mean, std)

        def loss(p):
            return masked_cross_entropy(apply(graphdef, (p, rest), x[idx[s]])[0], labels[idx[s]],
                                        w[s])
        logits = apply(graphdef, (params, rest), x[idx[s]])[0]
        real = np.asarray(w[s]) > 0
        hits[np.asarray(idx[s])[real]] = np.asarray(jnp.argmax(logits, -1) == labels[idx[s]])[real]
        np.testing.assert_allclose(m["loss"], loss(params), rtol=1e-6)
        params = optax.apply_updates(params, jax.tree.map(lambda g: -0.1 * g,
                                                          jax.grad(loss)(params)))
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(state["correct"][0]), hits)   # every row once
