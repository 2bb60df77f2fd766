"""The resumable training loop (`jaxdiff.pipelines.loop.run_loop`): resume equals an
uninterrupted run, also on another mesh (named and recorded), another config is refused (a
changed device count only from checkpoints older than the mesh record), NaN stops the loop
keeping the last good checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import sharding
from jaxdiff.checkpoint import (Checkpointer, ConfigMismatchError, config_fingerprint,
                                resume_fingerprints)
from jaxdiff.metrics import DivergenceError, read_metrics
from jaxdiff.pipelines.loop import run_loop


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


def test_resume_drops_the_metric_rows_it_redoes(tmp_path):
    """A crash after the checkpoint at step 10 but after logging steps 11-12: the resumed run
    logs 11-20 once, and metrics.jsonl equals the uninterrupted run's (up to wall times)."""
    fp, kw = config_fingerprint({"lr": 0.1}), dict(checkpoint_every=5, log_every=1,
                                                    progress=False)
    run_loop(_toy_step_jit, _toy_init(), 20, run_dir=str(tmp_path / "a"), fingerprint=fp, **kw)

    def crashing(state, step):
        if int(step) == 12:
            raise KeyboardInterrupt("simulated crash")
        return _toy_step_jit(state, step)

    with pytest.raises(KeyboardInterrupt):
        run_loop(crashing, _toy_init(), 20, run_dir=str(tmp_path / "b"), fingerprint=fp, **kw)
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == list(range(1, 13))
    run_loop(_toy_step_jit, _toy_init(), 20, run_dir=str(tmp_path / "b"), fingerprint=fp,
             resume=True, **kw)
    a, b = ([{k: v for k, v in r.items() if k != "time"} for r in read_metrics(tmp_path / d)]
            for d in "ab")
    assert b == a and [r["step"] for r in b] == list(range(1, 21))


def test_resume_refuses_other_config(tmp_path):
    run_loop(_toy_step_jit, _toy_init(), 5, run_dir=str(tmp_path), fingerprint=config_fingerprint({"lr": 0.1}),
             checkpoint_every=5, progress=False)
    with pytest.raises(ConfigMismatchError, match="fingerprint"):
        run_loop(_toy_step_jit, _toy_init(), 10, run_dir=str(tmp_path), fingerprint=config_fingerprint({"lr": 0.2}),
                 resume=True, progress=False)


def _mesh_step(state, step):
    """Elementwise on a `[8]` vector split over the mesh: the same arithmetic on any mesh."""
    k = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step)
    w = 0.5 * state["w"] + jax.random.normal(k, state["w"].shape)
    return {"w": w, "key": state["key"]}, {"loss": jnp.sum(w ** 2)}


def _mesh_init(n):
    mesh = sharding.data_mesh(n)
    return {"w": sharding.shard_batch(jnp.zeros(8), mesh),
            "key": sharding.replicate(jax.random.key_data(jax.random.key(3)), mesh)}


def test_resume_on_another_mesh_is_named_and_recorded(tmp_path, capsys):
    """8 devices -> 4 -> 8: each resume places the state on its own mesh, prints both meshes,
    and the checkpoint records which steps ran where; the values are the uninterrupted run's."""
    fp = resume_fingerprints({"lr": 0.1, "num_devices": 8})
    step = jax.jit(_mesh_step)
    full, _ = run_loop(step, _mesh_init(8), 15, run_dir=str(tmp_path / "a"), fingerprint=fp,
                       checkpoint_every=5, progress=False)
    run_dir = str(tmp_path / "b")
    for n, stop in ((8, 5), (4, 10), (8, 15)):
        fp = resume_fingerprints({"lr": 0.1, "num_devices": n})
        state, _ = run_loop(step, _mesh_init(n), stop, run_dir=run_dir, fingerprint=fp,
                            checkpoint_every=5, resume=True, progress=False)
        assert state["w"].sharding.mesh.size == n
    out = capsys.readouterr().out
    assert ("checkpoint written on a mesh of 8 devices (data=8); this run has 4 devices "
            "(data=4)") in out
    assert "checkpoint written on a mesh of 4 devices (data=4); this run has 8 devices" in out
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(full["w"]))
    with Checkpointer(tmp_path / "b" / "checkpoints") as ck:
        _, _, meta = ck.restore(_mesh_init(8))
    assert meta["meshes"] == [[0, "8 devices (data=8)"], [5, "4 devices (data=4)"],
                              [10, "8 devices (data=8)"]]


def test_checkpoint_without_a_mesh_record_resumes_on_its_device_count_only(tmp_path):
    """Checkpoints written before the device count left the fingerprint carry the old formula:
    they resume with the same `num_devices`, and another one is refused (a user error)."""
    cfg = {"lr": 0.1, "num_devices": 8}
    run_loop(_toy_step_jit, _toy_init(), 5, run_dir=str(tmp_path), checkpoint_every=5,
             fingerprint=config_fingerprint(cfg), progress=False)
    with pytest.raises(ConfigMismatchError, match="device count may differ, except"):
        run_loop(_toy_step_jit, _toy_init(), 10, run_dir=str(tmp_path), resume=True,
                 fingerprint=resume_fingerprints({**cfg, "num_devices": 4}), progress=False)
    run_loop(_toy_step_jit, _toy_init(), 10, run_dir=str(tmp_path), resume=True,
             fingerprint=resume_fingerprints(cfg), progress=False)


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


# ---------------------------------------------------------------- divergence
def _growing_step(state, step):
    """loss 1 until step 6, then 1000: a run that blew up but stays finite."""
    loss = jnp.where(step < 6, 1.0, 1000.0)
    return {"w": state["w"] + 1.0}, {"loss": loss}


@pytest.mark.parametrize("limit", [100.0, 0.0])
def test_a_loss_grown_past_the_limit_stops_before_its_checkpoint(tmp_path, limit):
    kw = dict(fingerprint="f", checkpoint_every=2, log_every=2, progress=False,
              divergence_limit=limit)
    init = {"w": jnp.zeros(())}
    if not limit:   # 0: never stops
        _, hist = run_loop(jax.jit(_growing_step), init, 10, run_dir=str(tmp_path), **kw)
        assert hist[-1]["loss"] == 1000.0
        return
    with pytest.raises(DivergenceError, match=r"diverged at step 8: loss = 1000 is more than "
                                              r"divergence_limit = 100 times its first logged "
                                              r"value \(1\)"):
        run_loop(jax.jit(_growing_step), init, 10, run_dir=str(tmp_path), **kw)
    # the last checkpoint is step 6 (before the divergence), and it resumes from there; the
    # reference (the first logged loss) comes back with the checkpoint's metrics
    with Checkpointer(str(tmp_path / "checkpoints")) as ck:
        assert ck.latest_step() == 6
    with pytest.raises(DivergenceError, match="diverged at step 8"):
        run_loop(jax.jit(_growing_step), init, 10, run_dir=str(tmp_path), resume=True, **kw)
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [2, 4, 6]
