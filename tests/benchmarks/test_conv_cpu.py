"""The `free_dw` oracle of `benchmarks/conv_cpu.py` is a valid bound only if it keeps the rest of
the train step exactly as the XLA path computes it: same loss, same gradients of every
non-convolution parameter and of the images, zero convolution-kernel gradients."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import conv_cpu


def _grads(impl, params, x, y):
    with conv_cpu.conv_variant(impl):
        fn = jax.jit(jax.value_and_grad(conv_cpu.xent, argnums=(0, 1)))
        return fn(params, x, y)


def test_free_dw_oracle_drops_only_the_kernel_gradients(key):
    k1, k2, k3 = jax.random.split(key, 3)
    params = conv_cpu.init_convnet(k1, width=8)
    x = jax.random.normal(k2, (4, 32, 32, 3))
    y = jax.random.randint(k3, (4,), 0, 10)
    (loss_ref, (gp_ref, gx_ref)) = _grads("xla", params, x, y)
    (loss, (gp, gx)) = _grads("free_dw", params, x, y)
    np.testing.assert_array_equal(loss, loss_ref)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-7 * float(jnp.max(jnp.abs(gx_ref))))
    for layer in ("conv0", "conv1", "conv2"):
        assert not np.any(gp[layer]["w"]), layer
        assert np.any(gp_ref[layer]["w"]), layer
        for name in ("scale", "bias"):
            ref = gp_ref[layer][name]
            np.testing.assert_allclose(gp[layer][name], ref, rtol=1e-5,
                                       atol=1e-6 * float(jnp.max(jnp.abs(ref))))
        # The conv bias feeds an instance norm, which removes it: its gradient is rounding
        # noise around zero in both.
        np.testing.assert_allclose(gp[layer]["b"], gp_ref[layer]["b"], atol=1e-6)
    np.testing.assert_allclose(gp["head"]["w"], gp_ref["head"]["w"], rtol=1e-6, atol=1e-8)
    # The flag is reset: the next trace is the real implementation again.
    assert conv_cpu._ORACLE["free_dw"] is False
