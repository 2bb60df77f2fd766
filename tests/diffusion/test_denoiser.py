"""The denoiser contract (`jaxdiff.diffusion.denoiser`): EDM preconditioning and the
parameterisation adapters, checked with the analytic GMM posterior mean expressed in each
parameterisation: wrapping must return the exact denoiser (float64: round-off only)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import denoiser as dn
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import schedules as sch

from tests.helpers import denoiser_mixture, mixture_points


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
        g = denoiser_mixture(jnp.float64)
        x, sigma = mixture_points(key, dtype=jnp.float64)
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
        g = denoiser_mixture(jnp.float64)
        x, sigma = mixture_points(key, dtype=jnp.float64)
        sigma = jnp.clip(sigma, 0.01, 100.0)  # inside the VP-linear range t in (0, 1]
        model = _vp_models(g)[prediction]
        d = dn.from_prediction(model, prediction, input_scaling="vp", noise_input=sch.vp_linear_t)
        np.testing.assert_allclose(d(x, sigma), G.posterior_mean(g, x, sigma), rtol=1e-9, atol=1e-10)


def test_ve_adapters_recover_exact_denoiser(key):
    with jax.enable_x64(True):
        g = denoiser_mixture(jnp.float64)
        x, sigma = mixture_points(key, dtype=jnp.float64)
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
