"""Core utilities: configs and overrides, checkpoint/resume, metrics, image grids, labelled sets,
per-sample keys, meshes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import random as jrandom
from jaxdiff.checkpoint import Checkpointer, ConfigMismatchError, config_fingerprint
from jaxdiff.config_utils import apply_override, build_config, load_config, parse_overrides
from jaxdiff.distill.synset import LabelledSet, load_synset, save_synset
from jaxdiff.images import make_grid, save_grid
from jaxdiff.metrics import MetricWriter, check_finite, read_metrics
from jaxdiff.pipelines.loop import run_loop
from jaxdiff import sharding


# ---------------------------------------------------------------- configs
def test_override_types_and_unknown_key():
    c = load_config("evaluate_digits")
    apply_override(c, "train.epochs", "7")
    apply_override(c, "train.lr", "0.5")
    apply_override(c, "data.name", "cifar10_jpeg")
    apply_override(c, "train.eval_epochs", "(2, 4)")
    assert (c.train.epochs, c.train.lr, c.data.name, c.train.eval_epochs) == (7, 0.5, "cifar10_jpeg", (2, 4))
    with pytest.raises(KeyError, match="unknown config key 'train.epoch'.*train.epochs"):
        apply_override(c, "train.epoch", "3")
    with pytest.raises(TypeError, match="train.epochs"):
        apply_override(c, "train.epochs", "many")
    with pytest.raises(TypeError, match="progress"):
        apply_override(c, "progress", "3")


def test_parse_overrides_and_unknown_preset():
    name, ov, rest = parse_overrides(["evaluate", "--config", "x", "--config.a.b=1", "--config.c", "2", "--resume"])
    assert name == "x" and ov == [("a.b", "1"), ("c", "2")] and rest == ["evaluate", "--resume"]
    with pytest.raises(FileNotFoundError, match="evaluate_digits"):
        build_config("no_such_preset", [])


# ---------------------------------------------------------------- keys
def test_sample_keys_are_fold_in_and_offset_consistent(key):
    ks = jrandom.sample_keys(key, 6)
    for i in range(6):
        assert np.array_equal(jax.random.key_data(ks[i]), jax.random.key_data(jax.random.fold_in(key, i)))
    tail = jrandom.sample_keys(key, 3, offset=3)
    assert np.array_equal(jax.random.key_data(tail), jax.random.key_data(ks[3:]))


# ---------------------------------------------------------------- checkpoint / resume
def _toy_step(state, step):
    """A small SGD run whose noise comes from fold_in(key, step): resumable by construction."""
    k = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step)
    x = jax.random.normal(k, (16, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5])

    def loss(w):
        return jnp.mean((x @ w - y) ** 2)

    l, g = jax.value_and_grad(loss)(state["w"])
    return {"w": state["w"] - 0.1 * g, "key": state["key"]}, {"loss": l}


_toy_step_jit = jax.jit(_toy_step)


def _toy_init():
    return {"w": jnp.zeros(3), "key": jax.random.key_data(jax.random.key(3))}


def test_resume_equals_uninterrupted_run(tmp_path):
    cfg = {"lr": 0.1}
    full, hist_full = run_loop(_toy_step_jit, _toy_init(), 20, run_dir=str(tmp_path / "a"), fingerprint=config_fingerprint(cfg),
                               checkpoint_every=5, log_every=5, progress=False)
    # Interrupted after 10 steps (a run of 10), then resumed to 20.
    run_loop(_toy_step_jit, _toy_init(), 10, run_dir=str(tmp_path / "b"), fingerprint=config_fingerprint(cfg),
             checkpoint_every=5, log_every=5, progress=False)
    resumed, hist = run_loop(_toy_step_jit, _toy_init(), 20, run_dir=str(tmp_path / "b"), fingerprint=config_fingerprint(cfg),
                             checkpoint_every=5, log_every=5, resume=True, progress=False)
    np.testing.assert_array_equal(np.asarray(full["w"]), np.asarray(resumed["w"]))
    assert [r["step"] for r in hist] == [5, 10, 15, 20]
    assert hist[-1]["loss"] == hist_full[-1]["loss"]
    # Starting again without --resume must not silently overwrite the run.
    with pytest.raises(FileExistsError, match="--resume"):
        run_loop(_toy_step_jit, _toy_init(), 20, run_dir=str(tmp_path / "b"), fingerprint=config_fingerprint(cfg), progress=False)


def test_resume_refuses_other_config(tmp_path):
    run_loop(_toy_step_jit, _toy_init(), 5, run_dir=str(tmp_path), fingerprint=config_fingerprint({"lr": 0.1}),
             checkpoint_every=5, progress=False)
    with pytest.raises(ConfigMismatchError, match="fingerprint"):
        run_loop(_toy_step_jit, _toy_init(), 10, run_dir=str(tmp_path), fingerprint=config_fingerprint({"lr": 0.2}),
                 resume=True, progress=False)


def test_nan_stops_loop_and_keeps_last_good_checkpoint(tmp_path):
    def step(state, s):
        w = jnp.where(s >= 7, jnp.nan, state["w"] + 1.0)
        return {"w": w, "key": state["key"]}, {"loss": jnp.sum(w)}

    with pytest.raises(FloatingPointError, match="step 7"):
        run_loop(jax.jit(step), _toy_init(), 20, run_dir=str(tmp_path), fingerprint=config_fingerprint({}), checkpoint_every=5,
                 log_every=1, progress=False)
    ck = Checkpointer(tmp_path / "checkpoints", fingerprint=config_fingerprint({}))
    step_, state, meta = ck.restore(_toy_init())
    ck.close()
    assert step_ == 5 and np.all(np.asarray(state["w"]) == 5.0)


# ---------------------------------------------------------------- metrics, images, labelled sets
def test_metric_writer_and_finite_check(tmp_path):
    w = MetricWriter(tmp_path, tensorboard=False)
    w.write(1, {"loss": jnp.float32(0.5), "acc": 0.25})
    w.write(2, {"loss": np.float64(0.25)})
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.5), (2, 0.25)]
    with pytest.raises(FloatingPointError, match="loss at step 3"):
        check_finite(3, loss=np.nan)


def test_grid_layout_and_png(tmp_path):
    imgs = np.stack([np.full((2, 3, 1), v, np.float32) for v in (0.0, 0.5, 1.0)])
    g = make_grid(imgs, ncol=2, pad=1)
    assert g.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert g[1, 1, 0] == 0.0 and g[1, 5, 0] == 0.5 and g[4, 1, 0] == 1.0
    assert g[0, 0, 0] == 1.0 and g[4, 5, 0] == 1.0  # padding and the empty cell are white
    from PIL import Image
    p = save_grid(tmp_path / "g.png", imgs, ncol=2, scale=2)
    assert Image.open(p).size == (2 * (2 * 4 + 1), 2 * (2 * 3 + 1))


def test_synset_round_trip(tmp_path):
    s = LabelledSet(np.random.rand(4, 5, 5, 3).astype(np.float32), np.array([0, 0, 1, 1]), "cifar10",
                    np.array([0.1, 0.2, 0.3]), np.array([0.4, 0.5, 0.6]), lr=0.02, method="test")
    path = save_synset(tmp_path, s)
    t = load_synset(path)
    np.testing.assert_array_equal(t.images, s.images)
    assert t.dataset == "cifar10" and t.method == "test" and abs(t.lr - 0.02) < 1e-7
    with pytest.raises(FileNotFoundError, match="synthetic.npz"):
        load_synset(tmp_path / "missing")


# ---------------------------------------------------------------- meshes
def test_data_mesh_and_uneven_batch_error():
    assert jax.device_count() == 8
    mesh = sharding.data_mesh()
    x = sharding.shard_batch(np.arange(16.0).reshape(16, 1), mesh)
    assert len(x.addressable_shards) == 8 and x.addressable_shards[0].data.shape == (2, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        sharding.shard_batch(np.zeros((12, 1)), mesh)
    with pytest.raises(ValueError, match="devices"):
        sharding.data_mesh(9)


def test_fingerprint_ignores_run_control_keys_only():
    a = {"lr": 0.1, "iterations": 10, "progress": True, "eval": {"epochs": 3}}
    assert config_fingerprint(a) == config_fingerprint({**a, "iterations": 99, "progress": False,
                                                        "eval": {"epochs": 5}})
    assert config_fingerprint(a) != config_fingerprint({**a, "lr": 0.2})
    assert config_fingerprint(a, ignore=()) != config_fingerprint({**a, "iterations": 99}, ignore=())


def test_reuse_heap_reexec_sets_glibc_tunables():
    import subprocess
    import sys

    from jaxdiff.runtime import REUSE_HEAP_TUNABLES
    code = ("import sys; from jaxdiff.runtime import reexec_with_reuse_heap; "
            "reexec_with_reuse_heap([sys.executable, '-c', "
            "'import os; print(os.environ.get(\"GLIBC_TUNABLES\"))']); print('not re-executed')")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXDIFF_REUSE_HEAP")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    expected = REUSE_HEAP_TUNABLES if sys.platform.startswith("linux") else "not re-executed"
    assert out.stdout.strip() == expected, out.stderr
    off = subprocess.run([sys.executable, "-c", code], env={**env, "JAXDIFF_REUSE_HEAP": "0"},
                         capture_output=True, text=True)
    assert off.stdout.strip() == "not re-executed"
