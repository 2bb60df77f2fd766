"""LiDAR: the expected-future-reward estimator, its closed-form gradient, the lookahead phase and
the guided sampler, against exact answers on Gaussian mixtures with linear/quadratic rewards
(whose reward-tilted targets are again Gaussian mixtures, rewards.tilt_gaussian_mixture)."""

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


def _mixture(dtype=jnp.float32):
    g = G.gaussian_mixture(
        jnp.array([0.3, 0.4, 0.3]),
        jnp.array([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]]),
        jnp.array([[0.5, 0.4], [0.6, 0.5], [0.4, 0.6]]),
    )
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, g)


REWARD = R.linear_reward(jnp.array([1.0, 0.5]))


def _exact_set(g, key, n, reward=REWARD):
    x = G.sample(g, key, n)
    return L.make_lookahead_set(x, reward(x))


def _reference_efr(x, sigma, X, r, lam, alpha=1.0):
    """lidar.md §2 written literally: full logits with differences (no dropped terms)."""
    a = -jnp.sum(jnp.square(x[:, None, :] - alpha * X[None]), -1) / (2 * sigma**2)
    return jax.nn.logsumexp(a + lam * r, -1) - jax.nn.logsumexp(a, -1)


# --------------------------------------------------------------------------------------------
# Estimator and gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 0.37])
def test_closed_form_gradient_equals_jax_grad(key, alpha):
    with jax.enable_x64(True):
        k1, k2, k3 = jax.random.split(key, 3)
        X = jax.random.normal(k1, (40, 6), jnp.float64) + 2.0
        r = jax.random.normal(k2, (40,), jnp.float64)
        x = 1.5 * jax.random.normal(k3, (7, 6), jnp.float64)
        look = L.make_lookahead_set(X, r)
        sigma, lam = jnp.linspace(0.3, 4.0, 7), 2.5
        est = L.efr_estimate(x, sigma, look, lam, alpha=alpha)
        ref = _reference_efr(x, sigma[:, None], X, r, lam, alpha)
        np.testing.assert_allclose(est, ref, rtol=1e-5, atol=3e-5)  # logits run in float32
        g_auto = jax.grad(lambda y: jnp.sum(_reference_efr(y, sigma[:, None], X, r, lam, alpha)))(x)
        g_ours = L.efr_grad(x, sigma, look, lam, alpha=alpha)
        np.testing.assert_allclose(g_ours, g_auto, rtol=1e-5, atol=1e-6)
        # and jax.grad of the library's own estimator agrees with its closed form
        g_lib = jax.grad(lambda y: jnp.sum(L.efr_estimate(y, sigma, look, lam, alpha=alpha)))(x)
        np.testing.assert_allclose(g_ours, g_lib, rtol=1e-5, atol=1e-6)


