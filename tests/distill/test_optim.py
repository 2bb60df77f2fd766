"""Per-instance (masked) optimisers: PyTorch's skip-unused-parameters semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.distill.optim import per_instance


def _params(key):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (4, 3, 2)), "b": jax.random.normal(k2, (4, 2))}


def test_all_used_equals_plain_adam(key):
    params = _params(key)
    tx = optax.adam(1e-2)
    opt = per_instance(tx)
    s_masked, s_plain = opt.init(params), tx.init(params)
    p_masked, p_plain = params, params
    for t in range(5):
        g = jax.tree.map(lambda x: jnp.sin(x * (t + 1)), p_masked)
        u, s_masked = opt.update(g, s_masked, p_masked, jnp.ones(4, bool))
        p_masked = optax.apply_updates(p_masked, u)
        g2 = jax.tree.map(lambda x: jnp.sin(x * (t + 1)), p_plain)
        u2, s_plain = tx.update(g2, s_plain, p_plain)
        p_plain = optax.apply_updates(p_plain, u2)
    for a, b in zip(jax.tree.leaves(p_masked), jax.tree.leaves(p_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_unused_instances_are_bit_identical_and_counts_do_not_advance(key):
    params = _params(key)
    opt = per_instance(optax.adam(1e-2))
    state = opt.init(params)
    used_pattern = [np.array([1, 0, 1, 0], bool), np.array([1, 0, 0, 1], bool), np.array([1, 0, 1, 1], bool)]
    p = params
    for used in used_pattern:
        g = jax.tree.map(jnp.cos, p)
        u, new_state = opt.update(g, state, p, jnp.asarray(used))
        new_p = optax.apply_updates(p, u)
        for leaf_new, leaf_old in zip(jax.tree.leaves(new_p), jax.tree.leaves(p)):
            np.testing.assert_array_equal(np.asarray(leaf_new)[~used], np.asarray(leaf_old)[~used])
            assert np.all(np.asarray(leaf_new)[used] != np.asarray(leaf_old)[used])
        p, state = new_p, new_state
    count = np.asarray(state[0].count)
    np.testing.assert_array_equal(count, [3, 0, 2, 2])
    # Instance 3 took 2 steps: its first step used bias correction of step 1 (Adam's first step
    # moves every coordinate by ~lr), which only a per-instance count gives.
    np.testing.assert_array_equal(np.asarray(p["b"])[1], np.asarray(params["b"])[1])
