"""Guided sampling (`jaxdiff.diffusion.guidance`) against exact answers on Gaussian mixtures with
linear/quadratic rewards (whose reward-tilted targets are again Gaussian mixtures).

LiDAR: the guided denoiser approaches the exact tilted denoiser, the sampler tilts toward the
reward-tilted target, traced hyperparameters, sharded particles, any core solver, the two phases
end to end, bad inputs. Baselines (gradient guidance, best-of-N, SVDD, FK steering): analytic
Tweedie Jacobians, reductions to the base sampler, argmax semantics written straightforwardly
here, and exact cost counters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import guidance as GD
from jaxdiff.diffusion import lookahead as L
from jaxdiff.diffusion import rewards as R
from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S
from jaxdiff.sharding import data_mesh, replicate, shard_batch

from tests.helpers import LIN, QUAD, exact_set, tilt_mixture


SIG = sch.karras_sigmas(6, 0.01)  # 6 steps, the last to sigma = 0


def _posterior_cov(g, x, sigma):
    """Exact Cov[x0 | x] of a diagonal mixture: sum_k r_k (C_k + m_k m_k^T) - m m^T, with
    C_k = v_k s^2/(v_k + s^2), m_k = mu_k + v_k/(v_k + s^2) (x - mu_k)."""
    logits, _, _ = G.component_terms(g, x, sigma, None)
    resp = jax.nn.softmax(logits, -1)  # [N, K]
    v, s2 = g.variances[None], jnp.square(sigma)[:, None, None]
    m_k = g.means[None] + v / (v + s2) * (x[:, None] - g.means[None])
    c_k = v * s2 / (v + s2)
    second = jnp.einsum("nk,nkd,nke->nde", resp, m_k, m_k) + jnp.einsum(
        "nk,nkd->nd", resp, c_k)[:, :, None] * jnp.eye(x.shape[1])
    m = jnp.einsum("nk,nkd->nd", resp, m_k)
    return second - m[:, :, None] * m[:, None, :]


def test_gradient_guidance_matches_analytic_tweedie_jacobian(key):
    """D' = D + scale sigma^2 lam J^T grad r(D), with the exact Jacobian J = Cov[x0|x]/sigma^2."""
    g = tilt_mixture()
    x = 1.5 * jax.random.normal(key, (6, 2))
    sigma = jnp.array([0.3, 0.7, 1.0, 2.0, 5.0, 20.0])
    lam, scale = 0.8, 1.7
    d0 = G.posterior_mean(g, x, sigma)
    grad_r = -(d0 - QUAD.center) / jnp.square(QUAD.scale)
    expect = d0 + scale * lam * jnp.einsum("nde,ne->nd", _posterior_cov(g, x, sigma), grad_r)
    ours = GD.tweedie_grad_denoiser(G.denoiser(g), QUAD, lam, scale)(x, sigma)
    np.testing.assert_allclose(ours, expect, rtol=1e-4, atol=1e-5)
    # Gaussian data + linear reward: Tweedie is exact, so the guided denoiser IS the tilted one
    one = G.gaussian_mixture(jnp.ones(1), jnp.array([[0.5, -1.0]]), variances=jnp.array([[0.6, 0.3]]))
    tilted, _ = R.tilt_gaussian_mixture(one, LIN, lam)
    guided = GD.tweedie_grad_denoiser(G.denoiser(one), LIN, lam, 1.0)(x, sigma)
    np.testing.assert_allclose(guided, G.posterior_mean(tilted, x, sigma), rtol=1e-5, atol=1e-5)


def test_gradient_guidance_sampler_cost_window_and_no_recompile(key):
    g = tilt_mixture()
    x_T = S.prior_sample(key, (8, 2), 80.0)
    traces = []

    @jax.jit
    def run(lam, scale, lo, hi):
        traces.append(1)
        return GD.gradient_guidance_sample(key, G.denoiser(g), LIN, x_T, SIG, lam=lam, scale=scale,
                                           window=(lo, hi))

    x1, aux = run(1.0, 1.0, 0.0, jnp.inf)
    x2, _ = run(2.0, 0.5, 0.1, 50.0)
    x0, _ = run(1.0, 0.0, 0.0, jnp.inf)  # scale 0 = the base DDIM(eta=1) sampler
    assert len(traces) == 1 and not np.allclose(x1, x2)
    base, _ = S.sample(S.ddim(1.0), G.denoiser(g), x_T, SIG, key)
    np.testing.assert_allclose(x0, base, rtol=1e-6, atol=1e-6)
    assert float(LIN(x1).mean()) > float(LIN(base).mean())
    assert aux.cost.as_dict() == {k: 8 * 6 for k in ("denoiser_fwd", "denoiser_bwd", "reward_fwd",
                                                      "reward_bwd")}


