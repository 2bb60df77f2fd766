"""`jaxdiff train-denoiser`, `jaxdiff sample` and the quality network, end to end on tiny configs.

Oracles: a straightforward single-device re-implementation of the training loop, resume vs
uninterrupted equality, 1 vs 8 devices and batch-size invariance of sampling with the analytic
GMM denoiser against per-sample solver runs, and the quality figures against direct formulas.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff import cli
from jaxdiff import data as jdata
from jaxdiff.config_utils import load_config, set_values
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import quality as Q
from jaxdiff.diffusion import schedules, solvers
from jaxdiff.diffusion import train as T
from jaxdiff.diffusion import quality_net as QN
from jaxdiff.diffusion.saved import load_model
from jaxdiff.models.denoisers import build_denoiser, denoiser_spec
from jaxdiff.pipelines import sample as SP
from jaxdiff.pipelines import train_denoiser as TD
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.sample import resolve as resolve_sample
from jaxdiff.specs.train_denoiser import resolve as resolve_train


def _train_cfg(run_dir, **over):
    c = load_config("train_denoiser_digits")
    c.model.name = "mlp"
    c.model.hidden, c.model.depth, c.model.emb_dim = 32, 1, 16
    c.train.steps, c.train.batch_size, c.train.warmup_steps = 6, 16, 2
    c.log_every, c.checkpoint_every = 2, 3
    c.sample.every, c.sample.num, c.sample.steps = 2, 8, 2
    c.progress = False
    c.run_dir = str(run_dir)
    return set_values(c, **over)


def _sample_cfg(run_dir, **over):
    c = load_config("sample_digits")
    c.solver.steps = 3
    c.num_samples, c.batch_size = 20, 8
    c.quality.epochs, c.quality.width, c.quality.feature_dim = 1, 8, 16
    c.progress = False
    c.run_dir = str(run_dir)
    return set_values(c, **over)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 6-step run on the 8 fake devices (batch sharded 16 / 8)."""
    run_dir = tmp_path_factory.mktemp("td") / "full"
    out = TD.run(resolve_train(_train_cfg(run_dir)))
    return str(run_dir), out


@pytest.fixture(scope="module")
def qcache(tmp_path_factory):
    """One quality-net cache for the module (the tiny net is trained once)."""
    return str(tmp_path_factory.mktemp("qcache"))


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
    cfg = _train_cfg(run_dir)
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


