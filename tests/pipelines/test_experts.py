"""`jaxdiff experts` end to end: resume after a crash equals the uninterrupted run (also on another
device count), a store from another config is refused."""

import json

import numpy as np
import pytest

from jaxdiff.distill import experts as E
from jaxdiff.pipelines import experts as P
from jaxdiff.specs.experts import resolve as resolve_experts

from tests.helpers import assert_resumed, resume_on_meshes


def _run(config):
    """The command as the CLI runs it: resolve the config, then run the pipeline."""
    return P.run(resolve_experts(config))


def _config(run_dir, **kw):
    import ml_collections
    c = ml_collections.ConfigDict(dict(
        data=dict(name="digits", data_dir="", image_size=8), zca=False, zca_reg=0.1,
        model=dict(name="convnet", depth=0, width=4, norm="instancenorm"), num_experts=2,
        parallel=2, epochs=3, lr=0.01, batch_size=256, dsa_strategy="crop", seed=0,
        progress=False, resume=False, buffer_dir=str(run_dir)))
    c.update(kw)
    return c


def test_pipeline_resume_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    """8 experts in one group split over the 8 devices (one each), crashed in epoch 3 and
    resumed from their epoch-2 snapshots: on the same mesh bitwise the uninterrupted run; on
    another (8 -> 4 devices, two experts each) within 1e-6 (observed 3e-8): XLA:CPU
    compiles a share of 1 and of 2 experts with differently split reductions."""
    group = dict(num_experts=8, parallel=8)
    full = _run(_config(tmp_path / "a", **group))
    assert full["num_experts_complete"] == 8

    real = P.make_expert_trainer

    def crashing(*a, **k):
        tr = real(*a, **k)

        def step(flat, ids, t, *batch):
            if int(t) == 2 * tr.steps_per_epoch:     # the first step of epoch 3
                raise KeyboardInterrupt("simulated crash in epoch 3")
            return tr.step(flat, ids, t, *batch)

        return tr._replace(step=step)

    def run(d, n, resume):
        if resume:
            _run(_config(d, num_devices=n, resume=True, **group))
            return
        with monkeypatch.context() as m:
            m.setattr(P, "make_expert_trainer", crashing)
            with pytest.raises(KeyboardInterrupt):
                _run(_config(d, num_devices=n, **group))
        store = E.ExpertStore(d)
        assert len(store) == 0 and store.resume_epoch(0) == 2

    runs = resume_on_meshes(run, tmp_path)
    assert "8 in parallel (split over 4 devices)" in capsys.readouterr().out
    with pytest.raises(FileExistsError):
        _run(_config(tmp_path / "cut8", **group))     # refuses to overwrite without --resume
    store_a = E.ExpertStore(tmp_path / "a")
    for (first, then), d in runs.items():
        store_b = E.ExpertStore(d)
        for i in range(8):
            assert_resumed(store_b.trajectory(i), store_a.trajectory(i), first, then)
    with open(tmp_path / "a" / "meta.json") as f:
        meta = json.load(f)
    assert meta["dataset"] == "digits" and meta["zca"] is False and meta["epochs"] == 3
    assert meta["param_paths"][0].startswith("blocks/0/conv")
    with pytest.raises(ValueError, match="lr"):       # a store from another config is refused
        _run(_config(runs[8, 8], resume=True, lr=0.02, **group))


def test_pool_split_over_the_devices_equals_one_device_pools(tmp_path, capsys):
    """8 experts in one group of 8 (split over the 8 devices, one expert each) train the same
    trajectories as two groups of 4 on the default device."""
    import jax
    assert jax.device_count() == 8
    split = _run(_config(tmp_path / "split", num_experts=8, parallel=8, epochs=2))
    assert "8 in parallel (split over 8 devices)" in capsys.readouterr().out
    local = _run(_config(tmp_path / "local", num_experts=8, parallel=4, epochs=2))
    assert "4 in parallel (on one device)" in capsys.readouterr().out
    a, b = E.ExpertStore(tmp_path / "split"), E.ExpertStore(tmp_path / "local")
    for i in range(8):
        np.testing.assert_allclose(a.trajectory(i), b.trajectory(i), rtol=0, atol=1e-6)
    assert [split["experts"][k]["test_accuracy"] for k in sorted(split["experts"])] == \
        pytest.approx([local["experts"][k]["test_accuracy"] for k in sorted(local["experts"])],
                      abs=1e-6)


def test_a_diverging_expert_stops_before_its_snapshot(tmp_path):
    """SGD at lr 100 blows up but stays finite in epoch 1 (mean loss in the thousands, against
    the limit 100 x log(10) = 230): the run stops with the key named, no expert is complete and
    epoch 1's snapshot is not written (only the initialisation, epoch 0)."""
    from jaxdiff.metrics import DivergenceError
    with pytest.raises(DivergenceError, match=r"diverged at step 1: the mean train loss of "
                                              r"expert 0 in epoch 1 = .* more than "
                                              r"divergence_limit = 100 times the chance-level"):
        _run(_config(tmp_path / "x", lr=100.0, batch_size=64, model=dict(
            name="convnet", depth=0, width=8, norm="instancenorm")))
    store = E.ExpertStore(tmp_path / "x")
    assert len(store) == 0 and store.resume_epoch(0) == 0
    assert not (tmp_path / "x" / "results.json").exists()
