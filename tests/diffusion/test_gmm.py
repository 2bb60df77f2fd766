"""The Gaussian-mixture oracle (`jaxdiff.diffusion.gmm`): densities against scipy, scores and
Tweedie against autodiff, closed forms, conditioning, sampling moments, shape errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff.diffusion import gmm as G

from tests.helpers import denoiser_mixture, mixture_points


def test_gmm_log_prob_matches_scipy(key):
    g = denoiser_mixture()
    x, sigma = mixture_points(key, 32)
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
        g = denoiser_mixture(jnp.float64)
        x, sigma = mixture_points(key, dtype=jnp.float64)
        auto = jax.grad(lambda x: jnp.sum(G.log_prob(g, x, sigma)))(x)
        np.testing.assert_allclose(G.score(g, x, sigma), auto, rtol=1e-10, atol=1e-12)
        # Tweedie: E[x0 | x] = x + sigma^2 grad log p_sigma(x) (independent of posterior_mean's code).
        np.testing.assert_allclose(
            G.posterior_mean(g, x, sigma), x + sigma[:, None] ** 2 * auto, rtol=1e-9, atol=1e-10
        )


def test_gmm_single_gaussian_closed_form(key):
    g = G.gaussian_mixture(jnp.array([1.0]), jnp.array([[1.0, -2.0]]), 0.5)
    x, sigma = mixture_points(key)
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
    g = denoiser_mixture()
    x = jnp.array([[1e3, -1e3], [1e-3, 0.0], [30.0, 40.0]])
    sigma = jnp.array([1e-3, 1e-4, 0.0])
    for f in (G.posterior_mean, G.score, G.log_prob):
        assert np.all(np.isfinite(f(g, x, sigma)))
    # far away at tiny sigma: the nearest component (in Mahalanobis terms) wins, no NaN
    d = G.posterior_mean(g, x[:1], sigma[:1])
    assert np.all(np.abs(d) < 1e3)


def test_gmm_conditional_equals_submixture(key):
    g = denoiser_mixture()
    x, sigma = mixture_points(key, 16)
    cond = jnp.array([1] * 8 + [-1] * 8)
    sub = G.gaussian_mixture(jnp.array([0.5, 0.3]), g.means[1:], variances=g.variances[1:])
    d = G.posterior_mean(g, x, sigma, cond)
    np.testing.assert_allclose(d[:8], G.posterior_mean(sub, x[:8], sigma[:8]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d[8:], G.posterior_mean(g, x[8:], sigma[8:]), rtol=1e-6)
    np.testing.assert_allclose(
        G.log_prob(g, x, sigma, cond)[:8], G.log_prob(sub, x[:8], sigma[:8]), rtol=1e-5
    )


def test_gmm_sampling_moments(key):
    g = denoiser_mixture()
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