def test_resume_equals_uninterrupted(trained, tmp_path):
    run_dir, out = trained
    cfg = _train_cfg(tmp_path / "resumed", stop_after=3)
    part = TD.run(resolve_train(cfg))
    assert part == {"stopped_at": 3, "run_dir": str(tmp_path / "resumed")}
    assert not os.path.exists(tmp_path / "resumed" / "model.json")
    with pytest.raises(FileExistsError, match="--resume"):
        TD.run(resolve_train(_train_cfg(tmp_path / "resumed")))
    resumed = TD.run(resolve_train(_train_cfg(tmp_path / "resumed", resume=True)))
    a, b = load_model(run_dir), load_model(str(tmp_path / "resumed"))
    for x, y in zip(jax.tree.leaves((a.params, a.ema, a.rest)), jax.tree.leaves((b.params, b.ema, b.rest))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The interrupted run also logged its last step (3); every other row is identical.
    assert [r for r in resumed["loss_curve"] if r[0] != 3] == out["loss_curve"]


def _per_sample_reference(cfg, n):
    """Sample i alone (batch of 1 at offset i), with the library driver: the contract."""
    g = SP.mixture(resolve_sample(cfg))
    sig = schedules.karras_sigmas(cfg.solver.steps, cfg.solver.sigma_min, cfg.solver.sigma_max,
                                  cfg.solver.rho)
    key = jax.random.key(cfg.seed)

    @jax.jit
    def one(i):
        solver = solvers.get_solver("edm", s_churn=cfg.solver.s_churn)
        x_T = solvers.prior_sample(key, (1, *cfg.gmm.image_shape), sig[0], offset=i)
        x, _ = solvers.sample(solver, G.denoiser(g), x_T, sig, key, (i % g.num_components)[None],
                              offset=i)
        return x[0]

    return np.stack([np.asarray(one(jnp.int32(i))) for i in range(n)])


def test_gmm_sampling_is_device_and_batch_invariant(tmp_path):
    over = {"source": "gmm", "solver.name": "edm_stochastic", "solver.s_churn": 5.0}
    one = SP.generate(resolve_sample(_sample_cfg(tmp_path, num_devices=1, **over)))
    eight = SP.generate(resolve_sample(_sample_cfg(tmp_path, num_devices=8, **over)))
    big = SP.generate(resolve_sample(_sample_cfg(tmp_path, num_devices=8, batch_size=16, **over)))
    assert one["mesh_size"] == 1 and eight["mesh_size"] == 8
    assert one["samples"].shape == (20, 4, 4, 1)
    np.testing.assert_array_equal(one["samples"], eight["samples"])
    np.testing.assert_allclose(big["samples"], one["samples"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(one["labels"], np.arange(20) % 4)
    assert one["nfe"] == 2 * 3 - 1  # Heun-type steps, Euler on the last step to sigma = 0
    # Batch-of-1 runs round differently (XLA rewrites divisions by a broadcast scalar only for
    # N > 1); states start at sigma_max = 80, so float32 rounding is ~1e-5 * 80 per operation.
    ref = _per_sample_reference(_sample_cfg(tmp_path, **over), 20)
    np.testing.assert_allclose(one["samples"], ref, rtol=0, atol=5e-4)


def test_sample_cli_gmm_writes_outputs(tmp_path):
    rc = cli.main(["sample", "--config", "sample_digits", "--config.source=gmm",
                   f"--config.run_dir={tmp_path}", "--config.num_samples=16",
                   "--config.batch_size=8", "--config.solver.name=dpmpp_2m",
                   "--config.solver.steps=4", "--config.progress=False"])
    assert rc == 0
    z = np.load(tmp_path / "samples.npz")
    assert z["samples"].shape == (16, 4, 4, 1) and z["images"].dtype == np.uint8
    np.testing.assert_array_equal(z["images"], jdata.model_space_to_uint8(z["samples"]))
    np.testing.assert_array_equal(z["nfe"], 4)
    res = json.loads((tmp_path / "results.json").read_text())
    g = SP.mixture(resolve_sample(_sample_cfg(tmp_path, source="gmm")))
    np.testing.assert_allclose(
        res["gmm_mean_log_density"],
        float(jnp.mean(G.log_prob(g, jnp.asarray(z["samples"]).reshape(16, -1)))), rtol=1e-5)
    assert os.path.exists(tmp_path / "samples.png")


def test_sample_from_trained_run(trained, tmp_path, monkeypatch, qcache):
    run_dir, _ = trained
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", qcache)
    cfg = _sample_cfg(tmp_path / "out", model_dir=run_dir, num_samples=12)
    out = SP.run(resolve_sample(cfg))
    z = np.load(tmp_path / "out" / "samples.npz")
    assert z["samples"].shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(z["labels"], -1)
    assert out["nfe"] == 5 and os.path.exists(tmp_path / "out" / "samples.png")
    # Oracle: the first batch equals the library driver on the loaded EMA denoiser.
    m = load_model(run_dir)
    sig = schedules.karras_sigmas(3, 0.002, 80.0, 7.0)
    key = jax.random.key(cfg.seed)
    x_T = solvers.prior_sample(key, (8, 8, 8, 1), sig[0])
    x, _ = solvers.sample(solvers.heun(), m.make_denoise(m.state()), x_T, sig, key)
    np.testing.assert_allclose(z["samples"][:8], np.asarray(x), rtol=1e-4, atol=1e-5)
    for k in ("frechet_distance", "mean_entropy", "classifier_score",
              "frechet_distance_real_train_vs_test"):
        assert np.isfinite(out[k]), k
    assert "classifier_accuracy" not in out  # unconditional samples have no intended class


def test_quality_net_cache_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path))
    spec = QN.QualityNetSpec("digits", image_size=8, width=8, feature_dim=16, epochs=4, lr=1e-2)
    net = QN.get_quality_net(spec)
    assert QN.cache_entry(spec).is_dir() and 0.5 < net.test_accuracy <= 1.0
    again = QN.get_quality_net(spec)  # loaded, not retrained
    for a, b in zip(jax.tree.leaves(net), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    test = jdata.load("digits", "test", image_size=8)
    real = jdata.to_model_space(test.images)
    samples = real[:40] + 0.3 * np.random.default_rng(0).standard_normal(real[:40].shape).astype(np.float32)
    labels = test.labels[:40]
    r = QN.sample_quality(samples, real, net, labels)
    # Direct formulas on the network's outputs (net passed through jit as a pytree).
    f_s = np.asarray(jax.jit(lambda n, x: n.features(x))(net, jnp.asarray(samples)))
    f_r = np.asarray(net.features(jnp.asarray(real)))
    np.testing.assert_allclose(r["frechet_distance"], Q.frechet_distance_from_features(f_s, f_r),
                               rtol=1e-4)
    lg = np.asarray(net.logits(jnp.asarray(samples)), np.float64)
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(r["classifier_accuracy"], np.mean(lg.argmax(1) == labels))
    np.testing.assert_allclose(r["mean_entropy"], np.mean(-(p * np.log(p)).sum(1)), rtol=1e-4)
    pm = p.mean(0)
    np.testing.assert_allclose(r["classifier_score"],
                               np.exp(np.mean((p * (np.log(p) - np.log(pm))).sum(1))), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(net.log_prob(jnp.asarray(samples), labels)),
                               np.log(p[np.arange(40), labels]), rtol=1e-4, atol=1e-5)


def test_bad_configs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="'solver.name' = 'rk45' is not one of"):
        SP.run(resolve_sample(_sample_cfg(tmp_path, source="gmm", **{"solver.name": "rk45"})))
    with pytest.raises(SpecError, match="'model_dir': model run directory .* does not exist"):
        SP.run(resolve_sample(_sample_cfg(tmp_path, model_dir=str(tmp_path / "nope"))))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SpecError, match="model.json missing"):
        SP.run(resolve_sample(_sample_cfg(tmp_path, model_dir=str(tmp_path / "empty"))))
    with pytest.raises(ValueError, match="'batch_size' = 12 must be a multiple"):
        SP.generate(resolve_sample(_sample_cfg(tmp_path, source="gmm", batch_size=12)))
    with pytest.raises(ValueError, match="'guidance.name' = 'nonexistent'"):
        SP.run(resolve_sample(_sample_cfg(tmp_path, source="gmm", **{"guidance.name": "nonexistent"})))
    with pytest.raises(ValueError, match="'labels' = 7 outside"):
        SP.generate(resolve_sample(_sample_cfg(tmp_path, source="gmm", labels="7")))
    with pytest.raises(ValueError, match="'source' = 'vae'"):
        SP.run(resolve_sample(_sample_cfg(tmp_path, source="vae")))
    with pytest.raises(ValueError, match="'model.name' = 'dit'"):
        TD.run(resolve_train(_train_cfg(tmp_path / "t", **{"model.name": "dit"})))
    with pytest.raises(ValueError, match="'train.batch_size' = 12 must be a multiple"):
        TD.run(resolve_train(_train_cfg(tmp_path / "t", **{"train.batch_size": 12})))


