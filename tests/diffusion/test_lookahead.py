"""LiDAR's expected-future-reward estimator (`jaxdiff.diffusion.lookahead`): its closed-form
gradient, the VP/VE conventions, convergence to the exact EFR, stability, padding and stacked
prompts, the lookahead phase and its subsets — against exact answers on Gaussian mixtures with
linear/quadratic rewards (whose reward-tilted targets are again Gaussian mixtures)."""

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

from tests.helpers import LIN, exact_set, tilt_mixture


def _reference_efr(x, sigma, X, r, lam, alpha=1.0):
    """lidar.md §2 written literally: full logits with differences (no dropped terms)."""
    a = -jnp.sum(jnp.square(x[:, None, :] - alpha * X[None]), -1) / (2 * sigma**2)
    return jax.nn.logsumexp(a + lam * r, -1) - jax.nn.logsumexp(a, -1)


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
        # float32 logits: round-off relative to the largest gradient component
        atol = 1e-5 * float(jnp.max(jnp.abs(g_auto)))
        np.testing.assert_allclose(g_ours, g_auto, rtol=1e-5, atol=atol)
        # and jax.grad of the library's own estimator agrees with its closed form
        g_lib = jax.grad(lambda y: jnp.sum(L.efr_estimate(y, sigma, look, lam, alpha=alpha)))(x)
        np.testing.assert_allclose(g_ours, g_lib, rtol=1e-5, atol=atol)


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
    g, lam = tilt_mixture(), 1.0
    x = jnp.array([[0.0, 0.0], [1.0, 0.5], [-1.0, -1.0], [2.0, -1.0]])
    sigma = jnp.array([0.7, 1.0, 1.5, 3.0])
    exact = R.exact_efr(g, LIN, lam, x, sigma)
    exact_g = jax.grad(lambda y: jnp.sum(R.exact_efr(g, LIN, lam, y, sigma)))(x)

    @jax.jit
    def errs(k, n_idx):
        X = G.sample(g, k, 8192)
        m = jnp.arange(8192) < n_idx  # the first n samples, by mask (one compilation)
        look = L.make_lookahead_set(X, LIN(X), m)
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
    look = exact_set(g, key, 8192, rew)
    sigma = jnp.array([1.0, 2.0, 5.0])
    x = jnp.array([[0.0, 0.0], [1.0, -1.0], [0.5, 2.0]])
    expect = lam * v * a / (v + sigma[:, None] ** 2)
    np.testing.assert_allclose(L.efr_grad(x, sigma, look, lam), expect, atol=0.03)
    np.testing.assert_allclose(G.score(tilted, x, sigma) - G.score(g, x, sigma), expect, atol=1e-5)


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
    g = tilt_mixture()
    k1, k2 = jax.random.split(key)
    a, b = exact_set(g, k1, 20), exact_set(g, k2, 33)
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


def test_lookahead_phase_samples_rewards_and_cost(key):
    g = tilt_mixture()
    calls = []

    def reward(x):
        calls.append(x.shape)
        return LIN(x)

    look = L.lookahead_phase(key, G.denoiser(g), reward, (12, 2), steps=3)
    sig = sch.karras_sigmas(3)
    x_T = S.prior_sample(key, (12, 2), 80.0)
    x0, _ = S.sample(S.dpmpp_2m(), G.denoiser(g), x_T, sig, key)
    np.testing.assert_allclose(look.samples, x0, rtol=1e-6)
    np.testing.assert_allclose(look.rewards, LIN(x0), rtol=1e-6)
    assert calls == [(12, 2)]  # rewards computed once, batched
    assert look.cost.as_dict() == {"denoiser_fwd": 36, "denoiser_bwd": 0, "reward_fwd": 12,
                                   "reward_bwd": 0}
    heun = L.lookahead_phase(key, G.denoiser(g), LIN, (4, 2), steps=3, solver="heun")
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
