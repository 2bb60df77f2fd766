"""Solvers against exact answers: closed-form ODE solutions, convergence order, the true mixture,
plus the contracts (no recompiles for traced hyperparameters, batch = single runs, NFE, errors)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import quality as Q
from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S


def _mixture(dtype=jnp.float32):
    # Three overlapping components: smooth enough that coarse grids do not switch modes, so the
    # error is in its asymptotic regime from ~16 steps on (checked when choosing the grids below).
    g = G.gaussian_mixture(
        jnp.array([0.2, 0.5, 0.3]),
        jnp.array([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]]),
        jnp.array([0.4, 0.6, 0.5]),
    )
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, g)


ALL = [("euler", {}), ("heun", {}), ("edm", {"s_churn": 10.0}), ("ddim", {"eta": 1.0}), ("dpmpp_2m", {})]


@functools.cache
def _sampler(name, hp_names):
    # One jitted program per solver and set of hyperparameter names; the mixture, grid, key and
    # hyperparameter values are arguments, so tests share compilations (shapes permitting).
    @jax.jit
    def run(g, x_T, sigmas, key, hp):
        return S.sample(S.get_solver(name, **hp), G.denoiser(g), x_T, sigmas, key)

    return run


def _run(name, g, x_T, sigmas, key=None, **hp):
    key = jax.random.key(0) if key is None else key
    hp = {k: jnp.asarray(v, x_T.dtype) for k, v in hp.items()}
    return _sampler(name, tuple(sorted(hp)))(g, x_T, sigmas, key, hp)


# --------------------------------------------------------------------------------------------
# Exact answers
# --------------------------------------------------------------------------------------------


# The float64 tests below share compiled programs: 3-component mixtures, 64 samples, grids of
# 16/32/64/128 steps without a final zero (every step a genuine ODE step).
_ORDER_NS = (16, 32, 64, 128)


def _grid64(n, sigma_min):
    return sch.karras_sigmas(n, sigma_min, 80.0, 7.0, append_zero=False, dtype=jnp.float64)


def test_gaussian_data_pf_ode_closed_form(key):
    """For x0 ~ N(mu, v I) the PF-ODE is linear with exact solution
    x(sigma) = mu + sqrt((v + sigma^2)/(v + sigma_T^2)) (x_T - mu). Each solver converges to it
    at its order (measured rates over 32/64/128 steps: Euler 1.00, Heun 2.02-2.05, DPM++(2M)
    2.03-2.07). The ODE is linear, so every sample's error is the same multiple of its
    |x(sigma) - mu|: max errors at 128 steps relative to max |x - mu| are 0.0203 (Euler),
    7.42e-4 (Heun), 7.51e-4 (DPM++) for every key. The Gaussian is written as a mixture of
    three identical components (the same distribution) to reuse the compiled samplers."""
    with jax.enable_x64(True):
        mu, v, smin = jnp.array([1.0, -0.5]), 0.3, 0.01
        g = G.gaussian_mixture(jnp.array([0.2, 0.5, 0.3]), jnp.tile(mu, (3, 1)), variances=jnp.full(3, v))
        x_T = S.prior_sample(key, (64, 2), 80.0, dtype=jnp.float64)
        exact = mu + jnp.sqrt((v + smin**2) / (v + 80.0**2)) * (x_T - mu)
        scale = float(jnp.max(jnp.abs(exact - mu)))
        spec = {"euler": (1, 0.021), "heun": (2, 8e-4), "dpmpp_2m": (2, 8e-4)}  # x scale
        for name, (order, tol) in spec.items():
            errs = []
            for n in _ORDER_NS[1:]:
                x, _ = _run(name, g, x_T, _grid64(n, smin))
                errs.append(float(jnp.max(jnp.abs(x - exact))))
            rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
            assert np.all(np.abs(rates - order) < 0.15), (name, errs, rates)
            assert errs[-1] < tol * scale, (name, errs, scale)


def test_empirical_convergence_order():
    """Slope of log RMS error vs log steps (16..128) against a 4096-step Heun reference from the
    same x_T, in float64 on Karras grids (rho = 7, sigma in [0.002, 80]). 16..128 steps is the
    asymptotic regime for this mixture (local slopes: Euler 1.00-1.01, Heun 2.03-2.22,
    DPM++(2M) 2.04-2.36); at 8 steps it is not yet (DPM++ 1.4). Sharper mixtures (std 0.3,
    modes 3.5 apart) break the first-order fit through mode switches of single samples."""
    with jax.enable_x64(True):
        g = _mixture(jnp.float64)
        x_T = S.prior_sample(jax.random.key(7), (64, 2), 80.0, dtype=jnp.float64)
        ref, _ = _run("heun", g, x_T, _grid64(4096, 0.002))
        bands = {"euler": (0.8, 1.3), "heun": (1.6, 2.6), "dpmpp_2m": (1.6, 2.6)}
        for name, (lo, hi) in bands.items():
            errs = []
            for n in _ORDER_NS:
                x, _ = _run(name, g, x_T, _grid64(n, 0.002))
                errs.append(float(jnp.sqrt(jnp.mean(jnp.sum((x - ref) ** 2, -1)))))
            slope = -np.polyfit(np.log(_ORDER_NS), np.log(errs), 1)[0]
            assert lo <= slope <= hi, (name, slope, errs)
            assert errs[-1] < errs[0]


@pytest.mark.parametrize("name,hp,n", [
    ("heun", {}, 32),
    ("dpmpp_2m", {}, 32),
    ("edm", {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}, 32),
    ("ddim", {"eta": 1.0}, 128),
])
def test_samples_match_the_mixture(key, name, hp, n):
    """2,000 samples vs the exact mixture: moments within Monte Carlo error and sliced
    Wasserstein no larger than that between two independent exact sample sets (x1.5)."""
    g = _mixture()
    N = 2000
    x_T = S.prior_sample(key, (N, 2), 80.0)
    x, _ = _run(name, g, x_T, sch.karras_sigmas(n), key, **hp)
    mean, cov = G.moments(g)
    # standard errors at N = 2000: mean ~0.02, covariance entries ~0.03; tolerances ~5 SE
    np.testing.assert_allclose(x.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(jnp.cov(x.T), cov, atol=0.15)
    k1, k2, kp = jax.random.split(jax.random.fold_in(key, 1), 3)
    true1, true2 = G.sample(g, k1, N), G.sample(g, k2, N)
    sw_model = float(Q.sliced_wasserstein(x, true1, kp, 256))
    sw_noise = float(Q.sliced_wasserstein(true2, true1, kp, 256))
    assert sw_model < 1.5 * sw_noise + 0.02, (sw_model, sw_noise)


def test_mixture_check_detects_a_slightly_wrong_denoiser(key):
    """The acceptance criterion of `test_samples_match_the_mixture` has power: Heun on the
    denoiser of a mixture whose means are shifted by 0.25 fails it."""
    g = _mixture()
    wrong = g._replace(means=g.means + 0.25)
    N = 2000
    x_T = S.prior_sample(key, (N, 2), 80.0)
    x, _ = _run("heun", wrong, x_T, sch.karras_sigmas(32))
    k1, k2, kp = jax.random.split(jax.random.fold_in(key, 1), 3)
    true1, true2 = G.sample(g, k1, N), G.sample(g, k2, N)
    sw_model = float(Q.sliced_wasserstein(x, true1, kp, 256))
    sw_noise = float(Q.sliced_wasserstein(true2, true1, kp, 256))
    assert sw_model > 1.5 * sw_noise + 0.02, (sw_model, sw_noise)


# --------------------------------------------------------------------------------------------
# Relations between solvers
# --------------------------------------------------------------------------------------------


def test_edm_without_churn_is_heun_bit_for_bit(key):
    """S_churn = 0 must add exactly zero noise (the noise scale is computed as
    sigma sqrt(gamma (2 + gamma)), not sqrt(sigma_hat^2 - sigma^2), which XLA contracts into an
    FMA that leaves ~1e-8 sigma of spurious noise)."""
    g = _mixture()
    x_T = S.prior_sample(key, (32, 2), 80.0)
    sig = sch.karras_sigmas(12)
    a, _ = _run("heun", g, x_T, sig, key)
    b, _ = _run("edm", g, x_T, sig, key, s_churn=0.0, s_noise=1.5)
    np.testing.assert_array_equal(a, b)


def test_ddim_eta0_is_euler_in_sigma(key):
    """Karras et al. 2022: DDIM is the Euler method on the VE ODE with sigma(t) = t."""
    g = _mixture()
    x_T = S.prior_sample(key, (32, 2), 80.0)
    sig = sch.karras_sigmas(12)
    np.testing.assert_allclose(_run("euler", g, x_T, sig)[0], _run("ddim", g, x_T, sig, key, eta=0.0)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_equals_vp_ddim(key, eta):
    """One VE DDIM step equals Song et al.'s VP update (Eq. 12) on x_vp = x / sqrt(1 + sigma^2)."""
    with jax.enable_x64(True):
        g = _mixture(jnp.float64)
        den = G.denoiser(g)
        x = 3.0 * jax.random.normal(key, (16, 2), jnp.float64)
        s, s_next = 3.0, 1.2
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(16))
        solver = S.ddim(eta)
        out, nfe = solver.step(solver.init(x, None), lambda x, sg, c: den(x, jnp.full(16, sg), c), s, s_next, keys, None)
        z = jax.vmap(lambda k: jax.random.normal(k, (2,), jnp.float64))(keys)
        ab, ab_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
        x_vp = x * np.sqrt(ab)
        x0 = den(x, jnp.full(16, s))
        eps = (x_vp - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
        c = eta * np.sqrt((1 - ab_next) / (1 - ab)) * np.sqrt(1 - ab / ab_next)
        x_vp_next = np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next - c**2) * eps + c * z
        np.testing.assert_allclose(out.x, x_vp_next / np.sqrt(ab_next), rtol=1e-12, atol=1e-12)
        assert nfe == 1


