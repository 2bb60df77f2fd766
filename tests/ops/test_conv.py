"""jaxdiff.ops.conv2d (issue 3): every implementation equals `lax.conv_general_dilated` in value
and in first- and second-order derivatives, under jit, vmap (pools of models) and scan; plus
the implementation switch and input validation."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdiff.ops import (
    conv2d,
    conv_impl,
    get_conv_impl,
    set_conv_impl,
)
from jaxdiff.ops import conv as conv_module

from tests.helpers import assert_close, jit_o0


def ref_conv(x, w, stride=1, padding="SAME"):
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(
        x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )


# (H, W, C_in, C_out, k, stride, padding): odd sizes, 1 and 3 input channels (im2col regime),
# and >= SMALL_C_IN channels (tap-GEMM / XLA input-gradient regime).
CASES = [
    (7, 9, 3, 5, 3, 1, "SAME"),
    (7, 9, 3, 5, 3, 2, "SAME"),
    (9, 7, 1, 4, 3, 1, "VALID"),
    (9, 8, 1, 3, 3, 2, "VALID"),
    (8, 7, 3, 4, 2, 1, ((1, 0), (2, 1))),
    (7, 7, 18, 6, 3, 1, 1),
    (9, 10, 16, 5, 3, 2, "SAME"),
    (8, 9, 17, 4, 3, 2, "VALID"),
    (6, 7, 16, 4, 1, 2, "VALID"),  # ResNet-style 1x1 stride-2 shortcut
    (5, 6, 16, 3, 1, 1, 2),  # padding wider than the kernel: negative transposed padding
]


def _data(key, case, n=2):
    h, w_, c, o, k, stride, padding = case
    kx, kw, kb, kc = jax.random.split(key, 4)
    x = jax.random.normal(kx, (n, h, w_, c))
    w = jax.random.normal(kw, (k, k, c, o)) / np.sqrt(k * k * c)
    b = jax.random.normal(kb, (o,))
    ct = jax.random.normal(kc, jax.eval_shape(lambda: ref_conv(x, w, stride, padding)).shape)
    return x, w, b, ct


@pytest.mark.parametrize(
    "case,impl",
    [(c, "matmul") for c in CASES] + [(CASES[1], "auto"), (CASES[6], "auto")],
    ids=lambda v: "-".join(map(str, v)).replace(" ", "") if isinstance(v, tuple) else v,
)
def test_value_and_gradients_match_lax(key, case, impl):
    stride, padding = case[5], case[6]
    ours = lambda x, w: conv2d(x, w, stride=stride, padding=padding, impl=impl)
    theirs = lambda x, w: ref_conv(x, w, stride, padding)

    @jit_o0
    def run(key):
        x, w, b, ct = _data(key, case)
        loss = lambda f: lambda x, w, b: jnp.sum(jnp.tanh(f(x, w) + b) * ct)
        # value, and gradients in input, weight and bias
        side = lambda f: (f(x, w) + b, jax.grad(loss(f), (0, 1, 2))(x, w, b))
        return side(ours), side(theirs)

    (y, g), (y_ref, g_ref) = run(key)
    assert y.shape == y_ref.shape and y.dtype == jnp.float32
    assert_close(y, y_ref, 1e-5)
    assert_close(g, g_ref, 1e-5)


@pytest.mark.parametrize(
    "case,impl",
    [(CASES[1], "matmul"), (CASES[3], "matmul"), (CASES[4], "matmul"), (CASES[6], "matmul"),
     (CASES[7], "auto")],
    ids=lambda v: "-".join(map(str, v)).replace(" ", "") if isinstance(v, tuple) else v,
)
def test_second_order_grad_of_grad_and_hvp(key, case, impl):
    """Trajectory matching differentiates through gradients: grad(grad) and jvp(grad)."""
    stride, padding = case[5], case[6]
    ours = lambda x, w: conv2d(x, w, stride=stride, padding=padding, impl=impl)
    theirs = lambda x, w: ref_conv(x, w, stride, padding)

    @jit_o0
    def run(key):
        x, w, b, ct = _data(key, case)
        kv = jax.random.fold_in(key, 7)
        vx = jax.random.normal(kv, x.shape)
        vw = jax.random.normal(jax.random.fold_in(kv, 1), w.shape)

        def side(f):
            inner = lambda x, w, b: jnp.sum(jnp.tanh(f(x, w) + b) * ct)

            def outer(x, w, b):
                # A scalar of all three first-order gradients, so all feed the second order.
                gx, gw, gb = jax.grad(inner, argnums=(0, 1, 2))(x, w, b)
                return jnp.sum(jnp.sin(gx)) + jnp.sum(gw**2) + jnp.sum(gb * gb.sum())

            gg = jax.grad(outer, argnums=(0, 1, 2))(x, w, b)
            # Forward-over-reverse: Hessian-vector product in both arguments.
            hvp = jax.jvp(lambda x, w: jax.grad(inner, (0, 1))(x, w, b), (x, w), (vx, vw))[1]
            return gg, hvp

        return side(ours), side(theirs)

    (gg, hvp), (gg_ref, hvp_ref) = run(key)
    assert_close(gg, gg_ref, 2e-5)
    assert_close(hvp, hvp_ref, 2e-5)


def test_vmap_pool_of_models(key):
    """A pool of 3 models: x and w both carry a leading model axis. Values, gradients and
    second-order gradients under vmap equal the reference run model by model (no vmap)."""
    ours = lambda x, w: conv2d(x, w, stride=2, padding="SAME", impl="matmul")
    theirs = lambda x, w: ref_conv(x, w, 2, "SAME")
    ours16 = lambda x, w: conv2d(x, w, impl="matmul")  # wide: the XLA input-gradient regime

    def loss(f, x, w, c):
        return jnp.sum(jax.nn.softplus(f(x, w)) * c)

    def second(f, x, w):
        return jax.grad(
            lambda x, w: jnp.sum(jax.grad(lambda w: jnp.sum(jnp.tanh(f(x, w))))(w) ** 2),
            argnums=(0, 1),
        )(x, w)

    @jit_o0
    def run(key):
        kx, kw, kc, k16 = jax.random.split(key, 4)
        xs = jax.random.normal(kx, (3, 2, 7, 9, 3))
        ws = jax.random.normal(kw, (3, 3, 3, 3, 6)) / 5.0
        ct = jax.random.normal(kc, (3, 2, 4, 5, 6))
        x16 = jax.random.normal(k16, (3, 2, 6, 6, 16))
        w16 = jax.random.normal(jax.random.fold_in(k16, 1), (3, 3, 3, 16, 4)) / 12.0
        grad = lambda f: jax.grad(functools.partial(loss, f), argnums=(0, 1))
        got = (jax.vmap(ours)(xs, ws), jax.vmap(grad(ours))(xs, ws, ct),
               jax.vmap(functools.partial(second, ours16))(x16, w16))
        per_model = [
            (theirs(xs[i], ws[i]), grad(theirs)(xs[i], ws[i], ct[i]),
             second(lambda x, w: ref_conv(x, w), x16[i], w16[i]))
            for i in range(3)
        ]
        return got, jax.tree.map(lambda *a: jnp.stack(a), *per_model)

    (y, g, gg), (y_ref, g_ref, gg_ref) = run(key)
    assert_close(y, y_ref, 1e-5)
    assert_close(g, g_ref, 1e-5)
    assert_close(gg, gg_ref, 2e-5)


def _tm_loss(conv, x_syn, log_lr, w0, w_target, steps=3):
    """Gradient through `steps` unrolled SGD steps in a lax.scan (trajectory matching)."""

    def net(w, x):
        h = jax.nn.relu(conv(x, w["a"]))
        h = conv(h, w["b"])
        return jnp.mean(h**2)

    def body(w, _):
        g = jax.grad(net)(w, x_syn)
        return jax.tree.map(lambda p, d: p - jnp.exp(log_lr) * d, w, g), None

    w_final, _ = lax.scan(body, w0, None, length=steps)
    return sum(jnp.sum((w_final[k] - w_target[k]) ** 2) for k in w0)


def test_unrolled_scan_gradient_matches_xla(key):
    """Gradient w.r.t. synthetic images and learning rate through 3 SGD steps in a scan."""
    ours = functools.partial(_tm_loss, lambda x, w: conv2d(x, w, impl="matmul"))
    theirs = functools.partial(_tm_loss, lambda x, w: ref_conv(x, w))

    @jit_o0
    def run(key):
        k1, k2, k3 = jax.random.split(key, 3)
        x_syn = jax.random.normal(k1, (4, 8, 8, 3))
        w0 = {"a": jax.random.normal(k2, (3, 3, 3, 16)) / 5,
              "b": jax.random.normal(k3, (3, 3, 16, 8)) / 12}
        w_target = jax.tree.map(lambda a: 0.9 * a, w0)
        log_lr = jnp.log(jnp.float32(0.1))
        side = lambda f: jax.grad(f, argnums=(0, 1))(x_syn, log_lr, w0, w_target)
        return side(ours), side(theirs)

    g, g_ref = run(key)
    assert_close(g, g_ref, 2e-5)


def test_matmul_path_emits_only_canonical_convolutions_in_loops(key):
    """Guard for the XLA:CPU pitfall the module works around: inside loop bodies, a
    convolution with a transposed (HWOI) kernel runs ~6x slower and XLA's weight-gradient
    convolution ~50x slower. The matmul path must emit only canonical NHWC/HWIO forward
    convolutions and compute weight gradients with dots, also at second order."""
    x_syn = jnp.zeros((2, 8, 8, 3))
    w0 = {"a": jnp.zeros((3, 3, 3, 16)), "b": jnp.zeros((3, 3, 16, 8))}
    fn = jax.grad(functools.partial(_tm_loss, lambda x, w: conv2d(x, w, impl="matmul")))
    hlo = jax.jit(fn).lower(x_syn, jnp.float32(0.0), w0, w0).compile().as_text()
    labels = re.findall(r"dim_labels=([^,}\s]+)", hlo)
    assert labels and set(labels) == {"b01f_01io->b01f"}, sorted(set(labels))
    assert " dot(" in hlo


def test_auto_selects_by_platform():
    """'auto' lowers to the matmul formulation on CPU: its weight gradient is a dot."""
    x, w = jnp.zeros((2, 8, 8, 16)), jnp.zeros((3, 3, 16, 8))
    grad_w = lambda impl: jax.jit(jax.grad(lambda w: jnp.sum(conv2d(x, w, impl=impl)))).lower(w)
    assert " dot(" in grad_w("auto").compile().as_text()
    assert " dot(" not in grad_w("xla").compile().as_text()
    # The platform switch leaves no conditional in the compiled program.
    assert "conditional" not in grad_w("auto").compile().as_text()


def test_impl_setting_env_context_and_errors(monkeypatch):
    previous = set_conv_impl(None)
    try:
        monkeypatch.delenv(conv_module.ENV_VAR, raising=False)
        assert get_conv_impl() == "auto"
        monkeypatch.setenv(conv_module.ENV_VAR, "xla")
        assert get_conv_impl() == "xla"
        with conv_impl("matmul"):
            assert get_conv_impl() == "matmul"
            # Read at trace time: a function traced here uses the matmul formulation.
            x, w = jnp.zeros((1, 6, 6, 16)), jnp.zeros((3, 3, 16, 4))
            hlo = jax.jit(jax.grad(lambda w: jnp.sum(conv2d(x, w)))).lower(w).as_text()
        assert get_conv_impl() == "xla"
        assert "dot_general" in hlo
        monkeypatch.setenv(conv_module.ENV_VAR, "bogus")
        with pytest.raises(ValueError, match="conv impl must be one of"):
            get_conv_impl()
        with pytest.raises(ValueError, match="conv impl must be one of"):
            set_conv_impl("cudnn")
    finally:
        set_conv_impl(previous)


def test_bad_inputs_raise_clear_errors():
    x, w = jnp.zeros((1, 8, 8, 3)), jnp.zeros((3, 3, 4, 5))
    with pytest.raises(ValueError, match="3 channels but w expects 4"):
        conv2d(x, w)
    with pytest.raises(ValueError, match="expects x"):
        conv2d(jnp.zeros((8, 8, 3)), jnp.zeros((3, 3, 3, 5)))
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, jnp.zeros((3, 3, 3, 5)), padding="FULL")
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, jnp.zeros((3, 3, 3, 5)), stride=0)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 3, 5)), padding="VALID")
    with pytest.raises(ValueError, match="conv impl"):
        conv2d(x, jnp.zeros((3, 3, 3, 5)), impl="fast")
