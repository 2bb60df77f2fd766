"""The train-on-X / test-on-real protocol (dd-common.md §11) against a plain-Python reference of
the same semantics, plus run independence, BatchNorm, runs split over 1, 2, 3 or 8 devices, and
a 1- vs 8-device data-parallel step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff import models, sharding
from jaxdiff.distill.evaluate import decay_epoch, run_layout, train_and_test
from jaxdiff.random import sample_keys


def _toy_data(n=20, n_test=30, classes=3, seed=0):
    rs = np.random.RandomState(seed)
    centers = rs.randn(classes, 4, 4, 1) * 2
    y = np.arange(n) % classes
    yt = np.arange(n_test) % classes
    x = (centers[y] + rs.randn(n, 4, 4, 1)).astype(np.float32)
    xt = (centers[yt] + rs.randn(n_test, 4, 4, 1)).astype(np.float32)
    return x, y, xt, yt


_MLP = functools.partial(models.MLP, in_features=16, out_features=3, hidden=(8,))


def _reference_run(key, x, y, xt, yt, *, epochs, lr, batch, momentum=0.9, wd=5e-4, weights=None):
    """Straightforward eager loop: torch SGD(momentum, weight_decay) semantics, E + 1 epochs,
    lr x 0.1 and fresh momentum from epoch E//2 + 2, masked (weighted) smaller last batch."""
    init_key, data_key = jax.random.split(key)
    graphdef, params = nnx.split(_MLP(nnx.Rngs(init_key)))
    n = len(y)
    steps = -(-n // batch)
    vel = jax.tree.map(jnp.zeros_like, params)
    phase1 = decay_epoch(epochs)
    weights = np.ones(n, np.float32) if weights is None else weights
    for e in range(epochs + 1):
        if e == phase1:
            vel = jax.tree.map(jnp.zeros_like, vel)
        lr_e = lr * (0.1 if e >= phase1 else 1.0)
        ekey = jax.random.fold_in(data_key, e)
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(ekey, 0), n))
        losses = []
        for s in range(steps):
            idx = perm[s * batch:(s + 1) * batch]

            def loss(p):
                logits = nnx.merge(graphdef, p)(x[idx])
                ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx])
                return jnp.sum(weights[idx] * ce) / jnp.sum(weights[idx])

            l, g = jax.value_and_grad(loss)(params)
            losses.append(l)
            g = jax.tree.map(lambda gi, p: gi + wd * p, g, params)
            vel = jax.tree.map(lambda v, gi: momentum * v + gi, vel, g)
            params = jax.tree.map(lambda p, v: p - lr_e * v, params, vel)
    acc = np.mean(np.argmax(np.asarray(nnx.merge(graphdef, params)(xt)), -1) == yt)
    # The protocol reports the mean over the (masked) batches of the last epoch.
    return acc, float(np.mean(losses))


@pytest.mark.parametrize("weighted", [False, True])
def test_protocol_matches_python_reference(key, weighted):
    x, y, xt, yt = _toy_data()
    epochs, lr, batch = 6, 0.05, 8          # 20 images: batches 8, 8, 4 (masked last batch)
    w = np.random.RandomState(1).uniform(0.2, 3.0, len(y)).astype(np.float32) if weighted else None
    r = train_and_test(key, x, y, xt, yt, make_model=_MLP, num_runs=2, epochs=epochs, lr=lr,
                       batch_size=batch, test_batch_size=7, train_weights=w)
    for i, run_key in enumerate(sample_keys(key, 2)):
        acc, last_loss = _reference_run(run_key, x, y, xt, yt, epochs=epochs, lr=lr, batch=batch,
                                        weights=w)
        assert r.accuracy[i] == pytest.approx(acc, abs=1e-6)
        # masked mean of the last batch vs its plain mean: the batch means are the same numbers
        assert r.train_loss[i] == pytest.approx(last_loss, rel=1e-4)


def test_runs_do_not_depend_on_num_runs_and_lr_is_traced(key):
    x, y, xt, yt = _toy_data()
    kw = dict(make_model=_MLP, epochs=4, batch_size=8)
    one = train_and_test(key, x, y, xt, yt, num_runs=1, lr=0.05, **kw)
    three = train_and_test(key, x, y, xt, yt, num_runs=3, lr=0.05, **kw)
    np.testing.assert_allclose(one.train_loss[0], three.train_loss[0], rtol=1e-6)
    other = train_and_test(key, x, y, xt, yt, num_runs=3, lr=0.2, eval_epochs=(1, 5), **kw)
    assert not np.allclose(other.train_loss, three.train_loss)
    assert other.accuracy_at.shape == (3, 2) and other.eval_epochs == (1, 5)
    np.testing.assert_allclose(other.accuracy_at[:, 1], other.accuracy)   # epoch E+1 == final


