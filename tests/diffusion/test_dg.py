"""Discriminator Guidance (`jaxdiff.diffusion.dg`): closed forms on the Gaussian pair of
diffrs.md §14 (the exact discriminator corrects the wrong model's denoiser into the data's), DG's
clipping, window and two-weight Heun, the discriminator-call count, and DG's own guidance term
recorded on the fixture discriminator (tests/fixtures/dg)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import dg as DG
from jaxdiff.diffusion import solvers as S
from jaxdiff.diffusion.schedules import karras_sigmas, vp_linear_t
from jaxdiff.models import dg as dg_model
from jaxdiff.torch_reader import read_state_dict
from tests.helpers import SP, SQ, gauss_den, oracle_logit

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "dg"


def q_den(x, sigma, cond=None):
    """The exact denoiser of the data q_0 = N(0, SQ^2 I)."""
    s2 = jnp.square(sigma).reshape((-1,) + (1,) * (x.ndim - 1))
    return (SQ**2 / (SQ**2 + s2) * x).astype(x.dtype)


@jax.jit
def _guided(x, sigma, w, lo, hi):
    return DG.dg_denoiser(gauss_den, oracle_logit, w, lo, hi)(x, sigma)


def test_exact_discriminator_turns_the_model_denoiser_into_the_datas(key):
    """D + w sigma^2 grad log(q/p) = D + w sigma^2 x (1/(SP^2+s^2) - 1/(SQ^2+s^2)); at w = 1 it
    is q's denoiser. Outside DG's window (tau < 0.01) and where |log r| > 11.51 it is D."""
    x = jax.random.normal(key, (6, 2, 2, 1))
    sigma = jnp.array([0.05, 0.3, 1.0, 2.0, 10.0, 80.0])
    assert float(vp_linear_t(0.05)) > 0.01 > float(vp_linear_t(0.01))
    s2 = jnp.square(sigma)[:, None, None, None]
    for w in (1.0, 2.5):
        want = gauss_den(x, sigma) + w * s2 * x * (1 / (SP**2 + s2) - 1 / (SQ**2 + s2))
        np.testing.assert_allclose(_guided(x, sigma, w, 0.01, 1.0), want, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(_guided(x, sigma, 1.0, 0.01, 1.0), q_den(x, sigma), rtol=2e-5,
                               atol=1e-6)
    # Window: sigma 0.01 (tau 0.0012) and sigma 0 untouched; w = 0 untouched.
    small = jnp.array([0.01, 0.0, 0.01, 0.0, 0.01, 0.0])
    np.testing.assert_array_equal(_guided(x, small, 3.0, 0.01, 1.0), gauss_den(x, small))
    np.testing.assert_array_equal(_guided(x, sigma, 0.0, 0.01, 1.0), gauss_den(x, sigma))
    # A narrowed window (tau in [0.2, 0.5]) acts on sigma 1 and 2 only.
    narrow = _guided(x, sigma, 1.0, 0.2, 0.5)
    on = np.array([False, False, True, True, False, False])
    np.testing.assert_allclose(narrow[on], q_den(x, sigma)[on], rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(narrow[~on], gauss_den(x, sigma)[~on])
    # Clipping: |log r| beyond log((1 - 1e-5)/1e-5) has no gradient (DG's clipped sigmoid).
    far, ones = 40.0 * jnp.ones_like(x), jnp.ones((6,))
    assert float(oracle_logit(far, ones)[0]) < -DG.LOG_RATIO_BOUND
    np.testing.assert_array_equal(_guided(far, ones, 1.0, 0.01, 1.0), gauss_den(far, ones))
    assert DG.LOG_RATIO_BOUND == pytest.approx(np.log((1 - 1e-5) / 1e-5))


def test_dg_heun_with_the_exact_discriminator_samples_the_data(key):
    """w = 1 in both evaluations (window from tau = 0): DG's Heun on the wrong model equals
    Heun on q's denoiser, so the spread moves from p's to q's; DG's default (w2 = 0) one step
    by hand."""
    sig = karras_sigmas(18, 0.002, 80.0)   # EDM's grid: Heun close to the exact flow
    x_T = S.prior_sample(key, (64, 2, 2, 1), sig[0])
    dg1 = jax.jit(lambda s: S.sample(DG.dg_heun(oracle_logit, 1.0, 1.0, 0.0), gauss_den, x_T,
                                     s)[0])(sig)
    np.testing.assert_allclose(dg1, S.sample(S.heun(), q_den, x_T, sig)[0], rtol=1e-5, atol=1e-5)
    # The exact flows map x_T to x_T s / sqrt(s^2 + 80^2): s = SP unguided, SQ = SP / 2 guided
    # (18 Heun steps: 0.528 SP / 80 here).
    assert float(jnp.std(dg1)) < 0.6 * SP * float(jnp.std(x_T)) / 80.0
    # DG's defaults (w1 = 2, w2 = 0, tau >= 0.01), one Heun step 80 -> 10 by hand.
    s0, s1 = 80.0, 10.0
    one = S.sample(DG.dg_heun(oracle_logit, 2.0, 0.0), gauss_den, x_T, jnp.array([s0, s1]))[0]
    x = x_T
    g = x * (1 / (SP**2 + s0**2) - 1 / (SQ**2 + s0**2))
    d = (x - (gauss_den(x, jnp.array([s0])) + 2.0 * s0**2 * g)) / s0
    x_e = x + (s1 - s0) * d
    d2 = (x_e - gauss_den(x_e, jnp.array([s1]))) / s1
    np.testing.assert_allclose(one, x + (s1 - s0) * 0.5 * (d + d2), rtol=1e-5, atol=1e-5)


def test_disc_calls_counts_the_executed_discriminator_passes():
    """`disc_calls` (analytic) equals the passes the sampler runs (counted by a callback inside
    the discriminator): a 5-step grid with DG's window [0.01, 1] and sigma_min 0.002."""
    calls = []

    def counting_logit(x, sigma, cond=None):
        jax.debug.callback(lambda: calls.append(1))
        return oracle_logit(x, sigma)

    sig = karras_sigmas(5, 0.002, 80.0)
    run = jax.jit(lambda w1, w2: S.sample(DG.dg_heun(counting_logit, w1, w2), gauss_den,
                                          jnp.ones((2, 2, 2, 1)), sig)[0])
    for w in ((2.0, 0.0), (1.0, 1.0)):
        calls.clear()
        jax.block_until_ready(run(*w))
        jax.effects_barrier()
        assert len(calls) == int(DG.disc_calls(sig, *w))
    # Euler evaluations at 80, 21.7, 4.5, 0.6 (tau >= 0.01, 0.002 is outside); second at the
    # same except 0.002: (1, 1) gives 4 + 3.
    assert int(DG.disc_calls(sig, 2.0, 0.0)) == 4 and int(DG.disc_calls(sig, 1.0, 1.0)) == 7