def test_best_of_n_picks_the_group_maximum(key):
    g = tilt_mixture()
    x_T = S.prior_sample(key, (12, 2), 80.0)
    best, aux = GD.best_of_n(key, G.denoiser(g), QUAD, x_T, SIG, group_size=4)
    samples, _ = S.sample(S.ddim(1.0), G.denoiser(g), x_T, SIG, key)
    r = np.asarray(QUAD(samples)).reshape(3, 4)
    expect = np.asarray(samples).reshape(3, 4, 2)[np.arange(3), r.argmax(1)]
    np.testing.assert_array_equal(best, expect)
    np.testing.assert_array_equal(aux.rewards, r.max(1))
    np.testing.assert_array_equal(aux.trace["index"], r.argmax(1))
    assert aux.cost.as_dict() == {"denoiser_fwd": 12 * 6, "denoiser_bwd": 0, "reward_fwd": 12,
                                  "reward_bwd": 0}
    with pytest.raises(ValueError, match="group_size"):
        GD.best_of_n(key, G.denoiser(g), QUAD, x_T, SIG, group_size=5)


@pytest.mark.parametrize("potential", ["diff", "max", "sum", "rt"])
def test_fk_steering_with_zero_reward_is_the_base_sampler(key, potential):
    g = tilt_mixture()
    x_T = S.prior_sample(key, (8, 2), 80.0)
    zero = lambda x: jnp.zeros((x.shape[0],))  # noqa: E731
    x, aux = GD.fk_steering_sample(key, G.denoiser(g), zero, x_T, SIG, num_particles=4, lam=10.0,
                                   potential=potential)
    base, _ = S.sample(S.ddim(1.0), G.denoiser(g), x_T, SIG, key)
    np.testing.assert_array_equal(x, base)
    assert not bool(aux.trace["resampled"].any())
    np.testing.assert_allclose(aux.trace["ess"], 4.0, rtol=1e-6)
    assert aux.cost.as_dict() == {"denoiser_fwd": 8 * 6, "denoiser_bwd": 0, "reward_fwd": 8 * 6,
                                  "reward_bwd": 0}


def test_fk_steering_resampling_semantics_and_cost(key):
    """Resampling only at the last step with a huge tilt: every particle of a group becomes the
    group's best final sample (the last step to sigma = 0 returns D(x), the rewarded estimate)."""
    g = tilt_mixture()
    x_T = S.prior_sample(key, (12, 2), 80.0)
    last = GD.fk_resample_schedule(6, start=10, end=10, freq=1)  # beyond T: only the last step
    np.testing.assert_array_equal(last, [False] * 5 + [True])
    x, aux = GD.fk_steering_sample(key, G.denoiser(g), QUAD, x_T, SIG, num_particles=4, lam=1e4,
                                   potential="rt", resample_steps=last)
    base, _ = S.sample(S.ddim(1.0), G.denoiser(g), x_T, SIG, key)
    r = np.asarray(QUAD(base)).reshape(3, 4)
    best = np.asarray(base).reshape(3, 4, 2)[np.arange(3), r.argmax(1)]
    np.testing.assert_allclose(np.asarray(x).reshape(3, 4, 2), np.repeat(best[:, None], 4, 1),
                               rtol=1e-6)
    np.testing.assert_array_equal(aux.trace["resampled"][-1], [True] * 3)
    assert aux.cost.as_dict() == {"denoiser_fwd": 12 * 6, "denoiser_bwd": 0, "reward_fwd": 12,
                                  "reward_bwd": 0}
    np.testing.assert_array_equal(GD.fk_resample_schedule(100, 20, 80, 20).nonzero()[0],
                                  [20, 40, 60, 80, 99])
    # steering raises the mean reward (tilt 2, resampling every step, 64 particles per group)
    xs = S.prior_sample(key, (128, 2), 80.0)
    steered, aux = GD.fk_steering_sample(key, G.denoiser(g), QUAD, xs, SIG, num_particles=64,
                                         lam=2.0)
    plain, _ = S.sample(S.ddim(1.0), G.denoiser(g), xs, SIG, key)
    assert float(QUAD(steered).mean()) > float(QUAD(plain).mean()) + 0.3
    with pytest.raises(ValueError, match="potential"):
        GD.fk_steering_sample(key, G.denoiser(g), QUAD, x_T, SIG, num_particles=4, lam=1.0,
                              potential="exp")
    with pytest.raises(ValueError, match="num_particles"):
        GD.fk_steering_sample(key, G.denoiser(g), QUAD, x_T, SIG, num_particles=5, lam=1.0)
    with pytest.raises(ValueError, match="lam"):
        GD.fk_steering_sample(key, G.denoiser(g), QUAD, x_T, SIG, num_particles=4, lam=0.0)