class _Dev:
    def __init__(self, process_index, i):
        self.process_index, self.id = process_index, i

    def __repr__(self):
        return f"p{self.process_index}d{self.id}"


@pytest.mark.parametrize("runs, procs, per_proc, used, per_device", [
    (1, 1, 8, 1, 1), (5, 1, 8, 5, 1), (8, 1, 8, 8, 1), (10, 1, 8, 5, 2), (17, 1, 8, 6, 3),
    (5, 2, 4, 6, 1), (1, 2, 4, 2, 1), (10, 2, 4, 6, 2), (8, 2, 4, 8, 1), (3, 1, 1, 1, 3)])
def test_run_layout_fewest_rounds_then_fewest_devices(runs, procs, per_proc, used, per_device):
    devices = [_Dev(p, p * per_proc + i) for p in range(procs) for i in range(per_proc)]
    chosen, k = run_layout(runs, devices)
    assert (len(chosen), k) == (used, per_device)
    assert k == -(-runs // (procs * per_proc))             # no device trains more than needed
    assert len(chosen) * k >= runs > (len(chosen) - procs) * k  # and less padding is impossible
    counts = [sum(d.process_index == p for d in chosen) for p in range(procs)]
    assert counts == [used // procs] * procs                # every process holds a share
    assert len(set(map(id, chosen))) == len(chosen)


def test_runs_split_over_devices_match_one_device(key):
    """4 runs on 1 device (vmap 4), 2 devices (2 x 2), 3 devices (2 x 2, two padding runs) and
    8 devices (4 x 1): the same networks, up to XLA's float arithmetic for another vmap size."""
    x, y, xt, yt = _toy_data(n=24)
    make = functools.partial(models.ConvNet, in_channels=1, num_classes=3, image_size=4, depth=1,
                             width=8)
    kw = dict(make_model=make, num_runs=4, epochs=3, lr=0.05, batch_size=8)
    one = train_and_test(key, x, y, xt, yt, devices=jax.devices()[:1], **kw)
    for n in (2, 3, 8):
        split = train_and_test(key, x, y, xt, yt, devices=jax.devices()[:n], **kw)
        np.testing.assert_allclose(split.train_loss, one.train_loss, rtol=1e-5, err_msg=str(n))
        np.testing.assert_array_equal(split.accuracy, one.accuracy)
    assert len(set(one.train_loss.tolist())) == 4  # four different networks


def test_batchnorm_network_trains_and_separable_data_is_learned(key):
    x, y, xt, yt = _toy_data(n=60, n_test=60)
    make = functools.partial(models.ConvNet, in_channels=1, num_classes=3, image_size=4, depth=1,
                             width=8, norm="batchnorm")
    r = train_and_test(key, x, y, xt, yt, make_model=make, num_runs=2, epochs=30, lr=0.05,
                       batch_size=16)
    assert r.mean > 0.9, r.summary()


def test_bad_inputs(key):
    x, y, xt, yt = _toy_data()
    kw = dict(make_model=_MLP, epochs=2, num_runs=1)
    with pytest.raises(ValueError, match="labels"):
        train_and_test(key, x, y[:5], xt, yt, **kw)
    with pytest.raises(ValueError, match="differ in shape"):
        train_and_test(key, x, y, xt[:, :2], yt, **kw)
    with pytest.raises(ValueError, match="eval_epochs"):
        train_and_test(key, x, y, xt, yt, eval_epochs=(9,), **kw)
    with pytest.raises(ValueError, match="train_weights"):
        train_and_test(key, x, y, xt, yt, train_weights=np.zeros(len(y)), **kw)
    with pytest.raises(ValueError, match="empty"):
        train_and_test(key, x[:0], y[:0], xt, yt, **kw)
    assert decay_epoch(300) == 152 and decay_epoch(1000) == 502


def test_data_parallel_convnet_step_1_vs_8_devices(key):
    """One SGD step of a ConvNet with the batch sharded over 8 devices equals the 1-device step."""
    make = functools.partial(models.ConvNet, in_channels=3, num_classes=4, image_size=8, depth=2,
                             width=8)
    graphdef, params = nnx.split(make(nnx.Rngs(key)))
    x = jax.random.normal(jax.random.fold_in(key, 1), (16, 8, 8, 3))
    y = jnp.arange(16) % 4

    @jax.jit
    def step(params, x, y):
        def loss(p):
            logits = nnx.merge(graphdef, p)(x)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        l, g = jax.value_and_grad(loss)(params)
        return jax.tree.map(lambda p, gi: p - 0.1 * gi, params, g), l

    p1, l1 = step(params, x, y)
    mesh = sharding.data_mesh(8)
    xs, ys = sharding.shard_batch((x, y), mesh)
    assert len(xs.sharding.device_set) == 8
    p8, l8 = step(sharding.replicate(params, mesh), xs, ys)
    np.testing.assert_allclose(l8, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p8, p1)