def test_nfe_counts(key):
    g = _mixture()
    x_T = S.prior_sample(key, (32, 2), 80.0)
    n = 12  # both grids have n + 1 levels: n steps each (shapes shared with the tests above)
    with_zero, without_zero = sch.karras_sigmas(n), sch.karras_sigmas(n + 1, append_zero=False)
    expected = {"euler": (n, n), "heun": (2 * n - 1, 2 * n), "edm": (2 * n - 1, 2 * n),
                "ddim": (n, n), "dpmpp_2m": (n, n)}
    hps = {"edm": {"s_churn": 5.0, "s_noise": 1.0}, "ddim": {"eta": 1.0}}
    for name, (a, b) in expected.items():
        assert int(_run(name, g, x_T, with_zero, key, **hps.get(name, {}))[1].nfe) == a, name
        assert int(_run(name, g, x_T, without_zero, key, **hps.get(name, {}))[1].nfe) == b, name


def test_trajectory_output(key):
    den = G.denoiser(_mixture())
    x_T = S.prior_sample(key, (5, 2), 80.0)
    sig = sch.karras_sigmas(6)
    x, aux = S.sample(S.heun(), den, x_T, sig, return_trajectory=True)
    assert aux.trajectory.shape == (7, 5, 2)
    np.testing.assert_array_equal(aux.trajectory[0], x_T)
    np.testing.assert_array_equal(aux.trajectory[-1], x)


