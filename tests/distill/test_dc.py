"""The DC step (`jaxdiff.distill.dc`): the inner network training equals a plain Python loop of
masked SGD over the documented batches; with one outer round the update is one gradient-matching
step on the synthetic set."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import models, sharding
from jaxdiff.batching import epoch_batches
from jaxdiff.distill import losses
from jaxdiff.distill.dc import make_dc_step, train_network
from jaxdiff.distill.optim import make_optimizer
from jaxdiff.distill.params import get_parameterisation
from jaxdiff.distill.placement import Placement
from jaxdiff.distill.real_pool import make_real_pool, real_batches, sample_real
from jaxdiff.distill.step import fresh_network


def _linear(theta, x):
    return x.reshape(x.shape[0], -1) @ theta["w"] + theta["b"]


def test_train_network_equals_a_python_loop(key):
    kx, ky, kt = jax.random.split(key, 3)
    x = jax.random.normal(kx, (7, 2, 2, 1))
    y = jax.random.randint(ky, (7,), 0, 3)
    theta = {"w": jax.random.normal(kt, (4, 3)) * 0.1, "b": jnp.zeros(3)}
    k = jax.random.key(11)
    out = jax.jit(lambda t: train_network(_linear, t, x, y, k, epochs=2, batch_size=3, lr=0.5,
                                          augment=None))(theta)
    ref = theta
    for e in range(2):
        idx, w = epoch_batches(jax.random.fold_in(k, e), 7, 3)   # 3 batches, last one padded
        for s in range(3):
            def ce(t):
                logp = jax.nn.log_softmax(_linear(t, x[idx[s]]))
                per = -jnp.take_along_axis(logp, y[idx[s]][:, None], 1)[:, 0]
                return jnp.sum(per * w[s]) / jnp.sum(w[s])
            g = jax.grad(ce)(ref)
            ref = jax.tree.map(lambda a, b: a - 0.5 * b, ref, g)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_round_is_one_gradient_matching_update(key):
    make = functools.partial(models.ConvNet, in_channels=1, num_classes=3, image_size=8, depth=1,
                             width=4)
    rng = np.random.default_rng(1)
    pool = make_real_pool(rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8),
                          (np.arange(30) % 3).astype(np.int32), 3, (0.4,), (0.3,))
    param = get_parameterisation("pixel", ipc=1)
    params, static = param.init(key, pool.normalised())
    step = make_dc_step(param, make_optimizer("sgd", 0.1, groups=("images",)), make, None, None,
                        batch_real=4, num_classes=3, per_class=1, outer=1, inner=5,
                        metric="ours", lr_net=0.01, batch_train=8,
                        place=Placement(sharding.data_mesh(1)))
    state = step.init(params, jax.random.key(2))
    feed = real_batches(pool, 4, jax.random.key(2), step.real_keys,
                       Placement(sharding.data_mesh(1)).real_batches((1, 3, 4, 8, 8, 1)))
    new, metrics = jax.jit(step.update)(state, np.int32(4), static, pool.mean, pool.std,
                                        *feed(4))
    k_net, k_loop = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(state.key), 4))
    graphdef, theta, rest = fresh_network(make, k_net)
    k_real, k_aug, _ = jax.random.split(jax.random.fold_in(k_loop, 0), 3)
    real = sample_real(jax.numpy.asarray(pool.class_images()), pool.mean, pool.std, k_real, 4)
    net = lambda p, x: models.apply(graphdef, (p, rest), x)[0]  # noqa: E731

    def loss(p):
        return losses.gradient_matching_loss(net, theta, p["images"].reshape(3, 1, 8, 8, 1),
                                             real, k_aug, None, "ours")

    value, grad = jax.value_and_grad(loss)(state.params)
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
    np.testing.assert_allclose(new.params["images"], state.params["images"] - 0.1 * grad["images"],
                               rtol=1e-4, atol=1e-6)
