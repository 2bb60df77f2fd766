"""`jaxdiff train-denoiser` end to end on tiny configs: outputs, a straightforward single-device
re-implementation of the training loop as the oracle, resume == uninterrupted (also on another
device count), a conditional U-Net whose labels reach the model and the quality figures."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff import data as jdata
from jaxdiff.diffusion import train as T
from jaxdiff.diffusion import quality_net as QN
from jaxdiff.diffusion.saved import load_model
from jaxdiff.models.denoisers import build_denoiser, denoiser_spec
from jaxdiff.pipelines import sample as SP
from jaxdiff.pipelines import train_denoiser as TD
from jaxdiff.specs.sample import resolve as resolve_sample
from jaxdiff.specs.train_denoiser import resolve as resolve_train

from tests.helpers import (assert_resumed, resume_on_meshes, tiny_sample_config,
                           tiny_train_denoiser_config)


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_train_writes_outputs_and_matches_reference_loop(trained):
    run_dir, out = trained
    for name in ("model.json", "results.json", "config.json", "samples_000002.png",
                 "samples_000004.png", "samples_final.png", "metrics.jsonl"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints")))[-1] == "6"
    rows = _read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4, 6]
    # EMA warm-up min(0.999, (1 + s) / (10 + s)) at update s = 1, 3, 5.
    np.testing.assert_allclose([r["ema_decay"] for r in rows], [2 / 11, 4 / 13, 6 / 15], rtol=1e-6)
    assert out["mesh_size"] == 8 and out["steps"] == 6

    # Reference: the same loop written plainly, on one device, with the library's train step.
    cfg = tiny_train_denoiser_config(run_dir)
    ds = jdata.load("digits", "train", image_size=8)
    k_init, k_loop, _ = jax.random.split(jax.random.key(cfg.seed), 3)
    spec = denoiser_spec(cfg.model, (8, 8, 1), 0)
    tx = T.denoiser_optimizer(cfg.train.lr, cfg.train.warmup_steps, cfg.train.grad_clip)
    graphdef, state = T.init_train_state(build_denoiser(spec, nnx.Rngs(k_init)), tx)
    step = jax.jit(T.make_train_step(graphdef, tx, sigma_data=0.75))
    x_all = jdata.to_model_space(ds.images)
    losses = []
    for s in range(6):
        k_idx, k_step = jax.random.split(jax.random.fold_in(k_loop, s))
        idx = np.asarray(jax.random.randint(k_idx, (16,), 0, len(ds.labels)))
        state, m = step(state, jnp.asarray(x_all[idx]), k_step, None, min(0.999, (1 + s) / (10 + s)))
        losses.append(float(m["loss"]))
    np.testing.assert_allclose([r["loss_avg"] for r in rows],
                               [np.mean(losses[i:i + 2]) for i in (0, 2, 4)], rtol=1e-5)
    m = load_model(run_dir)
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
    np.testing.assert_allclose(flat(m.params), flat(state.params), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(flat(m.ema), flat(state.ema), rtol=2e-5, atol=1e-6)
    assert m.spec["sigma_data"] == 0.75 and m.spec["step"] == 6 and m.num_classes == 0


def test_resume_equals_uninterrupted(trained, tmp_path, capsys):
    """Stopped after step 3 and resumed: on the 8 devices of the uninterrupted run bitwise its
    model; on another mesh (8 -> 4 devices) within 1e-6 (observed 6e-8)."""
    run_dir, out = trained

    def run(d, n, resume):
        over = {"resume": True} if resume else {"stop_after": 3}
        part = TD.run(resolve_train(tiny_train_denoiser_config(d, num_devices=n, **over)))
        if not resume:
            assert part == {"stopped_at": 3, "run_dir": str(d)}
            assert not os.path.exists(d / "model.json")

    runs = resume_on_meshes(run, tmp_path)
    assert ("checkpoint written on a mesh of 8 devices (data=8); this run has 4 devices "
            "(data=4)") in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="--resume"):
        TD.run(resolve_train(tiny_train_denoiser_config(runs[8, 8])))
    a = load_model(run_dir)
    for (first, then), d in runs.items():
        b = load_model(str(d))
        for x, y in zip(jax.tree.leaves((a.params, a.ema, a.rest)),
                        jax.tree.leaves((b.params, b.ema, b.rest))):
            assert_resumed(np.asarray(y), np.asarray(x), first, then)
    # The interrupted run also logged its last step (3); every other row is identical.
    with open(runs[8, 8] / "results.json") as f:
        resumed = json.load(f)
    assert resumed["mesh_size"] == 8
    assert [r for r in resumed["loss_curve"] if r[0] != 3] == out["loss_curve"]


@pytest.mark.slow
def test_conditional_unet_run_and_labelled_sampling(tmp_path, monkeypatch, qcache):
    """A real (tiny) U-Net, class-conditional: labels reach the model and the quality figures.
    Euler everywhere: one U-Net per solver step keeps the compile small."""
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", qcache)
    cfg = tiny_train_denoiser_config(tmp_path / "cond", conditional=True, num_devices=1, **{
        "model.name": "unet", "model.base_channels": 8, "model.attention": False,
        "train.steps": 2, "train.batch_size": 8, "sample.every": 0, "sample.num": 10,
        "sample.solver": "euler"})
    out = TD.run(resolve_train(cfg))
    assert out["model"]["num_classes"] == 10 and out["model"]["name"] == "unet"
    m = load_model(str(tmp_path / "cond"))
    assert m.graphdef is not None and m.num_classes == 10
    res = SP.run(resolve_sample(tiny_sample_config(tmp_path / "s", model_dir=str(tmp_path / "cond"), num_samples=10,
                             batch_size=10, num_devices=1, **{"solver.name": "euler"})))
    z = np.load(tmp_path / "s" / "samples.npz")
    np.testing.assert_array_equal(z["labels"], np.arange(10))
    assert res["nfe"] == 3
    net = QN.get_quality_net(QN.QualityNetSpec("digits", image_size=8, width=8, feature_dim=16,
                                               epochs=1))
    pred = QN.predict(net, z["samples"]).argmax(1)
    assert res["classifier_accuracy"] == pytest.approx(np.mean(pred == np.arange(10)))