def test_guidance_term_matches_dgs_on_the_fixture():
    """`-sigma^2 grad_x log r` and `log r` of the fixture discriminator against DG's
    `get_grad_log_ratio`."""
    z = np.load(FIX / "dg_io.npz")
    tiny = json.loads((FIX / "dg_tiny_configs.json").read_text())
    csd, hsd = read_state_dict(FIX / "dg_classifier.pt"), read_state_dict(FIX / "dg_head_cond.pt")
    x, sigma = jnp.asarray(z["x"].transpose(0, 2, 3, 1)), jnp.asarray(z["sigma"])
    # The unconditional head (DG's CIFAR-10 default; upstream: the same head with
    # condition=False) with the cosine (64 px) time; the conditional head with the linear time:
    # the model tests' logits.
    hsd = {k: v for k, v in hsd.items() if not k.startswith("label_emb")}
    d = dg_model.from_state_dicts(csd, hsd, classifier=tiny["classifier"],
                                  head=dict(tiny["head"], condition=False), time="cosine")
    assert d.num_classes == 0 and d.spec["time"] == "cosine"
    g, lr = jax.jit(lambda p, c: DG.grad_log_ratio(d.make_logit(p), x, sigma, c))(
        d.params, jnp.asarray(z["labels"]))   # labels ignored by an unconditional head
    term = np.asarray(-(sigma**2)[:, None, None, None] * g).transpose(0, 3, 1, 2)
    ref = z["guidance_uncond_cosine"]
    assert np.abs(term - ref).max() / np.abs(ref).max() < 1e-4       # measured 2.7e-6
    np.testing.assert_allclose(lr, z["log_ratio_uncond_cosine"], rtol=1e-5, atol=1e-5)
