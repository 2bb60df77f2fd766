"""EDM training (`jaxdiff.diffusion.train`): the loss against its analytic optimum, the
functional NNX train step, EMA, label dropout, the scanned loop and its resume."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff.diffusion import denoiser as dn
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import quality as Q
from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S
from jaxdiff.diffusion import train as T
from jaxdiff.models.mlp_denoiser import MLPDenoiser


def _mixture():
    return G.gaussian_mixture(
        jnp.array([0.2, 0.5, 0.3]),
        jnp.array([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]]),
        jnp.array([0.25, 0.3, 0.2]),
    )


def test_edm_weight_cancels_preconditioning():
    """lambda(sigma) c_out(sigma)^2 = 1: the weighted denoiser loss is the raw network's
    unweighted loss against a unit-variance target (Karras et al. 2022, Eq. 8)."""
    sigma = jnp.logspace(-3, 2, 30)
    for sd in (0.5, 1.0):
        c = dn.edm_scalings(sigma, sd)
        np.testing.assert_allclose(T.edm_loss_weight(sigma, sd) * c.c_out**2, 1.0, rtol=1e-5)
    assert float(T.edm_loss_weight(0.5, 0.5)) == pytest.approx(2 / 0.25)


def test_training_sigmas_are_lognormal(key):
    s = T.sample_training_sigmas(key, 100000)
    np.testing.assert_allclose(jnp.mean(jnp.log(s)), -1.2, atol=0.02)
    np.testing.assert_allclose(jnp.std(jnp.log(s)), 1.2, atol=0.02)


def _candidate(g, name, d):
    exact = G.denoiser(g)
    if name == "exact":
        return exact
    if name == "shift":
        return lambda x, s, c: exact(x, s, c) + d
    if name == "scale":
        return lambda x, s, c: exact(x, s, c) * (1 + d)
    if name == "means":
        return G.denoiser(g._replace(means=g.means + d))
    return G.denoiser(g._replace(variances=g.variances * (1 + d) ** 2))  # "stds"


def test_edm_loss_is_minimised_by_the_analytic_denoiser(key):
    """Same (x0, sigma, noise) draws for every candidate (common random numbers, N = 2^16):
    the posterior mean beats shifted, scaled and wrong-mixture denoisers (+-0.1)."""
    g = _mixture()
    x0 = G.sample(g, key, 65536)
    k = jax.random.fold_in(key, 1)
    loss = jax.jit(lambda g, name, d: T.edm_loss(_candidate(g, name, d), x0, k), static_argnums=1)
    best = float(loss(g, "exact", 0.0))
    for name in ("shift", "scale", "means", "stds"):
        for delta in (-0.1, 0.1):
            assert float(loss(g, name, delta)) > best + 1e-3, (name, delta)


def test_edm_loss_per_sample_and_shapes(key):
    g = _mixture()
    x0 = G.sample(g, key, 8)
    per = T.edm_loss(G.denoiser(g), x0, key, reduce=False)
    assert per.shape == (8,)
    np.testing.assert_allclose(jnp.mean(per), T.edm_loss(G.denoiser(g), x0, key), rtol=1e-6)


def test_ema_update_exact():
    ema = {"a": jnp.array([1.0, 2.0])}
    p = {"a": jnp.array([3.0, 0.0])}
    out = T.ema_update(ema, p, 0.75)
    np.testing.assert_allclose(out["a"], 0.75 * ema["a"] + 0.25 * p["a"], rtol=1e-7)


def test_drop_labels_rate(key):
    lab = jnp.zeros(20000, jnp.int32)
    out = T.drop_labels(key, lab, 0.1, 10)
    assert set(np.unique(np.asarray(out))) == {0, 10}
    np.testing.assert_allclose(jnp.mean(out == 10), 0.1, atol=0.01)


def test_training_mlp_denoiser_on_a_mixture(key):
    """400 Adam steps (batch 256) on a 2-D mixture: the excess EDM loss over the analytic
    denoiser's (the minimum) falls by > 80 %, and 18-step Heun samples of the EMA network
    approach the mixture far better than the untrained network's (sliced Wasserstein)."""
    g = _mixture()
    data = G.sample(g, key, 8192)
    tx = optax.adam(2e-3)
    graphdef, state0 = T.init_train_state(MLPDenoiser(2, hidden=128, depth=3, rngs=nnx.Rngs(0)), tx)
    step = T.make_train_step(graphdef, tx, sigma_data=0.5)
    x_eval, k_eval = G.sample(g, jax.random.key(5), 4096), jax.random.key(9)

    @jax.jit
    def excess(params):
        den = T.nnx_denoiser(graphdef, params, state0.rest)
        return T.edm_loss(den, x_eval, k_eval) - T.edm_loss(G.denoiser(g), x_eval, k_eval)

    loop = jax.jit(functools.partial(T.train_loop, step, num_steps=200, batch_size=256, ema_decay=0.99))
    state, m = loop(state0, data, key)
    state, m = loop(state, data, key)  # resumes the random stream from state.step
    assert int(state.step) == 400 and m["loss"].shape == (200,)
    assert np.all(np.isfinite(m["loss"]))
    e0, e1 = float(excess(state0.params)), float(excess(state.ema))
    assert e1 < 0.2 * e0, (e0, e1)

    sig = sch.karras_sigmas(18)
    x_T = S.prior_sample(key, (2000, 2), 80.0)
    run = jax.jit(lambda p: S.sample(S.heun(), T.nnx_denoiser(graphdef, p, state0.rest), x_T, sig)[0])
    ref, kp = G.sample(g, jax.random.key(11), 2000), jax.random.key(1)
    sw_trained = float(Q.sliced_wasserstein(run(state.ema), ref, kp))
    sw_untrained = float(Q.sliced_wasserstein(run(state0.params), ref, kp))
    assert sw_trained < 0.4 * sw_untrained, (sw_trained, sw_untrained)


def test_train_loop_resume_equals_uninterrupted(key):
    g = _mixture()
    data = G.sample(g, key, 512)
    tx = optax.adam(1e-3)
    graphdef, state0 = T.init_train_state(MLPDenoiser(2, hidden=32, depth=1, rngs=nnx.Rngs(1)), tx)
    step = T.make_train_step(graphdef, tx)
    loop = jax.jit(functools.partial(T.train_loop, step, batch_size=32), static_argnames="num_steps")
    once, _ = loop(state0, data, key, num_steps=6)
    half, _ = loop(state0, data, key, num_steps=3)
    twice, _ = loop(half, data, key, num_steps=3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), once, twice)


def test_class_conditional_step_with_label_dropout(key):
    g = _mixture()
    x0 = G.sample(g, key, 64)
    labels = jnp.arange(64) % 3
    model = MLPDenoiser(2, hidden=32, depth=1, num_classes=3, rngs=nnx.Rngs(0))
    tx = optax.sgd(1e-2)
    graphdef, state = T.init_train_state(model, tx)
    step = jax.jit(T.make_train_step(graphdef, tx, label_dropout=0.2, null_label=model.null_label))
    new, m = step(state, x0, key, labels)
    assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
    # the zero-initialised output layer moves first; from the second step on the label table
    # (including the null row) receives gradient too
    new, m = step(new, x0, jax.random.fold_in(key, 1), labels)
    assert not np.allclose(new.params["label_emb"]["embedding"][...], state.params["label_emb"]["embedding"][...])
    with pytest.raises(ValueError, match="null_label"):
        T.make_train_step(graphdef, tx, label_dropout=0.1)