def test_svdd_one_candidate_is_base_and_greedy_selection(key):
    g = tilt_mixture()
    den = G.denoiser(g)
    x_T = S.prior_sample(key, (8, 2), 80.0)
    x1, aux1 = GD.svdd_sample(key, den, QUAD, x_T, SIG, num_candidates=1)
    base, _ = S.sample(S.ddim(1.0), den, x_T, SIG, key)
    np.testing.assert_allclose(x1, base, rtol=1e-6, atol=1e-6)
    assert aux1.cost.as_dict() == {"denoiser_fwd": 8 * (1 + 5), "denoiser_bwd": 0,
                                   "reward_fwd": 8 * 6, "reward_bwd": 0}
    # two-step grid: step 0 picks argmax_m r(D(c_m; s1)) among candidates c_m, step 1 returns D
    sig2 = jnp.array([5.0, 1.0, 0.0])
    M = 5
    x, aux = GD.svdd_sample(key, den, QUAD, x_T, sig2, num_candidates=M)
    assert aux.cost.as_dict() == {"denoiser_fwd": 8 * (1 + M), "denoiser_bwd": 0,
                                  "reward_fwd": 8 * M * 2, "reward_bwd": 0}
    assert int(aux.nfe) == 1 + M
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(8, dtype=jnp.uint32))
    d0 = G.posterior_mean(g, x_T, 5.0)
    up, down = S.ddim_sigmas_up_down(5.0, 1.0, 1.0)
    expect = []
    for i in range(8):
        sk = jax.random.fold_in(keys[i], 1)
        zs = [jax.random.normal(sk, (2,))] + [
            jax.random.normal(jax.random.fold_in(sk, j), (2,)) for j in range(1, M)]
        cands = jnp.stack([d0[i] + (down / 5.0) * (x_T[i] - d0[i]) + up * z for z in zs])
        dc = G.posterior_mean(g, cands, 1.0)
        expect.append(dc[jnp.argmax(QUAD(dc))])
    np.testing.assert_allclose(x, jnp.stack(expect), rtol=1e-5, atol=1e-5)
    # more candidates, higher reward; temperature is traced
    run = jax.jit(lambda t: GD.svdd_sample(key, den, QUAD, x_T, SIG, num_candidates=4,
                                           temperature=t)[0])
    assert float(QUAD(run(0.0)).mean()) > float(QUAD(base).mean())
    assert not np.allclose(run(0.0), run(0.5))
    with pytest.raises(ValueError, match="num_candidates"):
        GD.svdd_sample(key, den, QUAD, x_T, SIG, num_candidates=0)
    with pytest.raises(ValueError, match="reward_fn must return"):
        GD.svdd_sample(key, den, lambda x: jnp.zeros(()), x_T, SIG, num_candidates=2)


# ----------------------------------------------------------------------------- LiDAR
def test_guided_denoiser_approaches_exact_tilted_denoiser(key):
    g, lam = tilt_mixture(), 1.5
    tilted, _ = R.tilt_gaussian_mixture(g, LIN, lam)
    look = exact_set(g, key, 8192)
    x = jnp.array([[0.0, 0.0], [1.0, 0.5], [-1.0, -1.0], [2.0, -1.0], [5.0, 5.0]])
    sigma = jnp.array([0.8, 1.0, 2.0, 4.0, 20.0])
    den = GD.lidar_denoiser(G.denoiser(g), look, lam)
    # Monte Carlo tolerance per point: 4.5 standard deviations of the 8192-sample estimate's
    # error (std 0.006, 0.006, 0.010, 0.015, 0.016 measured over 30 keys; far points and large
    # sigma weight fewer lookahead samples). Convergence itself: test_lookahead.py.
    tol = np.array([0.03, 0.03, 0.045, 0.07, 0.075])[:, None]
    err = np.abs(np.asarray(den(x, sigma)) - np.asarray(G.posterior_mean(tilted, x, sigma)))
    assert np.all(err <= tol), err
    # scale multiplies the shift; a window that excludes sigma switches guidance off exactly
    d0 = G.posterior_mean(g, x, sigma)
    d2 = GD.lidar_denoiser(G.denoiser(g), look, lam, scale=2.0)(x, sigma)
    np.testing.assert_allclose(d2 - d0, 2 * (den(x, sigma) - d0), rtol=1e-4, atol=1e-5)
    dw = GD.lidar_denoiser(G.denoiser(g), look, lam, window=(1.5, 10.0))(x, sigma)
    on = np.array([False, False, True, True, False])
    np.testing.assert_array_equal(np.asarray(dw)[~on], np.asarray(d0)[~on])
    np.testing.assert_allclose(np.asarray(dw)[on], np.asarray(den(x, sigma))[on], rtol=1e-6)


