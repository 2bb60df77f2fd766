"""The TM step (`jaxdiff.distill.tm`): instances a student step did not use keep their parameters
and optimiser state (PyTorch's None-gradient semantics), the learned step size is clipped, and
the expert store is checked before any work."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import models, sharding
from jaxdiff.distill import tm
from jaxdiff.distill.experts import ExpertStore
from jaxdiff.distill.optim import make_optimizer
from jaxdiff.distill.params import get_parameterisation
from jaxdiff.distill.placement import Placement
from jaxdiff.distill.trajectory import flat_student


def test_used_instances_marks_rows_with_any_gradient():
    g = {"a": jnp.zeros((4, 2)).at[1, 0].set(1.0), "b": jnp.zeros((4,)).at[3].set(-2.0)}
    np.testing.assert_array_equal(tm.used_instances(g, 4), [False, True, False, True])


def test_unused_instances_keep_their_state_and_the_step_size_is_clipped(key):
    make = functools.partial(models.ConvNet, in_channels=1, num_classes=2, image_size=8, depth=1,
                             width=4)
    student = flat_student(make, jax.random.key(0))
    param = get_parameterisation("pixel", ipc=3)
    real = jax.random.normal(key, (2, 5, 8, 8, 1))
    params, static = param.init(key, real)
    # One student step on 2 of the 6 images: 4 instances get no gradient this iteration.
    step = tm.make_tm_step(param, make_optimizer("adam", 1e-2, groups=("images",)), student,
                           None, syn_steps=1, batch_syn=2, mode="unroll", lr_lr=1e3,
                           lr_teacher=0.01, min_syn_lr=0.005,
                           place=Placement(sharding.data_mesh(1)))
    state = step.init(params, jax.random.key(1))
    p = student.init_flat
    new, m = jax.jit(step.update)(state, np.int32(0), static, p, p + 0.01)
    moved = np.any(np.asarray(new.params["images"] != state.params["images"]).reshape(6, -1), 1)
    assert moved.sum() == 2
    for old, upd in zip(jax.tree.leaves(state.opt), jax.tree.leaves(new.opt)):
        if np.ndim(old) >= 1 and np.shape(old)[0] == 6:
            np.testing.assert_array_equal(np.asarray(upd)[~moved], np.asarray(old)[~moved])
    # lr_lr 1e3 drives the step size below the clip: it stops at min_syn_lr exactly.
    assert np.float32(new.syn_lr) == np.float32(0.005) and float(m["syn_lr"]) == float(new.syn_lr)


def test_open_experts_checks_before_work(tmp_path):
    ExpertStore.create(str(tmp_path), num_params=3, epochs=4,
                       meta={"dataset": "digits", "image_shape": [8, 8, 1], "zca": False})
    with pytest.raises(ValueError, match="holds no complete expert"):
        tm.open_experts(str(tmp_path), "digits", (8, 8, 1), max_start_epoch=1, expert_epochs=1)
    with pytest.raises(ValueError, match="dataset='digits' was expected|has dataset"):
        tm.open_experts(str(tmp_path), "cifar10", (8, 8, 1), max_start_epoch=1, expert_epochs=1)
    with pytest.raises(FileNotFoundError, match="no expert store"):
        tm.open_experts(str(tmp_path / "x"), "digits", (8, 8, 1), max_start_epoch=1,
                        expert_epochs=1)


def test_open_experts_refuses_other_normalisation_statistics(tmp_path):
    """Experts trained on differently normalised images (e.g. a CIFAR-100 store made with its
    own statistics, distilled with CIFAR-10's as MTT/DDiF do) are refused, naming data.stats;
    the same statistics pass."""
    store = ExpertStore.create(str(tmp_path), num_params=3, epochs=4, meta={
        "dataset": "digits", "image_shape": [8, 8, 1], "mean": [0.5], "std": [0.25]})
    store.save_trajectory(0, np.zeros((5, 3), np.float32))
    kw = dict(max_start_epoch=1, expert_epochs=1)
    tm.open_experts(str(tmp_path), "digits", (8, 8, 1), stats=([0.5], [0.25]), **kw)
    with pytest.raises(ValueError, match=r"mean \[0.5\] / std \[0.25\].*data.stats"):
        tm.open_experts(str(tmp_path), "digits", (8, 8, 1), stats=([0.3], [0.25]), **kw)
