"""`jaxdiff.ops.norm_pool`: instance norm values and derivatives, 2x2 average pooling, and the
fused instance norm -> ReLU -> pool block against the plain composition."""

import jax
import jax.numpy as jnp
import pytest

from jaxdiff.ops import (
    avg_pool2,
    instance_norm,
    instance_norm_relu_avg_pool2,
)

from tests.helpers import assert_close, jit_o0


def _ref_instance_norm(x, scale, bias, eps=1e-5):
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def _reverse_mode(f, x, scale, bias, ct):
    """Value, gradient (x, scale, bias), grad-of-grad and a vmapped per-sample gradient of
    `sum(sin(f(x, scale, bias)) * ct)`."""
    loss = lambda x, s, b: jnp.sum(jnp.sin(f(x, s, b)) * ct)
    g = jax.grad(loss, argnums=(0, 1, 2))(x, scale, bias)
    gg = jax.grad(
        lambda x, s, b: sum(jnp.sum(t**2) for t in jax.grad(loss, (0, 1, 2))(x, s, b)),
        argnums=(0, 1, 2),
    )(x, scale, bias)
    vm = jax.vmap(lambda xi, c: jax.grad(lambda x: jnp.sum(jnp.sin(f(x, scale, bias)) * c))(
        xi[None]))(x, ct[:, None])
    return f(x, scale, bias), g, gg, vm


def test_instance_norm_values_and_derivatives(key):
    """Value, gradient, grad-of-grad, JVP, affine-only gradient and vmap vs the formula."""

    @jit_o0
    def run(key):
        kx, ks, kb, kc = jax.random.split(key, 4)
        x = jax.random.normal(kx, (3, 5, 6, 4)) * 2.0 + 1.5
        scale, bias = jax.random.normal(ks, (4,)), jax.random.normal(kb, (4,))
        ct = jax.random.normal(kc, x.shape)

        def side(f):
            value, g, gg, vm = _reverse_mode(f, x, scale, bias, ct)
            jvp = jax.jvp(f, (x, scale, bias), (ct, scale, bias))[1]
            # Only the affine parameters differentiated (symbolic-zero tangent for x).
            g_affine = jax.grad(lambda s: jnp.sum(f(x, s, bias) * ct))(scale)
            return value, g, gg, jvp, g_affine, vm

        return side(instance_norm), side(_ref_instance_norm)

    ours, ref = run(key)
    for name, a, b, tol in zip(("value", "grad", "grad2", "jvp", "affine", "vmap"), ours, ref,
                               (1e-5, 1e-5, 2e-5, 1e-5, 1e-5, 1e-5)):
        assert_close(a, b, tol), name


def test_avg_pool2(key):
    x = jax.random.normal(key, (2, 6, 4, 3))
    expected = x.reshape(2, 3, 2, 2, 2, 3).mean(axis=(2, 4))
    assert_close(avg_pool2(x), expected, 1e-6)


def _ref_block(x, scale, bias, eps=1e-5):
    return avg_pool2(jax.nn.relu(_ref_instance_norm(x, scale, bias, eps)))


def test_instance_norm_relu_avg_pool2_matches_composition(key):
    """The fused block's value (alone and under differentiation), gradients (x, scale, bias),
    grad-of-grad, Hessian-vector product (forward over reverse) and vmap equal the plain
    composition's."""

    @jit_o0
    def run(key):
        kx, ks, kb, kc, kv = jax.random.split(key, 5)
        x = jax.random.normal(kx, (3, 6, 4, 5)) * 2.0 + 1.5
        scale, bias = 1 + jax.random.normal(ks, (5,)), 0.5 * jax.random.normal(kb, (5,))
        ct = jax.random.normal(kc, (3, 3, 2, 5))
        v = jax.random.normal(kv, x.shape)

        def side(f):
            value, g, gg, vm = _reverse_mode(f, x, scale, bias, ct)
            loss = lambda x: jnp.sum(jnp.sin(f(x, scale, bias)) * ct)
            hvp = jax.jvp(jax.grad(loss), (x,), (v,))[1]
            # The value as computed under differentiation (the custom rule's own forward).
            value_in_vjp = jax.vjp(f, x, scale, bias)[0]
            return value, value_in_vjp, g, gg, hvp, vm

        return side(instance_norm_relu_avg_pool2), side(_ref_block)

    ours, ref = run(key)
    for name, a, b, tol in zip(("value", "value_in_vjp", "grad", "grad2", "hvp", "vmap"), ours,
                               ref, (1e-5, 1e-5, 1e-5, 2e-5, 2e-5, 1e-5)):
        assert_close(a, b, tol), name


def test_instance_norm_relu_avg_pool2_refuses_odd_sizes():
    x = jnp.ones((1, 5, 4, 2))
    with pytest.raises(ValueError, match=r"even H and W, got \(5, 4\)"):
        instance_norm_relu_avg_pool2(x, jnp.ones(2), jnp.zeros(2))