@jax.jit
def _lidar_run(key, look, x_T, lam, scale, lo, hi):
    return GD.lidar_sample(key, G.denoiser(tilt_mixture()), look, x_T, sch.karras_sigmas(16, 0.01),
                           lam=lam, scale=scale, window=(lo, hi))


def test_lidar_sampler_tilts_toward_reward_tilted_target(key):
    """With many exact lookahead samples, LiDAR particles follow the trajectories of the same
    solver run with the *exact* tilted denoiser and the same noise (pathwise, not just in law):
    median distance ~0.02 for data of std ~0.8. (DDIM(eta=1) on 16 steps itself under-disperses
    the target, so moments are compared with that exact run; the mean also with the closed form.)"""
    g, lam = tilt_mixture(), 1.0
    tilted, _ = R.tilt_gaussian_mixture(g, LIN, lam)
    look = exact_set(g, jax.random.fold_in(key, 1), 4096)
    x_T = S.prior_sample(key, (1024, 2), 80.0)
    x, aux = _lidar_run(key, look, x_T, lam, 1.0, 0.0, jnp.inf)
    base, _ = _lidar_run(key, look, x_T, lam, 0.0, 0.0, jnp.inf)
    exact, _ = S.sample(S.ddim(1.0), G.denoiser(tilted), x_T, sch.karras_sigmas(16, 0.01), key)
    dist = np.sqrt(np.sum(np.square(np.asarray(x - exact)), axis=1))
    assert np.median(dist) < 0.05 and np.percentile(dist, 90) < 0.1, np.percentile(dist, [50, 90])
    np.testing.assert_allclose(np.cov(np.asarray(x).T), np.cov(np.asarray(exact).T), atol=0.03)
    mean_t, cov_t = G.moments(tilted)
    se = np.sqrt(np.diag(cov_t) / 1024)
    np.testing.assert_array_less(np.abs(np.asarray(x.mean(0) - mean_t)), 4 * se + 0.03)
    r_t = float(R.mean_reward_under(tilted, LIN))
    r_b = float(R.mean_reward_under(g, LIN))
    assert abs(float(LIN(x).mean()) - r_t) < 0.15 * (r_t - r_b), (LIN(x).mean(), r_t, r_b)
    assert abs(float(LIN(base).mean()) - r_b) < 0.15 * (r_t - r_b)
    assert aux.cost.as_dict() == {"denoiser_fwd": 1024 * 16, "denoiser_bwd": 0, "reward_fwd": 0,
                                  "reward_bwd": 0}
    assert int(aux.nfe) == 16 and aux.lookahead_cost.as_dict() == look.cost.as_dict()


def test_traced_hyperparameters_do_not_recompile_and_batch_invariance(key):
    g = tilt_mixture()
    look = exact_set(g, key, 64)
    x_T = S.prior_sample(key, (8, 2), 80.0)
    traces = []

    @jax.jit
    def run(x_T, lam, scale, lo, hi):
        traces.append(1)
        return GD.lidar_sample(key, G.denoiser(g), look, x_T, sch.karras_sigmas(8), lam=lam,
                               scale=scale, window=(lo, hi))[0]

    outs = [run(x_T, *hp) for hp in [(1.0, 1.0, 0.0, 1e9), (5000.0, 12.5, 0.5, 80.0),
                                     (2.0, 3.0, 0.0, 1.0)]]
    assert len(traces) == 1
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[0], outs[2])
    # a batch of N equals N single runs (same per-sample keys via offset)
    for i in (0, 5):
        one = GD.lidar_sample(key, G.denoiser(g), look, x_T[i:i + 1], sch.karras_sigmas(8),
                              lam=2.0, scale=3.0, window=(0.0, 1.0), offset=i)[0]
        np.testing.assert_allclose(one[0], outs[2][i], rtol=1e-5, atol=1e-5)


