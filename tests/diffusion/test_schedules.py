"""Schedules: Karras grid values, exact VP<->VE round trips, DDPM betas and timestep spacings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import schedules as sch


def test_karras_grid_matches_edm_formula():
    s = np.asarray(sch.karras_sigmas(18, 0.002, 80.0, 7.0))
    assert s.shape == (19,)
    i = np.arange(18)
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s[:-1], ref, rtol=2e-6)
    assert s[0] == np.float32(80.0) and s[17] == np.float32(0.002) and s[18] == 0.0
    assert np.all(np.diff(s) < 0)
    np.testing.assert_allclose(s[1], 57.586, rtol=1e-4)  # EDM's second CIFAR-10 level


def test_karras_grid_edge_cases_and_errors():
    np.testing.assert_array_equal(sch.karras_sigmas(1, 0.1, 5.0), [5.0, 0.0])
    assert sch.karras_sigmas(4, append_zero=False).shape == (4,)
    with pytest.raises(ValueError, match="positive"):
        sch.karras_sigmas(0)
    with pytest.raises(TypeError, match="static"):
        jax.jit(lambda n: sch.karras_sigmas(n))(4)


def test_karras_grid_rho_one_is_linear():
    s = sch.karras_sigmas(5, 1.0, 5.0, 1.0, append_zero=False)
    np.testing.assert_allclose(s, [5, 4, 3, 2, 1], rtol=1e-6)


def test_vp_ve_pointwise_relations():
    sigma = jnp.array([0.0, 0.01, 0.5, 1.0, 80.0])
    a, s = sch.alpha_from_sigma(sigma), sch.vp_std_from_sigma(sigma)
    np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(s / jnp.where(a > 0, a, 1), sigma, rtol=1e-6)
    with jax.enable_x64(True):  # 1 - alpha_bar cancels in float32 for small sigma
        s64 = sigma.astype(jnp.float64)
        np.testing.assert_allclose(
            sch.sigma_from_alpha_bar(sch.alpha_bar_from_sigma(s64)), s64, rtol=1e-12
        )
    x = jax.random.normal(jax.random.key(0), (5, 3, 2))
    np.testing.assert_allclose(sch.vp_to_ve(sch.ve_to_vp(x, sigma), sigma), x, rtol=1e-5)
    np.testing.assert_allclose(sch.ve_to_vp(x, sigma)[1], x[1] / np.sqrt(1 + 0.01**2), rtol=1e-6)


def test_vp_linear_round_trip_exact_in_float64():
    with jax.enable_x64(True):
        t = jnp.linspace(1e-3, 1.0, 101, dtype=jnp.float64)
        sig = sch.vp_linear_sigma(t)
        np.testing.assert_allclose(sch.vp_linear_t(sig), t, rtol=1e-12)
        s = jnp.logspace(-3, 2.3, 50, dtype=jnp.float64)
        np.testing.assert_allclose(sch.vp_linear_sigma(sch.vp_linear_t(s)), s, rtol=1e-10)
        # alpha(t) of the SDE equals 1/sqrt(1 + sigma(t)^2) (two independent formulas).
        np.testing.assert_allclose(sch.vp_linear_alpha(t), sch.alpha_from_sigma(sig), rtol=1e-12)
        # EDM Table 1: the VP sigma at t = 1 is sqrt(exp(19.9/2 + 0.1) - 1) ~ 152.
        np.testing.assert_allclose(sch.vp_linear_sigma(1.0), np.sqrt(np.expm1(10.05)), rtol=1e-12)
        np.testing.assert_allclose(float(sch.vp_linear_sigma(1.0)), 152.0, rtol=2e-3)


def test_vp_cosine_round_trip_and_values():
    with jax.enable_x64(True):
        t = jnp.linspace(0.0, 0.99, 100, dtype=jnp.float64)
        assert float(sch.vp_cosine_alpha_bar(0.0)) == pytest.approx(1.0, abs=1e-15)
        sig = sch.vp_cosine_sigma(t)
        np.testing.assert_allclose(sch.vp_cosine_t(sig[1:]), t[1:], rtol=1e-9)
        # Nichol & Dhariwal: alpha_bar(1/2) = cos^2((0.5 + s)/(1 + s) pi/2) / cos^2(s/(1+s) pi/2).
        s = 0.008
        ref = np.cos((0.5 + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
        np.testing.assert_allclose(sch.vp_cosine_alpha_bar(0.5), ref, rtol=1e-14)


def test_ddpm_linear_betas_known_values():
    betas = sch.ddpm_betas(1000, 1e-4, 0.02, "linear")
    assert betas.shape == (1000,)
    np.testing.assert_allclose([betas[0], betas[-1]], [1e-4, 0.02], rtol=1e-6)
    ab = np.asarray(sch.alphas_cumprod(betas))
    ref = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(ab, ref, rtol=2e-4)
    np.testing.assert_allclose(ab[-1], 4.036e-5, rtol=2e-3)  # DDPM: alpha_bar_T ~ 4e-5


def test_stable_diffusion_scaled_linear_sigma_range():
    # float64: in float32, 1 - alpha_bar at t = 0 (~8.5e-4) keeps only ~4 significant digits.
    with jax.enable_x64(True):
        betas = sch.ddpm_betas(1000, 0.00085, 0.012, "scaled_linear", dtype=jnp.float64)
        sig = np.asarray(sch.ddpm_sigmas(sch.alphas_cumprod(betas), np.array([999, 0])))
    # Stable Diffusion's well-known sigma range [0.0292, 14.6146]; at t = 0 it is exactly
    # sqrt(beta_0 / (1 - beta_0)).
    np.testing.assert_allclose(sig[0], 14.6146, rtol=1e-5)
    np.testing.assert_allclose(sig[1], np.sqrt(0.00085 / (1 - 0.00085)), rtol=1e-12)
    assert sig[2] == 0.0


def test_ddpm_cosine_betas_match_continuous_schedule():
    with jax.enable_x64(True):
        ab = sch.alphas_cumprod(sch.ddpm_betas(1000, kind="cosine", dtype=jnp.float64))
        t = jnp.arange(1, 1001) / 1000
        # identical until beta hits its 0.999 clip near t = T
        np.testing.assert_allclose(ab[:990], sch.vp_cosine_alpha_bar(t[:990]), rtol=1e-10)


def test_ddpm_timestep_spacings():
    np.testing.assert_array_equal(
        sch.ddpm_timesteps(10, 1000, "leading", steps_offset=1), [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    )
    np.testing.assert_array_equal(
        sch.ddpm_timesteps(10, 1000, "trailing"), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    )
    np.testing.assert_array_equal(
        sch.ddpm_timesteps(10, 1000, "linspace"), [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    )
    assert len(sch.ddpm_timesteps(100, 1000, "leading")) == 100
    with pytest.raises(ValueError, match="spacing"):
        sch.ddpm_timesteps(10, spacing="middle")
    with pytest.raises(ValueError, match="exceeds"):
        sch.ddpm_timesteps(2000)
    with pytest.raises(ValueError, match="unknown beta"):
        sch.ddpm_betas(kind="quadratic")


def test_ddpm_sigmas_grid_and_inverse_timestep_map():
    ab = sch.alphas_cumprod(sch.ddpm_betas())
    ts = sch.ddpm_timesteps(50, spacing="trailing")
    sig = sch.ddpm_sigmas(ab, ts)
    assert sig.shape == (51,) and np.all(np.diff(np.asarray(sig)) < 0) and sig[-1] == 0
    # Continuous-time inverse hits the integer timesteps (log-sigma interpolation is exact at knots).
    np.testing.assert_allclose(sch.sigma_to_ddpm_t(sig[:-1], ab), ts, atol=2e-3)
    mid = jnp.sqrt(sig[10] * sig[11])  # between two knots -> between the timesteps
    t_mid = float(sch.sigma_to_ddpm_t(mid, ab))
    assert ts[11] < t_mid < ts[10]


def test_vp_linear_sigmas_grid():
    s = sch.vp_linear_sigmas(18)
    assert s.shape == (19,) and s[-1] == 0
    np.testing.assert_allclose(s[0], sch.vp_linear_sigma(1.0), rtol=1e-6)
    np.testing.assert_allclose(s[17], sch.vp_linear_sigma(1e-3), rtol=1e-5)
