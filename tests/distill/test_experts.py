"""Expert trajectories (`jaxdiff.distill.experts`): the on-disk store, the epoch's batches, SGD
semantics against a straightforward loop, vmapped pool == one by one."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff.batching import epoch_batches
from jaxdiff import models
from jaxdiff.distill import experts as E


def test_store_roundtrip_lazy_segment_and_checks(tmp_path):
    root = tmp_path / "store"
    store = E.ExpertStore.create(root, num_params=5, epochs=3, meta={"dataset": "toy", "zca": False})
    traj = np.arange(4 * 5, dtype=np.float32).reshape(4, 5)
    store.save_trajectory(2, traj)
    assert store.completed() == [2] and len(store) == 1
    again = E.ExpertStore(root)                         # reopen from disk
    assert isinstance(again.trajectory(2), np.memmap)   # lazy: rows are read on demand
    np.testing.assert_array_equal(again.load(2, 3), traj[3])
    start, target = again.segment(2, 1, 2)
    np.testing.assert_array_equal(start, traj[1])
    np.testing.assert_array_equal(target, traj[3])
    with pytest.raises(ValueError, match="expert_epochs"):
        again.segment(2, 2, 2)                          # 2 + 2 > 3 stored epochs
    with pytest.raises(KeyError):
        again.load(0, 0)
    with pytest.raises(ValueError, match="shape"):
        again.save_trajectory(3, traj[:3])
    again.check(dataset="toy", zca=False)
    with pytest.raises(ValueError, match="zca"):
        again.check(zca=True)
    with pytest.raises(FileExistsError):
        E.ExpertStore.create(root, num_params=5, epochs=3, meta={"dataset": "toy", "zca": False})
    with pytest.raises(ValueError, match="epochs"):
        E.ExpertStore.create(root, num_params=5, epochs=4, meta={"dataset": "toy", "zca": False},
                             exist_ok=True)
    assert not [f for f in os.listdir(root) if ".tmp" in f]   # atomic writes leave no temp files


def test_store_partial_snapshots_resume_and_finalize(tmp_path):
    store = E.ExpertStore.create(tmp_path / "s", num_params=3, epochs=2)
    assert store.resume_epoch(0) is None
    store.save_snapshot(0, 0, [0, 0, 0])
    store.save_snapshot(0, 1, [1, 1, 1])
    assert store.resume_epoch(0) == 1 and not store.is_complete(0) and len(store) == 0
    np.testing.assert_array_equal(store.load_snapshot(0, 1), [1, 1, 1])
    with pytest.raises(ValueError, match="up to epoch 1"):
        store.finalize(0)
    store.save_snapshot(0, 2, [2, 2, 2])
    store.finalize(0)
    assert store.completed() == [0] and store.resume_epoch(0) == 2
    np.testing.assert_array_equal(store.trajectory(0), [[0] * 3, [1] * 3, [2] * 3])
    assert not os.path.exists(os.path.join(store.root, "partial", "expert_00000"))


def test_epoch_schedule_is_dataloader_shuffle(key):
    idx, w = epoch_batches(key, 10, 4)
    idx, w = np.asarray(idx), np.asarray(w)
    assert idx.shape == (3, 4)
    np.testing.assert_array_equal(w.sum(1), [4, 4, 2])     # the last batch is smaller
    assert sorted(idx[w > 0].tolist()) == list(range(10))


MK = functools.partial(models.MLP, in_features=12, out_features=3, hidden=(6,))


def _data(key, n=10):
    x = jax.random.normal(key, (n, 2, 2, 3))
    return x, jnp.arange(n) % 3


def test_one_epoch_equals_plain_sgd_loop(key):
    """lr 0.01, no momentum, masked smaller last batch, mean CE per batch (PyTorch semantics)."""
    x, y = _data(key)
    ik, dk = jax.random.split(jax.random.fold_in(key, 1))
    tr = E.make_expert_trainer(MK, init_key=ik, data_key=dk, num_train=10, lr=0.5, batch_size=4)
    flat0 = tr.init(jnp.array([3]))
    flat1, loss = tr.epoch(flat0, jnp.array([3]), 2, x, y)
    # reference: expert 3 initialised from fold_in(init_key, 3), epoch 2's batches from
    # fold_in(fold_in(data_key, 3), 2)
    model = MK(nnx.Rngs(jax.random.fold_in(ik, 3)))
    graphdef, params = nnx.split(model, nnx.Param)
    theta, unravel = jax.flatten_util.ravel_pytree(params)
    np.testing.assert_allclose(np.asarray(flat0[0]), np.asarray(theta), rtol=1e-6)
    ekey = jax.random.fold_in(jax.random.fold_in(dk, 3), 2)
    idx, w = epoch_batches(jax.random.fold_in(ekey, 0), 10, 4)
    for s in range(idx.shape[0]):
        rows = np.asarray(idx[s])[np.asarray(w[s]) > 0]

        def ce(t):
            logits = nnx.merge(graphdef, unravel(t))(x[rows])
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[rows]))

        theta = theta - 0.5 * jax.grad(ce)(theta)
    np.testing.assert_allclose(np.asarray(flat1[0]), np.asarray(theta), rtol=1e-5, atol=1e-6)


def test_vmapped_pool_equals_one_by_one(key):
    """A pool of 3 ConvNet experts (with DSA) trains exactly like 3 separate runs."""
    from jaxdiff.distill.augment import augment as dsa
    mk = functools.partial(models.ConvNet, in_channels=1, num_classes=3, image_size=8, depth=1,
                           width=8)
    x = jax.random.normal(key, (12, 8, 8, 1))
    y = jnp.arange(12) % 3
    aug = functools.partial(dsa, strategy="color_crop_cutout_flip")
    ik, dk = jax.random.split(jax.random.fold_in(key, 1))
    tr = E.make_expert_trainer(mk, init_key=ik, data_key=dk, num_train=12, lr=0.05,
                               batch_size=5, augment=aug)
    ids = jnp.array([0, 1, 2])
    pool = tr.init(ids)
    for e in range(2):
        pool, loss = tr.epoch(pool, ids, e, x, y)
    for i in range(3):
        one = tr.init(jnp.array([i]))
        for e in range(2):
            one, l1 = tr.epoch(one, jnp.array([i]), e, x, y)
        np.testing.assert_allclose(np.asarray(one[0]), np.asarray(pool[i]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(l1[0]), float(loss[i]), rtol=1e-5)
    assert float(jnp.abs(pool[0] - pool[1]).max()) > 1e-3   # experts differ from each other
    acc = tr.accuracy(pool, x, y)
    assert acc.shape == (3,) and float(acc.min()) >= 0 and float(acc.max()) <= 1


def test_steps_on_fed_batches_equal_the_in_program_epoch(key):
    """`steps_per_epoch` steps on the batches `rows_of` names (as `feeding.HostBatches` reads
    them) train exactly what one `epoch` trains with the split on the device."""
    from jaxdiff.distill.augment import augment as dsa
    mk = functools.partial(models.ConvNet, in_channels=1, num_classes=3, image_size=8, depth=1,
                           width=8)
    x = np.asarray(jax.random.normal(key, (12, 8, 8, 1)))
    y = np.arange(12, dtype=np.int32) % 3
    ik, dk = jax.random.split(jax.random.fold_in(key, 1))
    tr = E.make_expert_trainer(mk, init_key=ik, data_key=dk, num_train=12, lr=0.05, batch_size=5,
                               augment=functools.partial(dsa, strategy="color_crop_cutout_flip"))
    ids = jnp.array([4, 1])
    by_epoch = by_step = tr.init(ids)
    rows = jax.jit(tr.rows_of(ids))
    assert tr.steps_per_epoch == 3
    for e in range(2):
        by_epoch, loss = tr.epoch(by_epoch, ids, e, x, y)
        losses = []
        for t in range(e * 3, e * 3 + 3):
            r = np.asarray(rows(t))                                   # [2 experts, 5]
            assert r.shape == (2, 5)
            by_step, l_t = tr.step(by_step, ids, jnp.int32(t), x[r], y[r])
            losses.append(l_t)
        np.testing.assert_allclose(by_step, by_epoch, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.mean(losses, axis=0), loss, rtol=1e-6)