def test_sharded_particles_match_single_device(key):
    g = tilt_mixture()
    look = exact_set(g, key, 64)
    x_T = S.prior_sample(key, (16, 2), 80.0)
    f = jax.jit(lambda lk, xt: GD.lidar_sample(key, G.denoiser(g), lk, xt, sch.karras_sigmas(6),
                                               lam=2.0)[0])
    mesh = data_mesh(8)
    out8 = f(replicate(look, mesh), shard_batch(x_T, mesh))
    assert len(out8.sharding.device_set) == 8
    np.testing.assert_allclose(out8, f(look, x_T), rtol=1e-5, atol=1e-5)


def test_any_core_solver_runs_guided(key):
    g, lam = tilt_mixture(), 1.0
    look = exact_set(g, key, 512)
    x_T = S.prior_sample(key, (64, 2), 80.0)
    sig = sch.karras_sigmas(10, 0.01)
    r0 = float(LIN(S.sample(S.heun(), G.denoiser(g), x_T, sig)[0]).mean())
    for name in ("heun", "dpmpp_2m", "euler"):
        x, aux = GD.lidar_sample(key, G.denoiser(g), look, x_T, sig, lam=lam, solver=name)
        assert float(LIN(x).mean()) > r0 + 0.5, name  # exact tilt raises E[r] by ~1.1
    assert int(aux.nfe) == 10


def test_end_to_end_lidar_equals_the_two_phases(key):
    g = tilt_mixture()
    den = G.denoiser(g)
    x_T = S.prior_sample(key, (4, 2), 80.0)
    sig = sch.karras_sigmas(5)
    x, aux = jax.jit(lambda k, xt: GD.lidar(k, den, LIN, xt, sig, num_lookahead=12,
                                            lookahead_steps=3, subset=6, lam=2.0))(key, x_T)
    look = L.lookahead_phase(jax.random.fold_in(key, 0x7FFFFFF2), den, LIN, (12, 2), steps=3)
    sub = L.select_lookahead(look, 6, key=jax.random.fold_in(key, 0x7FFFFFF3))
    ref, _ = GD.lidar_sample(key, den, sub, x_T, sig, lam=2.0)
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)
    assert aux.lookahead_cost.as_dict() == {"denoiser_fwd": 36, "denoiser_bwd": 0,
                                            "reward_fwd": 12, "reward_bwd": 0}
    assert aux.cost.as_dict()["denoiser_fwd"] == 4 * 5


def test_bad_inputs_raise_clear_errors(key):
    g = tilt_mixture()
    look = exact_set(g, key, 16)
    x_T = jnp.zeros((4, 2))
    sig = sch.karras_sigmas(4)
    den = G.denoiser(g)
    for lam in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="lam"):
            GD.lidar_sample(key, den, look, x_T, sig, lam=lam)
        with pytest.raises(ValueError, match="lam"):
            L.efr_grad(x_T, 1.0, look, lam)
    with pytest.raises(ValueError, match="empty"):
        L.make_lookahead_set(jnp.zeros((0, 2)), jnp.zeros((0,)))
    with pytest.raises(ValueError, match="empty"):
        L.make_lookahead_set(jnp.zeros((3, 2)), jnp.zeros((3,)), jnp.zeros(3, bool))
    with pytest.raises(ValueError, match="sample shape"):
        GD.lidar_sample(key, den, look, jnp.zeros((4, 3)), sig, lam=1.0)
    with pytest.raises(ValueError, match="sample shape"):
        L.efr_shift(jnp.zeros((4, 2, 1)), 1.0, look, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        L.make_lookahead_set(jnp.zeros((3, 2)), jnp.array([1.0, jnp.nan, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        L.lookahead_phase(key, den, lambda x: jnp.full((x.shape[0],), jnp.nan), (4, 2), steps=2)
    bad = look._replace(rewards=look.rewards.at[0].set(jnp.inf))
    with pytest.raises(ValueError, match="NaN"):
        GD.lidar_sample(key, den, bad, x_T, sig, lam=1.0)
    with pytest.raises(ValueError, match="rewards must be"):
        L.make_lookahead_set(jnp.zeros((3, 2)), jnp.zeros((4,)))
    with pytest.raises(ValueError, match="reward_fn must return"):
        L.lookahead_phase(key, den, lambda x: jnp.zeros(()), (4, 2), steps=2)
    with pytest.raises(ValueError, match="k must be"):
        L.select_lookahead(look, 17, mode="top")
    with pytest.raises(ValueError, match="mode"):
        L.select_lookahead(look, 3, mode="best")
    with pytest.raises(ValueError, match="key"):
        L.select_lookahead(look, 3)
    with pytest.raises(ValueError, match="window"):
        GD.lidar_sample(key, den, look, x_T, sig, lam=1.0, window=(5.0, 1.0))