def test_vp_convention_matches_reference_and_converts_to_ve(key):
    """The reference computes in VP (x_vp = sqrt(ab) x0 + sqrt(1 - ab) eps) and injects
    eps <- eps - sqrt(1 - ab) scale g_vp. Our VE denoiser shift must be the same update."""
    k1, k2, k3 = jax.random.split(key, 3)
    X = jax.random.normal(k1, (30, 4))
    r = jax.random.normal(k2, (30,))
    look = L.make_lookahead_set(X, r)
    s_ve = jnp.array([0.5, 1.0, 3.0, 8.0])
    x_ve = X[:4] + s_ve[:, None] * jax.random.normal(k3, (4, 4))
    ab = sch.alpha_bar_from_sigma(s_ve)
    alpha, s_vp = L.vp_coefficients(s_ve)
    np.testing.assert_allclose(alpha, jnp.sqrt(ab), rtol=1e-6)
    x_vp = alpha[:, None] * x_ve
    lam, scale = 3.0, 2.0
    # reference get_sample_guide, literally (lidar.md §4.1)
    pot = -jnp.sum((x_vp[:, None] - jnp.sqrt(ab)[:, None, None] * X[None]) ** 2, -1) / (
        2 * (1 - ab)[:, None])
    w, wr = jax.nn.softmax(pot, -1), jax.nn.softmax(lam * r + pot, -1)
    g_ref = (jnp.sqrt(ab) / (1 - ab))[:, None] * ((wr - w) @ X)
    g_vp = L.efr_grad(x_vp, s_vp, look, lam, alpha=alpha)
    np.testing.assert_allclose(g_vp, g_ref, rtol=2e-4, atol=1e-5)
    # same estimator value in both conventions; gradients related by the chain rule
    np.testing.assert_allclose(L.efr_estimate(x_vp, s_vp, look, lam, alpha=alpha),
                               L.efr_estimate(x_ve, s_ve, look, lam), rtol=1e-5, atol=1e-5)
    g_ve = L.efr_grad(x_ve, s_ve, look, lam)
    np.testing.assert_allclose(L.vp_grad_to_ve(g_vp, s_ve), g_ve, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(L.ve_grad_to_vp(g_ve, s_ve), g_vp, rtol=2e-4, atol=1e-5)
    # injection: eps' = eps - s_vp scale g_vp, converted to a VE x0 prediction, equals D + scale*shift
    den = lambda x, s, c=None: 0.8 * x  # noqa: E731  any denoiser
    eps_vp = (x_ve - den(x_ve, s_ve)) / s_ve[:, None]  # same eps in VE and VP
    eps_g = eps_vp - s_vp[:, None] * scale * g_vp
    x0_ref = (x_vp - s_vp[:, None] * eps_g) / alpha[:, None]
    ours = GD.lidar_denoiser(den, look, lam, scale)(x_ve, s_ve)
    np.testing.assert_allclose(ours, x0_ref, rtol=2e-4, atol=2e-4)


def test_estimator_converges_to_exact_efr(key):
    """Self-normalised importance sampling of p(x0 | x) with exact lookahead samples: the error
    of the estimate and of its gradient shrinks with n towards the closed form."""
    g, lam = _mixture(), 1.0
    x = jnp.array([[0.0, 0.0], [1.0, 0.5], [-1.0, -1.0], [2.0, -1.0]])
    sigma = jnp.array([0.7, 1.0, 1.5, 3.0])
    exact = R.exact_efr(g, REWARD, lam, x, sigma)
    exact_g = jax.grad(lambda y: jnp.sum(R.exact_efr(g, REWARD, lam, y, sigma)))(x)

    @jax.jit
    def errs(k, n_idx):
        X = G.sample(g, k, 8192)
        m = jnp.arange(8192) < n_idx  # the first n samples, by mask (one compilation)
        look = L.make_lookahead_set(X, REWARD(X), m)
        e = L.efr_estimate(x, sigma, look, lam)
        gr = L.efr_grad(x, sigma, look, lam)
        return jnp.sqrt(jnp.mean((e - exact) ** 2)), jnp.sqrt(jnp.mean((gr - exact_g) ** 2))

    res = {n: np.mean([errs(jax.random.fold_in(key, s), n) for s in range(6)], axis=0)
           for n in (32, 512, 8192)}
    e32, e512, e8k = res[32], res[512], res[8192]
    assert np.all(e512 < 0.6 * e32) and np.all(e8k < 0.5 * e512), res
    assert e8k[0] < 0.02 and e8k[1] < 0.05, res


def test_gaussian_linear_reward_gradient_is_lambda_sigma_shift(key):
    """lidar.md §9.4.1: p = N(mu, V), r = a.x: the tilted target is N(mu + lam V a, V), so the
    guidance (difference of noised scores) is lam V a / (V + sigma^2), independent of x."""
    mu, v = jnp.array([0.5, -1.0]), jnp.array([0.6, 0.3])
    g = G.gaussian_mixture(jnp.ones(1), mu[None], variances=v[None])
    a, lam = jnp.array([1.0, -2.0]), 0.7
    rew = R.linear_reward(a)
    tilted, _ = R.tilt_gaussian_mixture(g, rew, lam)
    np.testing.assert_allclose(tilted.means[0], mu + lam * v * a, rtol=1e-6)
    look = _exact_set(g, key, 8192, rew)
    sigma = jnp.array([1.0, 2.0, 5.0])
    x = jnp.array([[0.0, 0.0], [1.0, -1.0], [0.5, 2.0]])
    expect = lam * v * a / (v + sigma[:, None] ** 2)
    np.testing.assert_allclose(L.efr_grad(x, sigma, look, lam), expect, atol=0.03)
    np.testing.assert_allclose(G.score(tilted, x, sigma) - G.score(g, x, sigma), expect, atol=1e-5)


def test_guided_denoiser_approaches_exact_tilted_denoiser(key):
    g, lam = _mixture(), 1.5
    tilted, _ = R.tilt_gaussian_mixture(g, REWARD, lam)
    look = _exact_set(g, key, 8192)
    x = jnp.array([[0.0, 0.0], [1.0, 0.5], [-1.0, -1.0], [2.0, -1.0], [5.0, 5.0]])
    sigma = jnp.array([0.8, 1.0, 2.0, 4.0, 20.0])
    den = GD.lidar_denoiser(G.denoiser(g), look, lam)
    np.testing.assert_allclose(den(x, sigma), G.posterior_mean(tilted, x, sigma), atol=0.04)
    # scale multiplies the shift; a window that excludes sigma switches guidance off exactly
    d0 = G.posterior_mean(g, x, sigma)
    d2 = GD.lidar_denoiser(G.denoiser(g), look, lam, scale=2.0)(x, sigma)
    np.testing.assert_allclose(d2 - d0, 2 * (den(x, sigma) - d0), rtol=1e-4, atol=1e-5)
    dw = GD.lidar_denoiser(G.denoiser(g), look, lam, window=(1.5, 10.0))(x, sigma)
    on = np.array([False, False, True, True, False])
    np.testing.assert_array_equal(np.asarray(dw)[~on], np.asarray(d0)[~on])
    np.testing.assert_allclose(np.asarray(dw)[on], np.asarray(den(x, sigma))[on], rtol=1e-6)


def test_bfloat16_and_extreme_logits_are_stable(key):
    """Logits of O(d / sigma^2) and lam = 5000 (the reference default: one-hot w^r) stay finite;
    bfloat16 inputs are upcast and agree with float32 to bfloat16 precision."""
    k1, k2, k3 = jax.random.split(key, 3)
    d = 256
    X = jax.random.normal(k1, (50, d)) + 3.0
    r = jax.random.uniform(k2, (50,))
    x = X[:8] + 0.05 * jax.random.normal(k3, (8, d))
    look32 = L.make_lookahead_set(X, r)
    look16 = L.make_lookahead_set(X.astype(jnp.bfloat16), r)
    for sigma in (0.02, 0.3, 80.0):
        g32 = L.efr_shift(x, sigma, look32, 5000.0)
        g16 = L.efr_shift(x.astype(jnp.bfloat16), sigma, look16, 5000.0)
        assert g16.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g32)))
        np.testing.assert_allclose(np.asarray(g16, np.float32), g32, atol=0.05 * (1 + np.abs(g32).max()))
        e = L.efr_estimate(x.astype(jnp.bfloat16), sigma, look16, 5000.0)
        assert np.all(np.isfinite(np.asarray(e)))
    # at sigma = 80 the kernel is flat: w uniform, w^r one-hot on the best reward
    best = X[jnp.argmax(r)]
    np.testing.assert_allclose(L.efr_shift(x, 80.0, look32, 5000.0)[0], best - X.mean(0), atol=0.05)


