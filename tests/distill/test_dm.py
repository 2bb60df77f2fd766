"""The DM step (`jaxdiff.distill.dm`): one update is the documented computation — a fresh
network from the step's key, DM loss on the decoded set against the pool's draw, one optax
step — and is a pure function of (state, step)."""

import functools

import jax
import numpy as np

from jaxdiff import models, sharding
from jaxdiff.distill import losses
from jaxdiff.distill.dm import make_dm_step
from jaxdiff.distill.optim import make_optimizer
from jaxdiff.distill.params import get_parameterisation
from jaxdiff.distill.placement import Placement
from jaxdiff.distill.real_pool import make_real_pool, real_batches, sample_real
from jaxdiff.distill.step import fresh_network

MAKE = functools.partial(models.ConvNet, in_channels=1, num_classes=3, image_size=8, depth=1,
                         width=4)


def _setup(key, lr=0.5):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8)
    labels = (np.arange(30) % 3).astype(np.int32)
    pool = make_real_pool(images, labels, 3, (0.4,), (0.3,))
    param = get_parameterisation("pixel", ipc=2)
    params, static = param.init(key, pool.normalised())
    opt = make_optimizer("sgd", lr, groups=("images",))
    place = Placement(sharding.data_mesh(1))
    step = make_dm_step(param, opt, MAKE, None, batch_real=4, num_classes=3, per_class=2,
                        place=place)
    feed = real_batches(pool, 4, jax.random.key(5), step.real_keys,
                       place.real_batches((1, 3, 4, 8, 8, 1)))
    args = lambda i: (static, pool.mean, pool.std, *feed(i))  # noqa: E731
    return step, step.init(params, jax.random.key(5)), args, pool


def test_update_is_the_documented_computation(key):
    step, state, args, pool = _setup(key)
    new, metrics = jax.jit(step.update)(state, np.int32(3), *args(3))
    k = jax.random.fold_in(jax.random.wrap_key_data(state.key), 3)
    k_net, k_real, k_aug = jax.random.split(k, 3)
    graphdef, p, rest = fresh_network(MAKE, k_net)
    embed = lambda x: models.apply(graphdef, (p, rest), x, method="embed")[0]  # noqa: E731
    real = sample_real(jax.numpy.asarray(pool.class_images()), pool.mean, pool.std, k_real, 4)

    def loss(params):
        syn = params["images"].reshape(3, 2, 8, 8, 1)
        return losses.distribution_matching_loss(embed, syn, real, k_aug, None)

    value, grad = jax.value_and_grad(loss)(state.params)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
    np.testing.assert_allclose(new.params["images"], state.params["images"] - 0.5 * grad["images"],
                               rtol=1e-5, atol=1e-6)
    assert np.array_equal(new.key, state.key)                    # the loop key never changes


def test_update_depends_only_on_state_and_step(key):
    step, state, args, _ = _setup(key)
    run = jax.jit(step.update)
    a, _ = run(state, np.int32(1), *args(1))
    b, _ = run(state, np.int32(1), *args(1))
    c, _ = run(state, np.int32(2), *args(2))                        # another fresh network
    np.testing.assert_array_equal(a.params["images"], b.params["images"])
    assert not np.allclose(a.params["images"], c.params["images"])