# --------------------------------------------------------------------------------------------
# Contracts: recompilation, batch invariance, errors
# --------------------------------------------------------------------------------------------


def test_traced_hyperparameters_do_not_recompile(key):
    den = G.denoiser(_mixture())
    traces = {"edm": 0, "ddim": 0}

    @jax.jit
    def edm(x_T, k, churn, s_noise, sigma_max, rho, s_tmax):
        traces["edm"] += 1  # runs once per trace
        sig = sch.karras_sigmas(10, 0.002, sigma_max, rho)
        return S.sample(S.edm_stochastic(churn, 0.0, s_tmax, s_noise), den, x_T, sig, k)[0]

    @jax.jit
    def ddim(x_T, k, eta, sigma_min):
        traces["ddim"] += 1
        return S.sample(S.ddim(eta), den, x_T, sch.karras_sigmas(10, sigma_min), k)[0]

    x_T = S.prior_sample(key, (8, 2), 80.0)
    outs = [edm(x_T, key, c, sn, smax, r, st) for c, sn, smax, r, st in
            [(0.0, 1.0, 80.0, 7.0, 1e9), (30.0, 1.007, 60.0, 5.0, 50.0), (5.0, 1.0, 10.0, 3.0, 1.0)]]
    outs += [ddim(x_T, key, e, smin) for e, smin in [(0.0, 0.002), (0.5, 0.01), (1.0, 0.05)]]
    assert traces == {"edm": 1, "ddim": 1}
    # the values did change the results (they are not silently ignored)
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[3], outs[4])


