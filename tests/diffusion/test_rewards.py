"""Rewards and exact reward tilts of Gaussian mixtures (`jaxdiff.diffusion.rewards`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import rewards as R

from tests.helpers import LIN, QUAD, tilt_mixture


def test_rewards_and_tilts_are_exact(key):
    g = tilt_mixture()
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