def test_padding_masks_and_stacked_prompts(key):
    g = _mixture()
    k1, k2 = jax.random.split(key)
    a, b = _exact_set(g, k1, 20), _exact_set(g, k2, 33)
    x = jax.random.normal(key, (5, 2))
    ref = L.efr_shift(x, 1.2, a, 2.0)
    np.testing.assert_allclose(L.efr_shift(x, 1.2, L.pad_lookahead(a, 64), 2.0), ref, atol=1e-6)
    # garbage (even NaN) rewards at masked entries are ignored
    m = jnp.arange(33) < 20
    mixed = L.make_lookahead_set(jnp.concatenate([a.samples, b.samples[:13]]),
                                 jnp.concatenate([a.rewards, jnp.full(13, jnp.nan)]), m)
    np.testing.assert_allclose(L.efr_shift(x, 1.2, mixed, 2.0), ref, atol=1e-5)
    # per-prompt sets, padded and stacked, vmapped: equals running each prompt alone
    stacked = L.stack_lookahead([a, b])
    out = jax.vmap(lambda lk: L.efr_shift(x, 1.2, lk, 2.0))(stacked)
    np.testing.assert_allclose(out[0], ref, atol=1e-5)
    np.testing.assert_allclose(out[1], L.efr_shift(x, 1.2, b, 2.0), atol=1e-5)
    # ... and so does the whole guided sampler, vmapped over prompts (particles x prompts)
    x_T = S.prior_sample(key, (2, 3, 2), 80.0)  # 2 prompts x 3 particles
    sig = sch.karras_sigmas(4)
    run = jax.jit(lambda lk, xt: GD.lidar_sample(key, G.denoiser(g), lk, xt, sig, lam=2.0)[0])
    both = jax.jit(jax.vmap(run))(stacked, x_T)
    # (a padded to b's size: one compilation for both single runs; padding is exact, see above)
    np.testing.assert_allclose(both[0], run(L.pad_lookahead(a, 33), x_T[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[1], run(b, x_T[1]), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Lookahead phase and subsets
# --------------------------------------------------------------------------------------------


def test_lookahead_phase_samples_rewards_and_cost(key):
    g = _mixture()
    calls = []

    def reward(x):
        calls.append(x.shape)
        return REWARD(x)

    look = L.lookahead_phase(key, G.denoiser(g), reward, (12, 2), steps=3)
    sig = sch.karras_sigmas(3)
    x_T = S.prior_sample(key, (12, 2), 80.0)
    x0, _ = S.sample(S.dpmpp_2m(), G.denoiser(g), x_T, sig, key)
    np.testing.assert_allclose(look.samples, x0, rtol=1e-6)
    np.testing.assert_allclose(look.rewards, REWARD(x0), rtol=1e-6)
    assert calls == [(12, 2)]  # rewards computed once, batched
    assert look.cost.as_dict() == {"denoiser_fwd": 36, "denoiser_bwd": 0, "reward_fwd": 12,
                                   "reward_bwd": 0}
    heun = L.lookahead_phase(key, G.denoiser(g), REWARD, (4, 2), steps=3, solver="heun")
    assert int(heun.cost.denoiser_fwd) == 4 * 5  # 2n - 1 NFE for a grid ending at 0


def test_select_lookahead_top_and_random(key):
    X = jnp.arange(20.0)[:, None] * jnp.ones((1, 2))
    r = jnp.array([3.0, 9.0, 1.0, 7.0, 5.0] * 4) + jnp.arange(20) * 0.01
    mask = jnp.arange(20) != 1  # the best entry is masked out
    look = L.make_lookahead_set(X, r, mask)
    top = L.select_lookahead(look, 4, mode="top")
    np.testing.assert_array_equal(np.sort(top.samples[:, 0]), [6.0, 11.0, 16.0, 18.0])
    rnd = L.select_lookahead(look, 10, key=key, mode="random")
    picked = np.asarray(rnd.samples[:, 0]).astype(int)
    assert len(set(picked)) == 10 and 1 not in picked and bool(rnd.mask.all())
    np.testing.assert_array_equal(picked, L.select_lookahead(look, 10, key=key).samples[:, 0])
    other = L.select_lookahead(look, 10, key=jax.random.fold_in(key, 1)).samples[:, 0]
    assert not np.array_equal(picked, other)
    np.testing.assert_allclose(rnd.rewards, r[picked])


# --------------------------------------------------------------------------------------------
# Guided sampler
# --------------------------------------------------------------------------------------------


@jax.jit
def _lidar_run(key, look, x_T, lam, scale, lo, hi):
    return GD.lidar_sample(key, G.denoiser(_mixture()), look, x_T, sch.karras_sigmas(16, 0.01),
                           lam=lam, scale=scale, window=(lo, hi))


def test_lidar_sampler_tilts_toward_reward_tilted_target(key):
    """With many exact lookahead samples, LiDAR particles follow the trajectories of the same
    solver run with the *exact* tilted denoiser and the same noise (pathwise, not just in law):
    median distance ~0.02 for data of std ~0.8. (DDIM(eta=1) on 16 steps itself under-disperses
    the target, so moments are compared with that exact run; the mean also with the closed form.)"""
    g, lam = _mixture(), 1.0
    tilted, _ = R.tilt_gaussian_mixture(g, REWARD, lam)
    look = _exact_set(g, jax.random.fold_in(key, 1), 4096)
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
    r_t = float(R.mean_reward_under(tilted, REWARD))
    r_b = float(R.mean_reward_under(g, REWARD))
    assert abs(float(REWARD(x).mean()) - r_t) < 0.15 * (r_t - r_b), (REWARD(x).mean(), r_t, r_b)
    assert abs(float(REWARD(base).mean()) - r_b) < 0.15 * (r_t - r_b)
    assert aux.cost.as_dict() == {"denoiser_fwd": 1024 * 16, "denoiser_bwd": 0, "reward_fwd": 0,
                                  "reward_bwd": 0}
    assert int(aux.nfe) == 16 and aux.lookahead_cost.as_dict() == look.cost.as_dict()


def test_traced_hyperparameters_do_not_recompile_and_batch_invariance(key):
    g = _mixture()
    look = _exact_set(g, key, 64)
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
    g = _mixture()
    look = _exact_set(g, key, 64)
    x_T = S.prior_sample(key, (16, 2), 80.0)
    f = jax.jit(lambda lk, xt: GD.lidar_sample(key, G.denoiser(g), lk, xt, sch.karras_sigmas(6),
                                               lam=2.0)[0])
    mesh = data_mesh(8)
    out8 = f(replicate(look, mesh), shard_batch(x_T, mesh))
    assert len(out8.sharding.device_set) == 8
    np.testing.assert_allclose(out8, f(look, x_T), rtol=1e-5, atol=1e-5)


def test_any_core_solver_runs_guided(key):
    g, lam = _mixture(), 1.0
    look = _exact_set(g, key, 512)
    x_T = S.prior_sample(key, (64, 2), 80.0)
    sig = sch.karras_sigmas(10, 0.01)
    r0 = float(REWARD(S.sample(S.heun(), G.denoiser(g), x_T, sig)[0]).mean())
    for name in ("heun", "dpmpp_2m", "euler"):
        x, aux = GD.lidar_sample(key, G.denoiser(g), look, x_T, sig, lam=lam, solver=name)
        assert float(REWARD(x).mean()) > r0 + 0.5, name  # exact tilt raises E[r] by ~1.1
    assert int(aux.nfe) == 10


def test_end_to_end_lidar_equals_the_two_phases(key):
    g = _mixture()
    den = G.denoiser(g)
    x_T = S.prior_sample(key, (4, 2), 80.0)
    sig = sch.karras_sigmas(5)
    x, aux = jax.jit(lambda k, xt: GD.lidar(k, den, REWARD, xt, sig, num_lookahead=12,
                                            lookahead_steps=3, subset=6, lam=2.0))(key, x_T)
    look = L.lookahead_phase(jax.random.fold_in(key, 0x7FFFFFF2), den, REWARD, (12, 2), steps=3)
    sub = L.select_lookahead(look, 6, key=jax.random.fold_in(key, 0x7FFFFFF3))
    ref, _ = GD.lidar_sample(key, den, sub, x_T, sig, lam=2.0)
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5)
    assert aux.lookahead_cost.as_dict() == {"denoiser_fwd": 36, "denoiser_bwd": 0,
                                            "reward_fwd": 12, "reward_bwd": 0}
    assert aux.cost.as_dict()["denoiser_fwd"] == 4 * 5


def test_bad_inputs_raise_clear_errors(key):
    g = _mixture()
    look = _exact_set(g, key, 16)
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
