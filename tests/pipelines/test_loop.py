"""The resumable training loop (`jaxdiff.pipelines.loop.run_loop`): resume equals an
uninterrupted run, another config is refused, NaN stops the loop keeping the last good checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.checkpoint import Checkpointer, ConfigMismatchError, config_fingerprint
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
