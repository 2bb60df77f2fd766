"""Test-time baselines (gradient guidance, best-of-N, SVDD, FK steering) against exact answers:
analytic Tweedie Jacobians of a Gaussian mixture, reductions to the base sampler, argmax
semantics written straightforwardly here, and exact cost counters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import guidance as GD
from jaxdiff.diffusion import rewards as R
from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S


def _mixture():
    return G.gaussian_mixture(
        jnp.array([0.3, 0.4, 0.3]),
        jnp.array([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]]),
        jnp.array([[0.5, 0.4], [0.6, 0.5], [0.4, 0.6]]),
    )


QUAD = R.quadratic_reward(jnp.array([1.0, -1.0]), 0.8)
LIN = R.linear_reward(jnp.array([1.0, 0.5]))
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
    g = _mixture()
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
    g = _mixture()
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
    g = _mixture()
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
    g = _mixture()
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
    g = _mixture()
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
    g = _mixture()
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


def test_rewards_and_tilts_are_exact(key):
    g = _mixture()
    # quadratic tilt and log Z against Monte Carlo of the untilted mixture
    x = G.sample(g, key, 200_000)
    for rew, lam in ((QUAD, 0.7), (LIN, 0.5), (R.component_log_density_reward(g, 2), 1.0)):
        tilted, log_z = R.tilt_gaussian_mixture(g, rew, lam)
        w = jnp.exp(lam * rew(x))
        np.testing.assert_allclose(log_z, jnp.log(w.mean()), atol=0.02)
        mc_mean = (w[:, None] * x).sum(0) / w.sum()
        np.testing.assert_allclose(G.moments(tilted)[0], mc_mean, atol=0.02)
        np.testing.assert_allclose(R.mean_reward_under(tilted, rew), (w * rew(x)).sum() / w.sum(),
                                   atol=0.03)
    comp = R.component_log_density_reward(g, 1)
    ref = jax.scipy.stats.multivariate_normal.logpdf(x[:5], g.means[1], jnp.diag(g.variances[1]))
    np.testing.assert_allclose(comp(x[:5]), ref, rtol=1e-5)
    cls = R.class_log_posterior_reward(g, 0)
    np.testing.assert_allclose(jnp.exp(cls(jnp.array([[-1.5, 0.0], [5.0, 5.0]]))), [1.0, 0.0],
                               atol=1e-3)
    with pytest.raises(ValueError, match="scale"):
        R.quadratic_reward(jnp.zeros(2), -1.0)
    with pytest.raises(ValueError, match="elements"):
        LIN(jnp.zeros((3, 3)))
