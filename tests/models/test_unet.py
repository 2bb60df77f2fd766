"""The EDM-style U-Net (`jaxdiff.models.unet`): shapes, zero init and conditioning, batch rows
independent, the conv seam, and use as an EDM denoiser in a jitted sampler."""


import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxdiff.ops
from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S
from jaxdiff.diffusion import train as T
from jaxdiff.models.unet import UNet, unet_for_resolution

from tests.helpers import perturbed


@pytest.fixture(scope="module")
def small_unet():
    """One small class-conditional U-Net shared by the model tests. Initialising costs an XLA
    compilation per distinct parameter shape (the random initialisers); the 'rbg' key
    implementation compiles ~2.5x faster than threefry on CPU."""
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    net = UNet(1, base_channels=8, channel_mult=(1, 2), attention=True, num_classes=10, rngs=rngs)
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    apply = jax.jit(lambda p, x, c, lab: nnx.merge(graphdef, p, rest)(x, c, lab))
    return graphdef, params, rest, apply


def test_unet_shapes_zero_init_and_conditioning(key, small_unet):
    graphdef, params, rest, apply = small_unet
    x = jax.random.normal(key, (3, 16, 16, 1))
    c = jnp.array([-1.0, 0.0, 0.5])
    out = apply(params, x, c, jnp.array([0, 1, 10]))
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, 0.0)  # zero-initialised output layer: D = c_skip x
    # perturb all parameters: labels and noise level now change the output, null label default
    p = perturbed(params, key)
    a = apply(p, x, c, jnp.zeros(3, jnp.int32))
    assert not np.allclose(a, apply(p, x, c, jnp.ones(3, jnp.int32)))
    assert not np.allclose(apply(p, x, c + 0.1, jnp.zeros(3, jnp.int32)), a)
    with pytest.raises(ValueError, match="divisible"):
        apply(p, jnp.ones((1, 9, 9, 1)), jnp.zeros(1), None)
    with pytest.raises(ValueError, match="channels"):
        apply(p, jnp.ones((1, 16, 16, 3)), jnp.zeros(1), None)
    with pytest.raises(ValueError, match="preset"):
        unet_for_resolution(64, 3, rngs=nnx.Rngs(0))


def test_unet_batch_rows_are_independent_and_use_conv_seam(key, small_unet, monkeypatch):
    graphdef, params, rest, _ = small_unet
    p = perturbed(params, key)
    calls = []
    real = jaxdiff.ops.conv2d
    monkeypatch.setattr("jaxdiff.models.unet.conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    f = jax.jit(lambda p, x, c: nnx.merge(graphdef, p, rest)(x, c, jnp.full(x.shape[0], 3)))
    x = jax.random.normal(key, (4, 8, 8, 1))
    c = jnp.linspace(-1, 1, 4)
    full = f(p, x, c)
    assert len(calls) > 0  # every 3x3 convolution goes through jaxdiff.ops.conv2d
    one = f(p, x[1:2], c[1:2])[0]  # no cross-sample coupling (GroupNorm is per sample)
    np.testing.assert_allclose(one, full[1], rtol=2e-5, atol=2e-6)


def test_unet_as_edm_denoiser_in_a_jitted_sampler(key, small_unet):
    """With its zero output layer the network's denoiser is D(x) = c_skip x, the exact denoiser
    of Gaussian data N(0, sigma_data^2): the sampler must follow that PF-ODE, whose solution is
    x(sigma) = sqrt((sd^2 + sigma^2) / (sd^2 + sigma_max^2)) x_T."""
    graphdef, params, rest, _ = small_unet
    x_T = S.prior_sample(key, (2, 8, 8, 1), 80.0)
    labels = jnp.array([2, 10])
    sig = sch.karras_sigmas(32, 0.002, 80.0, 7.0, append_zero=False)

    @jax.jit
    def run(params, x_T):
        return S.sample(S.heun(), T.nnx_denoiser(graphdef, params, rest), x_T, sig, None, labels)

    x, aux = run(params, x_T)
    assert int(aux.nfe) == 2 * 31
    exact = np.sqrt((0.25 + 0.002**2) / (0.25 + 80.0**2)) * x_T
    # Heun at 31 steps: relative error ~1e-2 (second order, see test_diffusion_solvers)
    np.testing.assert_allclose(x, exact, rtol=3e-2, atol=1e-4)