@pytest.mark.slow
def test_conditional_unet_run_and_labelled_sampling(tmp_path, monkeypatch, qcache):
    """A real (tiny) U-Net, class-conditional: labels reach the model and the quality figures.
    Euler everywhere: one U-Net per solver step keeps the compile small."""
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", qcache)
    cfg = _train_cfg(tmp_path / "cond", conditional=True, num_devices=1, **{
        "model.name": "unet", "model.base_channels": 8, "model.attention": False,
        "train.steps": 2, "train.batch_size": 8, "sample.every": 0, "sample.num": 10,
        "sample.solver": "euler"})
    out = TD.run(resolve_train(cfg))
    assert out["model"]["num_classes"] == 10 and out["model"]["name"] == "unet"
    m = load_model(str(tmp_path / "cond"))
    assert m.graphdef is not None and m.num_classes == 10
    res = SP.run(resolve_sample(_sample_cfg(tmp_path / "s", model_dir=str(tmp_path / "cond"), num_samples=10,
                             batch_size=10, num_devices=1, **{"solver.name": "euler"})))
    z = np.load(tmp_path / "s" / "samples.npz")
    np.testing.assert_array_equal(z["labels"], np.arange(10))
    assert res["nfe"] == 3
    net = QN.get_quality_net(QN.QualityNetSpec("digits", image_size=8, width=8, feature_dim=16,
                                               epochs=1))
    pred = QN.predict(net, z["samples"]).argmax(1)
    assert res["classifier_accuracy"] == pytest.approx(np.mean(pred == np.arange(10)))
