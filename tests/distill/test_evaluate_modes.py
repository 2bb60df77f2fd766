"""How `train_and_test` trains its runs (`run_mode`): sequential runs are bitwise the runs alone,
vmapped runs the same networks up to float rounding, the smaller last batch is computed at its own
size (no padding), and the progress callback is absent unless asked for and ticks at most ~100
times per run."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff import models
from jaxdiff.distill import augment as dsa
from jaxdiff.distill import evaluate
from jaxdiff.distill.evaluate import choose_run_mode, train_and_test


def _data(n=20, n_test=27, seed=0):
    rs = np.random.RandomState(seed)
    centers = rs.randn(3, 4, 4, 1) * 2
    y, yt = np.arange(n) % 3, np.arange(n_test) % 3
    x = (centers[y] + rs.randn(n, 4, 4, 1)).astype(np.float32)
    xt = (centers[yt] + rs.randn(n_test, 4, 4, 1)).astype(np.float32)
    return x, y, xt, yt


_CONV = functools.partial(models.ConvNet, in_channels=1, num_classes=3, image_size=4, depth=1,
                          width=8)
# 20 images in batches of 8: steps of 8, 8 and 4; 27 test images in batches of 10: 10, 10, 7.
_KW = dict(make_model=_CONV, epochs=3, lr=0.05, batch_size=8, test_batch_size=10,
           eval_epochs=(2,), augment=dsa.per_sample_augment("crop_cutout"),
           devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def results():
    """One device: 3 runs sequential and vmapped, and 1 run; progress off (the default), with
    the progress callback recording any call."""
    x, y, xt, yt = _data()
    key = jax.random.key(7)
    ticks, tick = [], evaluate._tick
    evaluate._tick = ticks.append
    try:
        out = {(mode, r): train_and_test(key, x, y, xt, yt, num_runs=r, run_mode=mode, **_KW)
               for mode, r in (("sequential", 3), ("vmap", 3), ("auto", 1))}
    finally:
        evaluate._tick = tick
    return out, ticks


def test_sequential_runs_are_bitwise_the_runs_alone(results):
    """Run r is the same program on the same key whatever the number of runs: exactly equal."""
    three, one = results[0]["sequential", 3], results[0]["auto", 1]
    np.testing.assert_array_equal(three.train_loss[:1], one.train_loss)
    np.testing.assert_array_equal(three.accuracy[:1], one.accuracy)
    np.testing.assert_array_equal(three.accuracy_at[:1], one.accuracy_at)
    assert len(set(three.train_loss.tolist())) == 3   # three different networks


def test_vmapped_runs_equal_sequential_up_to_rounding(results):
    """vmap batches the kernels (a grouped convolution on CPU), which sums in another order:
    the same networks within float32 rounding, not bitwise. After 4 epochs on separable data
    the accuracies (multiples of 1/27) come out identical."""
    seq, vm = results[0]["sequential", 3], results[0]["vmap", 3]
    np.testing.assert_allclose(vm.train_loss, seq.train_loss, rtol=1e-5)
    np.testing.assert_array_equal(vm.accuracy, seq.accuracy)
    np.testing.assert_array_equal(vm.accuracy_at, seq.accuracy_at)


def test_auto_mode_by_platform():
    cpu = jax.devices("cpu")[:2]

    class _Accel:
        platform = "gpu"

    assert choose_run_mode("auto", cpu) == "sequential"
    assert choose_run_mode("auto", [_Accel()]) == "vmap"
    assert choose_run_mode("vmap", cpu) == "vmap"
    with pytest.raises(ValueError, match="run_mode 'grouped'"):
        choose_run_mode("grouped", cpu)


class _ShapeRecorder(nnx.Module):
    """A linear classifier that records the batch sizes it is traced with."""

    seen: list = []

    def __init__(self, rngs):
        self.dense = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        _ShapeRecorder.seen.append(x.shape[0])
        return self.dense(x.reshape(x.shape[0], -1))


def test_no_callback_by_default(results):
    assert results[1] == []


def test_no_padded_batches_and_at_most_100_progress_ticks_per_run(monkeypatch):
    """20 training images at batch 8 are traced as batches of 8 and 4, 27 test images at test
    batch 10 as 10 and 7: the smaller last batch is its own step, not padded to 8 (or 10)."""
    x, y, xt, yt = _data()
    ticks = []
    monkeypatch.setattr(evaluate, "_tick", lambda done: ticks.append(int(np.max(done))))
    _ShapeRecorder.seen = []
    train_and_test(jax.random.key(1), x, y, xt, yt, make_model=_ShapeRecorder, num_runs=2,
                   epochs=249, batch_size=8, test_batch_size=10, run_mode="sequential",
                   devices=jax.devices()[:1], progress=True)
    assert set(_ShapeRecorder.seen) == {8, 4, 10, 7}
    # 2 runs x 250 epochs, every ceil(250 / 100) = 3rd epoch and the last: 84 ticks per run,
    # counting on across the runs.
    one_run = [3 * i for i in range(1, 84)] + [250]
    assert ticks == one_run + [250 + t for t in one_run]


def test_run_mode_config_key_and_progress_only_on_a_terminal():
    import io

    from jaxdiff.config_utils import build_config
    from jaxdiff.pipelines.evaluate import show_progress
    from jaxdiff.specs.base import SpecError
    from jaxdiff.specs.evaluate import resolve

    assert resolve(build_config("evaluate_digits", [])).train.run_mode == "auto"
    spec = resolve(build_config("evaluate_digits", [("train.run_mode", "vmap")]))
    assert spec.train.run_mode == "vmap"
    with pytest.raises(SpecError, match="'train.run_mode' = 'grouped' is not one of"):
        resolve(build_config("evaluate_digits", [("train.run_mode", "grouped")]))

    class _Tty(io.StringIO):
        def isatty(self):
            return True

    assert show_progress(True, _Tty()) and not show_progress(False, _Tty())
    assert not show_progress(True, io.StringIO())   # a log file or a pipe: no bar
