"""Denoiser contract: EDM preconditioning, parameterisation adapters, and the Gaussian-mixture oracle.

Adapters are checked with the analytic GMM posterior mean expressed in each parameterisation:
wrapping must return the exact denoiser (float64, so "exact" means round-off only).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff.diffusion import denoiser as dn
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import schedules as sch


def _mixture(dtype=jnp.float32):
    g = G.gaussian_mixture(
        jnp.array([0.2, 0.5, 0.3]),
        jnp.array([[-1.5, 0.0], [1.0, 0.5], [0.0, -1.2]]),
        jnp.array([[0.4, 0.3], [0.6, 0.6], [0.5, 0.2]]),  # diagonal stds
        labels=jnp.array([0, 1, 1]),
    )
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, g)


def _points(key, n=64, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    x = 2.0 * jax.random.normal(k1, (n, 2), dtype)
    sigma = jnp.exp(jax.random.uniform(k2, (n,), dtype, -5.0, 4.0))  # 0.007 .. 55
    return x, sigma


# --------------------------------------------------------------------------------------------
# EDM preconditioning
# --------------------------------------------------------------------------------------------


def test_edm_scalings_known_values():
    sd = 0.5
    c = dn.edm_scalings(jnp.array([sd]), sd)
    np.testing.assert_allclose(c.c_skip, 0.5, rtol=1e-6)
    np.testing.assert_allclose(c.c_out, sd / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(c.c_in, 1 / (sd * np.sqrt(2)), rtol=1e-6)
    np.testing.assert_allclose(c.c_noise, np.log(sd) / 4, rtol=1e-6)


def test_edm_scalings_give_unit_variance_input_and_target():
    """Karras et al. App. B.6: for x0 ~ N(0, sd^2), Var[c_in x] = 1 and Var[F*] = 1 at every sigma."""
    sd = 0.7
    sigma = jnp.logspace(-3, 2, 20)
    c = dn.edm_scalings(sigma, sd)
    np.testing.assert_allclose(c.c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-5)
    var_target = ((1 - c.c_skip) ** 2 * sd**2 + c.c_skip**2 * sigma**2) / c.c_out**2
    np.testing.assert_allclose(var_target, 1.0, rtol=1e-4)


def test_edm_denoiser_recovers_analytic_denoiser(key):
    with jax.enable_x64(True):
        g = _mixture(jnp.float64)
        x, sigma = _points(key, dtype=jnp.float64)
        sd = 0.5

        def raw_net(x_in, c_noise, cond):
            # The ideal raw network F* = (D* - c_skip x) / c_out, written in its own inputs.
            s = jnp.exp(4.0 * c_noise)
            c = dn.edm_scalings(s, sd)
            xx = x_in / c.c_in[:, None]
            return (G.posterior_mean(g, xx, s) - c.c_skip[:, None] * xx) / c.c_out[:, None]

        d = dn.edm_denoiser(raw_net, sd)(x, sigma)
        np.testing.assert_allclose(d, G.posterior_mean(g, x, sigma), rtol=1e-10, atol=1e-12)
        # and the EDM target of the exact denoiser is what the raw network returns
        np.testing.assert_allclose(
            dn.edm_target(G.posterior_mean(g, x, sigma), x, sigma, sd),
            raw_net(x * dn.edm_scalings(sigma, sd).c_in[:, None], jnp.log(sigma) / 4, None),
            rtol=1e-9,
            atol=1e-10,
        )


# --------------------------------------------------------------------------------------------
# Adapters: eps / v / x0 prediction, VE or VP inputs
# --------------------------------------------------------------------------------------------


def _vp_models(g):
    """The analytic GMM denoiser written as VP-input networks taking the linear-beta VP time t."""

    def unpack(x_vp, t):
        s = sch.vp_linear_sigma(t)  # the network only knows t
        alpha = sch.vp_linear_alpha(t)[:, None]
        std = jnp.sqrt(1.0 - alpha**2)
        x0 = G.posterior_mean(g, x_vp / alpha, s)  # E[x0 | x_vp]
        return alpha, std, x0

    def eps_net(x_vp, t, cond):
        alpha, std, x0 = unpack(x_vp, t)
        return (x_vp - alpha * x0) / std

    def v_net(x_vp, t, cond):
        alpha, std, x0 = unpack(x_vp, t)
        eps = (x_vp - alpha * x0) / std
        return alpha * eps - std * x0

    def x0_net(x_vp, t, cond):
        return unpack(x_vp, t)[2]

    return {"eps": eps_net, "v": v_net, "x0": x0_net}


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_vp_adapters_recover_exact_denoiser(key, prediction):
    with jax.enable_x64(True):
        g = _mixture(jnp.float64)
        x, sigma = _points(key, dtype=jnp.float64)
        sigma = jnp.clip(sigma, 0.01, 100.0)  # inside the VP-linear range t in (0, 1]
        model = _vp_models(g)[prediction]
        d = dn.from_prediction(model, prediction, input_scaling="vp", noise_input=sch.vp_linear_t)
        np.testing.assert_allclose(d(x, sigma), G.posterior_mean(g, x, sigma), rtol=1e-9, atol=1e-10)


def test_ve_adapters_recover_exact_denoiser(key):
    with jax.enable_x64(True):
        g = _mixture(jnp.float64)
        x, sigma = _points(key, dtype=jnp.float64)
        exact = G.posterior_mean(g, x, sigma)

        def eps_ve(x, s, cond):
            return (x - G.posterior_mean(g, x, s)) / s[:, None]

        np.testing.assert_allclose(dn.from_epsilon(eps_ve, input_scaling="ve")(x, sigma), exact, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dn.from_x0(lambda x, s, c: G.posterior_mean(g, x, s))(x, sigma), exact, rtol=0, atol=0)
        # and the inverse views
        np.testing.assert_allclose(dn.to_epsilon(G.denoiser(g))(x, sigma), eps_ve(x, sigma, None), rtol=1e-12)
        np.testing.assert_allclose(dn.to_score(G.denoiser(g))(x, sigma), G.score(g, x, sigma), rtol=1e-8, atol=1e-10)


def test_adapter_bad_input():
    with pytest.raises(ValueError, match="unknown prediction"):
        dn.from_prediction(lambda *a: None, "score")
    with pytest.raises(ValueError, match="VP"):
        dn.from_prediction(lambda *a: None, "v", input_scaling="ve")
    d = dn.from_x0(lambda x, s, c: x[:, :1])
    with pytest.raises(ValueError, match="does not match"):
        d(jnp.ones((3, 2)), jnp.ones(3))
    with pytest.raises(ValueError, match="per-sample"):
        dn.from_x0(lambda x, s, c: x)(jnp.ones((3, 2)), jnp.ones(2))


# --------------------------------------------------------------------------------------------
# Gaussian-mixture oracle
# --------------------------------------------------------------------------------------------


def test_gmm_log_prob_matches_scipy(key):
    g = _mixture()
    x, sigma = _points(key, 32)
    lp = np.asarray(G.log_prob(g, x, sigma))
    w = np.exp(np.asarray(g.log_weights, np.float64))
    ref = []
    for xi, si in zip(np.asarray(x, np.float64), np.asarray(sigma, np.float64)):
        dens = sum(
            wk * stats.multivariate_normal(np.asarray(mk), np.diag(np.asarray(vk) + si**2)).pdf(xi)
            for wk, mk, vk in zip(w, g.means, g.variances)
        )
        ref.append(np.log(dens))
    np.testing.assert_allclose(lp, ref, rtol=1e-5, atol=1e-5)


def test_gmm_score_and_tweedie_against_autodiff(key):
    with jax.enable_x64(True):
        g = _mixture(jnp.float64)
        x, sigma = _points(key, dtype=jnp.float64)
        auto = jax.grad(lambda x: jnp.sum(G.log_prob(g, x, sigma)))(x)
        np.testing.assert_allclose(G.score(g, x, sigma), auto, rtol=1e-10, atol=1e-12)
        # Tweedie: E[x0 | x] = x + sigma^2 grad log p_sigma(x) (independent of posterior_mean's code).
        np.testing.assert_allclose(
            G.posterior_mean(g, x, sigma), x + sigma[:, None] ** 2 * auto, rtol=1e-9, atol=1e-10
        )


def test_gmm_single_gaussian_closed_form(key):
    g = G.gaussian_mixture(jnp.array([1.0]), jnp.array([[1.0, -2.0]]), 0.5)
    x, sigma = _points(key)
    shrink = (0.25 / (0.25 + sigma**2))[:, None]
    ref = jnp.array([1.0, -2.0]) + shrink * (x - jnp.array([1.0, -2.0]))
    np.testing.assert_allclose(G.posterior_mean(g, x, sigma), ref, rtol=1e-5, atol=1e-6)


def test_gmm_density_normalised_1d():
    g = G.gaussian_mixture(jnp.array([0.3, 0.7]), jnp.array([[-1.0], [2.0]]), jnp.array([0.3, 0.8]))
    grid = jnp.linspace(-30, 32, 40001)[:, None]  # covers > 9 std of the widest marginal
    for s in (0.0, 0.5, 3.0):
        p = jnp.exp(G.log_prob(g, grid, s))
        np.testing.assert_allclose(jnp.trapezoid(p, grid[:, 0]), 1.0, rtol=1e-5)


def test_gmm_stable_far_from_data_and_at_tiny_sigma():
    g = _mixture()
    x = jnp.array([[1e3, -1e3], [1e-3, 0.0], [30.0, 40.0]])
    sigma = jnp.array([1e-3, 1e-4, 0.0])
    for f in (G.posterior_mean, G.score, G.log_prob):
        assert np.all(np.isfinite(f(g, x, sigma)))
    # far away at tiny sigma: the nearest component (in Mahalanobis terms) wins, no NaN
    d = G.posterior_mean(g, x[:1], sigma[:1])
    assert np.all(np.abs(d) < 1e3)


def test_gmm_conditional_equals_submixture(key):
    g = _mixture()
    x, sigma = _points(key, 16)
    cond = jnp.array([1] * 8 + [-1] * 8)
    sub = G.gaussian_mixture(jnp.array([0.5, 0.3]), g.means[1:], variances=g.variances[1:])
    d = G.posterior_mean(g, x, sigma, cond)
    np.testing.assert_allclose(d[:8], G.posterior_mean(sub, x[:8], sigma[:8]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d[8:], G.posterior_mean(g, x[8:], sigma[8:]), rtol=1e-6)
    np.testing.assert_allclose(
        G.log_prob(g, x, sigma, cond)[:8], G.log_prob(sub, x[:8], sigma[:8]), rtol=1e-5
    )


def test_gmm_sampling_moments(key):
    g = _mixture()
    xs = G.sample(g, key, 40000, sigma=0.5)
    mean, cov = G.moments(g, sigma=0.5)
    # Monte Carlo tolerance: ~5 standard errors for the mean and the covariance entries.
    np.testing.assert_allclose(xs.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(jnp.cov(xs.T), cov, atol=0.05)
    xc = G.sample(g, key, 4000, cond=jnp.zeros(4000, jnp.int32))
    np.testing.assert_allclose(xc.mean(0), g.means[0], atol=0.03)


def test_gmm_images_and_shape_errors():
    g = G.gaussian_mixture(jnp.array([1.0, 1.0]), jnp.zeros((2, 8)), 1.0)
    x = jnp.ones((3, 2, 2, 2))
    assert G.posterior_mean(g, x, jnp.ones(3)).shape == x.shape
    with pytest.raises(ValueError, match="D=8"):
        G.posterior_mean(g, jnp.ones((3, 5)), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        G.posterior_mean(g, x, jnp.ones(2))
    with pytest.raises(ValueError, match="exactly one"):
        G.gaussian_mixture(jnp.ones(2), jnp.zeros((2, 3)))