@pytest.mark.parametrize("name,hp", [("edm", {"s_churn": 40.0}), ("ddim", {"eta": 1.0})])
def test_batch_equals_single_runs_bit_for_bit(key, name, hp):
    g = _mixture()
    den = G.denoiser(g)
    sig = sch.karras_sigmas(8)
    N = 6

    @jax.jit
    def batched(k):
        x = S.prior_sample(k, (N, 2), 80.0)
        return x, S.sample(S.get_solver(name, **hp), den, x, sig, k)[0]

    x_T, batch = batched(key)

    @jax.jit
    def single(i):
        x1 = S.prior_sample(key, (1, 2), 80.0, offset=i)
        return x1, S.sample(S.get_solver(name, **hp), den, x1, sig, key, offset=i)[0]

    for i in range(N):
        x1, out = single(i)
        np.testing.assert_array_equal(x1[0], x_T[i])
        np.testing.assert_array_equal(out[0], batch[i])
    # and a different key gives different noise
    assert not np.allclose(batched(jax.random.fold_in(key, 99))[1], batch)


def test_bad_input_errors(key):
    den = G.denoiser(_mixture())
    x_T = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.sample(S.heun(), den, x_T, jnp.array([10.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.sample(S.heun(), den, x_T, jnp.array([1.0, 10.0, 0.0]))
    with pytest.raises(ValueError, match="zero steps"):
        S.sample(S.heun(), den, x_T, jnp.array([10.0]))
    with pytest.raises(ValueError, match="positive"):
        S.sample(S.heun(), den, x_T, jnp.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="shape"):
        S.sample(S.euler(), lambda x, s, c: x[:, :1], x_T, sch.karras_sigmas(3))
    with pytest.raises(TypeError, match="dtype"):
        S.sample(S.euler(), lambda x, s, c: x.astype(jnp.bfloat16), x_T, sch.karras_sigmas(3))
    with pytest.raises(ValueError, match="PRNG key"):
        S.sample(S.ddim(1.0), den, x_T, sch.karras_sigmas(3))
    with pytest.raises(TypeError, match="float"):
        S.sample(S.euler(), den, jnp.ones((4, 2), jnp.int32), sch.karras_sigmas(3))
    with pytest.raises(ValueError, match="valid names: .*ddim.*dpmpp_2m.*euler.*heun"):
        S.get_solver("rk4")
    with pytest.raises(TypeError, match="accepts"):
        S.get_solver("ddim", churn=1.0)
    # shape errors surface at trace time under jit too
    with pytest.raises(ValueError, match="shape"):
        jax.jit(lambda x: S.sample(S.heun(), lambda x, s, c: x[:2], x, sch.karras_sigmas(3))[0])(x_T)


def test_traced_grid_is_accepted_under_jit(key):
    g = _mixture()
    x_T = S.prior_sample(key, (32, 2), 80.0)
    sig = sch.karras_sigmas(12)
    a = jax.jit(lambda s: S.sample(S.heun(), G.denoiser(g), x_T, s)[0])(sig)
    np.testing.assert_array_equal(a, _run("heun", g, x_T, sig)[0])
