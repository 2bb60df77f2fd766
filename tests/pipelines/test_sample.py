"""`jaxdiff sample` end to end: 1 vs 8 devices and batch-size invariance with the analytic GMM
denoiser against per-sample solver runs, the CLI's outputs, sampling a trained run against the
library driver, bad configurations."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import cli
from jaxdiff import data as jdata
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import schedules, solvers
from jaxdiff.diffusion.saved import load_model
from jaxdiff.pipelines import sample as SP
from jaxdiff.pipelines import train_denoiser as TD
from jaxdiff.specs.base import SpecError
from jaxdiff.specs.sample import resolve as resolve_sample
from jaxdiff.specs.train_denoiser import resolve as resolve_train

from tests.helpers import tiny_sample_config, tiny_train_denoiser_config


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
    one = SP.generate(resolve_sample(tiny_sample_config(tmp_path, num_devices=1, **over)))
    eight = SP.generate(resolve_sample(tiny_sample_config(tmp_path, num_devices=8, **over)))
    big = SP.generate(resolve_sample(tiny_sample_config(tmp_path, num_devices=8, batch_size=16, **over)))
    assert one["mesh_size"] == 1 and eight["mesh_size"] == 8
    assert one["samples"].shape == (20, 4, 4, 1)
    np.testing.assert_array_equal(one["samples"], eight["samples"])
    np.testing.assert_allclose(big["samples"], one["samples"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(one["labels"], np.arange(20) % 4)
    assert one["nfe"] == 2 * 3 - 1  # Heun-type steps, Euler on the last step to sigma = 0
    # Batch-of-1 runs round differently (XLA rewrites divisions by a broadcast scalar only for
    # N > 1); states start at sigma_max = 80, so float32 rounding is ~1e-5 * 80 per operation.
    ref = _per_sample_reference(tiny_sample_config(tmp_path, **over), 20)
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
    g = SP.mixture(resolve_sample(tiny_sample_config(tmp_path, source="gmm")))
    np.testing.assert_allclose(
        res["gmm_mean_log_density"],
        float(jnp.mean(G.log_prob(g, jnp.asarray(z["samples"]).reshape(16, -1)))), rtol=1e-5)
    assert os.path.exists(tmp_path / "samples.png")


def test_sample_from_trained_run(trained, tmp_path, monkeypatch, qcache):
    run_dir, _ = trained
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", qcache)
    cfg = tiny_sample_config(tmp_path / "out", model_dir=run_dir, num_samples=12)
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


def test_bad_configs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="'solver.name' = 'rk45' is not one of"):
        SP.run(resolve_sample(tiny_sample_config(tmp_path, source="gmm", **{"solver.name": "rk45"})))
    with pytest.raises(SpecError, match="'model_dir': model run directory .* does not exist"):
        SP.run(resolve_sample(tiny_sample_config(tmp_path, model_dir=str(tmp_path / "nope"))))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SpecError, match="model.json missing"):
        SP.run(resolve_sample(tiny_sample_config(tmp_path, model_dir=str(tmp_path / "empty"))))
    with pytest.raises(ValueError, match="'batch_size' = 12 must be a multiple"):
        SP.generate(resolve_sample(tiny_sample_config(tmp_path, source="gmm", batch_size=12)))
    with pytest.raises(ValueError, match="'guidance.name' = 'nonexistent'"):
        SP.run(resolve_sample(tiny_sample_config(tmp_path, source="gmm", **{"guidance.name": "nonexistent"})))
    with pytest.raises(ValueError, match="'labels' = 7 outside"):
        SP.generate(resolve_sample(tiny_sample_config(tmp_path, source="gmm", labels="7")))
    with pytest.raises(ValueError, match="'source' = 'vae'"):
        SP.run(resolve_sample(tiny_sample_config(tmp_path, source="vae")))
    with pytest.raises(ValueError, match="'model.name' = 'dit'"):
        TD.run(resolve_train(tiny_train_denoiser_config(tmp_path / "t", **{"model.name": "dit"})))
    with pytest.raises(ValueError, match="'train.batch_size' = 12 must be a multiple"):
        TD.run(resolve_train(tiny_train_denoiser_config(tmp_path / "t", **{"train.batch_size": 12})))


EDM_FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures",
                            "edm")


@pytest.mark.skipif(not os.path.isdir(EDM_FIXTURES), reason="no shared/fixtures/edm")
def test_sample_from_an_official_edm_network_pickle_and_its_import(tmp_path):
    """source=edm: the sampler's denoiser (the port's raw SongUNet under jaxdiff's own EDM
    preconditioner, labels one-hot) reproduces the upstream outputs recorded with the fixture;
    sampling from the pickle and from its `jaxdiff import-checkpoint` directory gives the same
    samples bit for bit, over 8 devices."""
    from jaxdiff.models import edm
    pkl = os.path.join(EDM_FIXTURES, "edm_ddpmpp_cond.pkl")
    io = dict(np.load(os.path.join(EDM_FIXTURES, "edm_ddpmpp_cond_io.npz")))
    over = {"source": "edm", "quality.enabled": False, "num_devices": 8}
    spec = resolve_sample(tiny_sample_config(tmp_path / "a", model_dir=pkl, **over))
    assert spec.num_classes == 10
    src = SP.load_source(spec)
    assert src.sample_shape == (16, 16, 3) and src.num_classes == 10 and src.dataset is None
    x = jnp.asarray(io["x"].transpose(0, 2, 3, 1))
    cond = jnp.asarray(io["class_labels"].argmax(1))
    out = np.asarray(jax.jit(lambda s, x, sg, c: src.make_denoise(s)(x, sg, c))(
        src.state, x, jnp.asarray(io["sigma"]), cond)).transpose(0, 3, 1, 2)
    err = np.abs(out - io["out"]).reshape(4, -1).max(1) / np.abs(io["out"]).reshape(4, -1).max(1)
    assert err.max() <= 1e-4, err
    a = SP.run(spec)
    edm.import_checkpoint(pkl, tmp_path / "imported")
    b = SP.run(resolve_sample(tiny_sample_config(tmp_path / "b", model_dir=str(
        tmp_path / "imported"), **over)))
    sa = np.load(tmp_path / "a" / "samples.npz")
    sb = np.load(tmp_path / "b" / "samples.npz")
    np.testing.assert_array_equal(sa["samples"], sb["samples"])
    assert sa["samples"].shape == (20, 16, 16, 3) and np.isfinite(sa["samples"]).all()
    np.testing.assert_array_equal(sa["labels"], np.arange(20) % 10)
    assert a["nfe"] == b["nfe"] == 5     # Heun, 3 levels: 2 + 2 + 1 evaluations
