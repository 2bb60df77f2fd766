"""The reward-guided samplers (`jaxdiff.diffusion.reward_samplers`) through `jaxdiff sample` on
the analytic GMM source: each sampler against a straightforward call of the library method on
the whole sample set (per-sample RNG makes batches of 8 equal to one call on all samples), 1 vs 8
devices, exact cost counters, the rewards (incl. the quality-net reward on real digits) and bad
input.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data as jdata
from jaxdiff import sharding as shd
from jaxdiff.config_utils import load_config, set_values
from jaxdiff.diffusion import guidance as GD
from jaxdiff.diffusion import schedules, solvers
from jaxdiff.diffusion import quality_net as QN
from jaxdiff.diffusion import reward_samplers as RS
from jaxdiff.diffusion.batch_samplers import SamplingContext
from jaxdiff.pipelines import sample as SP
from jaxdiff.specs.sample import resolve


def _reward(settings: dict, source):
    return RS.make_reward(RS.RewardSettings(**settings), source)

T, N, B = 4, 16, 8


def _cfg(tmp_path, **over):
    c = load_config("lidar_digits")
    c.source = "gmm"
    c.labels = "none"
    c.solver.steps = T
    c.num_samples, c.batch_size = N, B
    c.num_devices = 1
    c.guidance.num_lookahead, c.guidance.lookahead_steps = 6, 2
    c.guidance.reward.target = 1
    c.progress = False
    c.run_dir = str(tmp_path)
    return set_values(c, **over)


def _problem(cfg):
    src = SP.load_source(resolve(cfg))
    den = src.make_denoise(src.state)
    sig = schedules.karras_sigmas(T, cfg.solver.sigma_min, cfg.solver.sigma_max, cfg.solver.rho)
    key = jax.random.key(cfg.seed)
    x_T = solvers.prior_sample(key, (N, *cfg.gmm.image_shape), sig[0])
    reward = RS.make_reward(resolve(cfg).guidance.settings.reward, src)
    return den, sig, key, x_T, reward.make(reward.state)


def test_lidar_builder_matches_library_costs_and_devices(tmp_path):
    cfg = _cfg(tmp_path)
    one = SP.generate(resolve(cfg))
    eight = SP.generate(resolve(_cfg(tmp_path, num_devices=8)))
    np.testing.assert_allclose(eight["samples"], one["samples"], rtol=0, atol=1e-4)
    den, sig, key, x_T, rf = _problem(cfg)
    ref, aux = jax.jit(lambda x: GD.lidar(key, den, rf, x, sig, num_lookahead=6,
                                          lookahead_steps=2, lam=1.0, scale=4.0,
                                          solver=solvers.ddim(1.0)))(x_T)
    np.testing.assert_allclose(one["samples"], np.asarray(ref), rtol=0, atol=1e-4)
    a = one["aux"]
    assert a["nfe"] == T and a["denoiser_fwd"] == T and a["nfe_executed"] == T
    assert a["denoiser_bwd"] == a["reward_fwd"] == a["reward_bwd"] == 0
    # DPM-Solver++(2M), 2 steps: 2 NFE per lookahead sample; one reward call per sample.
    assert a["lookahead_denoiser_fwd"] == 6 * 2 == int(aux.lookahead_cost.denoiser_fwd)
    assert a["lookahead_reward_fwd"] == 6 and a["lookahead_size"] == 6
    # The lookahead set is drawn once per run and reused by every batch.
    spec = resolve(cfg)
    ctx = SamplingContext(SP.load_source(spec), "ddim", B, shd.data_mesh(1), None)
    fn = RS.lidar_sampler(ctx, spec.guidance.settings, RS.make_reward(spec.guidance.settings.reward,
                                                                      ctx.source))
    hp = {"eta": jnp.float32(1.0)}
    fn(ctx.source.state, key, jnp.int32(0), sig, hp)
    fn(ctx.source.state, key, jnp.int32(B), sig, hp)
    assert fn.lookahead(ctx.source.state, key, sig) is fn.lookahead(ctx.source.state, key, sig)
    # subset "top": the 3 best of the 6 lookahead rewards.
    top = SP.generate(resolve(_cfg(tmp_path, **{"guidance.subset": 3, "guidance.subset_mode": "top"})))
    assert top["aux"]["lookahead_size"] == 3
    np.testing.assert_allclose(top["aux"]["lookahead_reward_max"], a["lookahead_reward_max"],
                               rtol=1e-6)
    assert top["aux"]["lookahead_reward_mean"] >= a["lookahead_reward_mean"]


def test_gradient_builder_matches_library_and_refuses_ink(tmp_path):
    cfg = _cfg(tmp_path, **{"guidance.name": "gradient", "guidance.scale": 0.5,
                            "guidance.window": (0.1, 10.0)})
    out = SP.generate(resolve(cfg))
    den, sig, key, x_T, rf = _problem(cfg)
    ref, _ = jax.jit(lambda x: GD.gradient_guidance_sample(
        key, den, rf, x, sig, lam=1.0, scale=0.5, window=(0.1, 10.0),
        solver=solvers.ddim(1.0)))(x_T)
    np.testing.assert_allclose(out["samples"], np.asarray(ref), rtol=0, atol=1e-4)
    a = out["aux"]
    assert a["nfe"] == a["denoiser_fwd"] == a["denoiser_bwd"] == a["reward_fwd"] == \
        a["reward_bwd"] == T
    with pytest.raises(ValueError, match="'ink' is not differentiable"):
        SP.generate(resolve(_cfg(tmp_path, **{"guidance.name": "gradient",
                                      "guidance.reward.name": "ink"})))


def test_best_of_n_builder_is_the_best_draw(tmp_path):
    cfg = _cfg(tmp_path, **{"guidance.name": "best_of_n", "guidance.group_size": 3,
                            "solver.name": "heun"})
    out = SP.generate(resolve(cfg))
    den, sig, key, _, rf = _problem(cfg)
    # Reference: draws (i * 3 + j) of the plain Heun sampler, keep the best of every 3.
    x_T = solvers.prior_sample(key, (3 * N, *cfg.gmm.image_shape), sig[0])
    draws, _ = solvers.sample(solvers.heun(), den, x_T, sig, key)
    r = np.asarray(rf(draws)).reshape(N, 3)
    best = np.asarray(draws).reshape(N, 3, -1)[np.arange(N), r.argmax(1)]
    np.testing.assert_allclose(out["samples"].reshape(N, -1), best, rtol=0, atol=1e-4)
    a = out["aux"]
    assert a["nfe"] == 2 * T - 1 and a["denoiser_fwd"] == 3 * (2 * T - 1)
    assert a["reward_fwd"] == 3 and a["denoiser_bwd"] == a["reward_bwd"] == 0
    np.testing.assert_allclose(a["reward_mean"], r.max(1).mean(), rtol=1e-5)


def test_svdd_and_fk_builders_match_library_and_costs(tmp_path):
    cfg = _cfg(tmp_path, **{"guidance.name": "svdd", "guidance.num_candidates": 3})
    out = SP.generate(resolve(cfg))
    den, sig, key, x_T, rf = _problem(cfg)
    ref, _ = jax.jit(lambda x: GD.svdd_sample(key, den, rf, x, sig, num_candidates=3,
                                              eta=1.0))(x_T)
    np.testing.assert_allclose(out["samples"], np.asarray(ref), rtol=0, atol=1e-4)
    # 1 initial call + 3 candidates on each of the T - 1 steps that end above sigma = 0.
    assert out["aux"]["denoiser_fwd"] == 1 + 3 * (T - 1) and out["aux"]["reward_fwd"] == 3 * T

    cfg = _cfg(tmp_path, **{"guidance.name": "fk", "guidance.num_particles": 4,
                            "guidance.lam": 3.0, "guidance.resample": "1,2,1"})
    out = SP.generate(resolve(cfg))
    mask = GD.fk_resample_schedule(T, 1, 2, 1)  # steps 1, 2 and the last one
    ref, aux = jax.jit(lambda x: GD.fk_steering_sample(
        key, den, rf, x, sig, num_particles=4, lam=3.0, resample_steps=mask, eta=1.0))(x_T)
    np.testing.assert_allclose(out["samples"], np.asarray(ref), rtol=0, atol=1e-4)
    assert out["aux"]["denoiser_fwd"] == T and out["aux"]["reward_fwd"] == int(mask.sum()) == 3
    np.testing.assert_allclose(out["aux"]["resample_fraction"],
                               float(np.mean(np.asarray(aux.trace["resampled"]))), atol=1e-6)


def test_rewards_and_quality_net_space(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    src = SP.load_source(resolve(cfg))
    x = jax.random.normal(jax.random.key(1), (5, 4, 4, 1)) * 1.5
    br = _reward({"name": "brightness", "clip": False}, src)
    np.testing.assert_allclose(br.make(br.state)(x), np.asarray(x).reshape(5, -1).mean(1),
                               rtol=1e-6)
    ink = _reward({"name": "ink", "threshold": 0.5}, src)
    np.testing.assert_allclose(ink.make(ink.state)(x),
                               (np.asarray(x).reshape(5, -1) > 0.5).mean(1))
    assert br.differentiable and not ink.differentiable
    # class_logprob on digits: the quality net in model space [-1, 1], the denoiser's space.
    monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path / "cache"))
    fake = src._replace(dataset="digits", image_size=8, gmm=None, sample_shape=(8, 8, 1))
    q = dict(seed=0, width=8, feature_dim=16, epochs=3, batch_size=128, lr=1e-2)
    test = jdata.load("digits", "test", image_size=8)
    real = jnp.asarray(jdata.to_model_space(test.images[:200]))
    scores = np.stack([np.asarray(jax.jit(lambda st, x, r=r: r.make(st)(x))(r.state, real)) for r in (
        _reward({"name": "class_logprob", "target": t, "quality": q}, fake)
        for t in range(10))], 1)
    net = QN.get_quality_net(QN.QualityNetSpec("digits", image_size=8, **q))
    np.testing.assert_allclose(scores[:, 3], np.asarray(net.log_prob(real, np.full(200, 3))),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(scores).sum(1), 1.0, atol=1e-4)  # a distribution over y
    # Right scaling: the reward identifies real digits' classes (wrong space -> near chance).
    assert np.mean(scores.argmax(1) == test.labels[:200]) > 0.8
    # GMM: exact Bayes posterior.
    g = src.gmm
    cl = _reward({"name": "class_logprob", "target": 2}, src)
    flat = x.reshape(5, -1)
    comp = jnp.stack([jnp.sum(jax.scipy.stats.norm.logpdf(flat, g.means[k], jnp.sqrt(
        g.variances[k])), -1) for k in range(4)], 1)
    np.testing.assert_allclose(cl.make(cl.state)(x), jax.nn.log_softmax(comp, 1)[:, 2],
                               rtol=1e-4, atol=1e-4)


def test_bad_input_fails_clearly(tmp_path, monkeypatch):
    bad = {
        "'guidance.reward.name' = 'ssim'": {"guidance.reward.name": "ssim"},
        "'guidance.reward.target' = 9": {"guidance.reward.target": 9},
        "'guidance.subset' = 7": {"guidance.subset": 7},
        "'guidance.subset_mode' = 'best'": {"guidance.subset_mode": "best"},
        "'guidance.window'": {"guidance.window": (2.0, 1.0)},
        "'guidance.lam' must be": {"guidance.lam": 0.0},
        "'guidance.num_lookahead' must be": {"guidance.num_lookahead": 0},
        "'solver.name' = 'heun' must be 'ddim'": {"guidance.name": "svdd", "solver.name": "heun"},
        "'guidance.num_particles' = 3 must divide": {"guidance.name": "fk",
                                                     "guidance.num_particles": 3},
        "'guidance.resample'": {"guidance.name": "fk", "guidance.resample": "every"},
    }
    for msg, over in bad.items():
        with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
            SP.generate(resolve(_cfg(tmp_path, **over)))
    with pytest.raises(ValueError, match="'guidance.bogus' is not a 'lidar' hyperparameter"):
        cfg = _cfg(tmp_path)
        cfg.guidance.bogus = 1
        resolve(cfg)
    # NaN rewards of the lookahead set are caught on the host.
    real = RS.make_reward

    def nan_reward(settings, source, data_dir=""):
        r = real(settings, source)
        return r._replace(make=lambda s: lambda x: jnp.full((x.shape[0],), jnp.nan))

    monkeypatch.setattr(RS, "make_reward", nan_reward)
    with pytest.raises(ValueError, match="NaN/Inf"):
        SP.generate(resolve(_cfg(tmp_path)))
