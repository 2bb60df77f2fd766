"""The time-dependent discriminator (`jaxdiff.diffusion.discriminator`): VP time importance
sampling and perturbation, the BCE optimum equals the analytic log-ratio, training moves toward
it, a frozen extractor stays frozen."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff.diffusion import discriminator as DD
from jaxdiff.diffusion import schedules as sch
from jaxdiff.models.mlp import MLP
from jaxdiff.models.discriminator import Discriminator

from tests.helpers import SP, SQ, oracle_logit



def test_vp_time_importance_sampling_and_perturbation(key):
    """log sigma_VE(tau)^2 is uniform on [log sigma^2(1e-5), log sigma^2(1)]; the VP perturbation
    equals alpha * (x0 + sigma z) (the VE state scaled)."""
    tau, sigma = DD.sample_vp_time(key, 20000)
    assert tau.min() >= np.float32(1e-5) and tau.max() <= 1.0   # float32 bounds
    np.testing.assert_allclose(sch.vp_linear_sigma(tau), sigma, rtol=2e-3)
    ls = np.sort(np.log(np.square(np.asarray(sigma, np.float64))))
    lo = math.log(math.expm1(0.5 * 1e-10 * 19.9 + 1e-5 * 0.1))
    hi = math.log(math.expm1(0.5 * 19.9 + 0.1))
    cdf = (ls - lo) / (hi - lo)
    assert np.max(np.abs(cdf - np.arange(1, ls.size + 1) / ls.size)) < 0.015  # KS
    x0 = jax.random.normal(key, (5, 3))
    z = jax.random.normal(jax.random.fold_in(key, 1), (5, 3))
    x_vp = DD.perturb_vp(x0, tau[:5], z)
    a = sch.alpha_from_sigma(sigma[:5])[:, None]
    np.testing.assert_allclose(x_vp, a * (x0 + sigma[:5, None] * z), rtol=2e-3, atol=1e-5)


def test_bce_optimum_is_analytic_log_ratio(key):
    """Logistic regression in the exact family l = t0 A(sigma) + t1 B(sigma) x^2 (A, B the
    Gaussian log-ratio's terms) trained with `discriminator_loss` on real N(0, SQ^2) vs fake
    N(0, SP^2) reaches t = (1, 1): the BCE optimum is the log density ratio under the library's
    noise sampling and VP perturbation."""

    def vp_logit(theta, x_vp, tau, cond=None):
        sigma = sch.vp_linear_sigma(tau)
        s2 = jnp.square(sigma)
        x2 = jnp.square(x_vp[:, 0]) * (1.0 + s2)
        a = 0.5 * jnp.log((SP**2 + s2) / (SQ**2 + s2))
        b = 0.5 * (1.0 / (SP**2 + s2) - 1.0 / (SQ**2 + s2))
        return theta[0] * a + theta[1] * b * x2

    kr, kf, kl = jax.random.split(key, 3)
    m = 8192
    real = SQ * jax.random.normal(kr, (m, 1))
    fake = SP * jax.random.normal(kf, (m, 1))
    tx = optax.adam(0.05)

    @jax.jit
    def fit(theta):
        def body(carry, i):
            theta, opt = carry
            k = jax.random.fold_in(kl, i)
            g = jax.grad(lambda t: DD.discriminator_loss(
                functools.partial(vp_logit, t), real, fake, k)[0])(theta)
            upd, opt = tx.update(g, opt, theta)
            return (optax.apply_updates(theta, upd), opt), None

        (theta, _), _ = jax.lax.scan(body, (theta, tx.init(theta)), jnp.arange(400))
        return theta

    theta = fit(jnp.array([0.0, 0.0]))
    np.testing.assert_allclose(theta, [1.0, 1.0], atol=0.12)
    # The gradient of the BCE in the logit is sigmoid(l) - y (closed form).
    lr = jnp.array([0.3, -1.2])
    g = jax.grad(lambda l: jnp.sum(optax.sigmoid_binary_cross_entropy(l, jnp.ones(2))))(lr)
    np.testing.assert_allclose(g, jax.nn.sigmoid(lr) - 1.0, rtol=1e-6)


def test_discriminator_trains_toward_log_ratio(key):
    """A small NNX Discriminator (MLP head) trained with the library's step on the 1-D Gaussian
    pair learns the analytic log-ratio at low noise (error well below the ratio's own spread)."""
    model = Discriminator((1,), width=32, depth=2, emb_dim=32, rngs=nnx.Rngs(0))
    tx = DD.default_optimizer(3e-3)
    graphdef, state = DD.init_disc_train_state(model, tx)
    step = DD.make_disc_train_step(graphdef, tx)

    @jax.jit
    def train(state):
        def body(st, i):
            k = jax.random.fold_in(key, i)
            kr, kf, ks = jax.random.split(k, 3)
            real = SQ * jax.random.normal(kr, (256, 1))
            fake = SP * jax.random.normal(kf, (256, 1))
            st, met = step(st, real, fake, ks)
            return st, met["loss"]

        return jax.lax.scan(body, state, jnp.arange(400))

    state, losses = train(state)
    assert float(losses[-50:].mean()) < float(losses[:50].mean())
    disc = DD.logit_fn(graphdef, state.params, state.frozen)
    xs = jnp.linspace(-1.5, 1.5, 61)[:, None]
    for s in (0.05, 0.3):
        sv = jnp.full((61,), s)
        err = np.abs(np.asarray(disc(xs, sv)) - np.asarray(oracle_logit(xs, sv)))
        spread = float(jnp.std(oracle_logit(xs, sv)))
        assert err.mean() < 0.35 * spread, (s, err.mean(), spread)


def test_frozen_extractor_not_trained(key):
    """With a (pretrained) classifier as frozen feature extractor only the head is trained.
    (An MLP classifier keeps the test cheap; a ConvNet or `QualityClassifier` plugs in the same
    way through its `embed` / `features` method.)"""
    ext = MLP(nnx.Rngs(1), in_features=64, out_features=10, hidden=(32, 16))
    model = Discriminator((8, 8, 1), extractor=ext, width=16, depth=1, emb_dim=16,
                          num_classes=10, rngs=nnx.Rngs(0))
    assert model.feature_shape == (16,)
    tx = DD.default_optimizer()
    graphdef, state = DD.init_disc_train_state(model, tx)
    assert not any("extractor" in str(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        state.params)[0])
    step = jax.jit(DD.make_disc_train_step(graphdef, tx))
    real = jax.random.normal(key, (4, 8, 8, 1))
    lab = jnp.arange(4)
    new, met = step(state, real, real * 2.0, key, lab, lab)
    assert np.isfinite(float(met["loss"]))
    for a, b in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(new.frozen)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)))
    with pytest.raises(ValueError, match="labels"):
        model(real, jnp.zeros(4))
