"""DDiF: coordinates, SIREN init ranges, batched decode, warm-up, cross-resolution, 3-D, grayscale."""

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.distill.budget import siren_num_params
from jaxdiff.distill.params import (
    coordinate_grid,
    fit_fields,
    get_parameterisation,
    init_siren,
    select_real_images,
    siren_apply,
    siren_init_bounds,
    with_grid,
)
from jaxdiff.distill.params.neural_field import sine

from tests.helpers import numpy_siren


def _smooth_images(shape, seed=0):
    """Low-frequency test images in roughly unit range ([N, H, W, C]): sums of a few cosines."""
    n, h, w, c = shape
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.5, 2.0, (n, 3, c, 2))
    phase = rng.uniform(0, 2 * np.pi, (n, 3, c))
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    arg = freq[..., 0, None, None] * np.pi * yy + freq[..., 1, None, None] * np.pi * xx + phase[..., None, None]
    return np.moveaxis(np.cos(arg).sum(1) / np.sqrt(3), 1, -1).astype(np.float32)

def _normal(shape, seed=0):
    """Test data from numpy (JAX's threefry costs ~1 s of XLA compile per new shape on CPU)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- coordinates
def test_coordinate_grid_row_major_minus_one_to_one():
    g = np.asarray(coordinate_grid((4, 5)))
    assert g.shape == (4, 5, 2)
    np.testing.assert_array_equal(g[0, 0], [-1, -1])
    np.testing.assert_array_equal(g[-1, -1], [1, 1])
    flat = g.reshape(-1, 2)  # row-major: entry i*W + j is (row i, col j)
    np.testing.assert_allclose(flat[1], [-1, -1 + 2 / 4], rtol=0, atol=1e-7)
    np.testing.assert_allclose(flat[5], [-1 + 2 / 3, -1], rtol=0, atol=1e-7)
    i, j = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    np.testing.assert_allclose(g[..., 0], 2 * (i / 3 - 0.5), atol=1e-7)
    np.testing.assert_allclose(g[..., 1], 2 * (j / 4 - 0.5), atol=1e-7)
    g3 = np.asarray(coordinate_grid((3, 4, 5)))  # (t, y, x)
    assert g3.shape == (3, 4, 5, 3)
    np.testing.assert_array_equal(g3[0, 0, 0], [-1, -1, -1])
    np.testing.assert_array_equal(g3[-1, -1, -1], [1, 1, 1])
    np.testing.assert_allclose(g3[1, 2, 3], [0, 2 * (2 / 3 - 0.5), 2 * (3 / 4 - 0.5)], atol=1e-7)


def test_grid_errors():
    with pytest.raises(ValueError, match=r"spatial shape \(1, 8\).*at least 2 points"):
        coordinate_grid((1, 8))
    with pytest.raises(ValueError, match="at least 2 points"):
        get_parameterisation("ddif", ipc=1, depth=1, width=2).init(None, jnp.zeros((2, 3, 1, 8, 3)))
    static = {"grid": coordinate_grid((4, 4)), "labels": jnp.zeros(1, jnp.int32)}
    with pytest.raises(ValueError, match="2-D coordinates; cannot decode on a 3-D grid"):
        with_grid(static, (4, 4, 4))


# --------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("in_dim,depth,width,out_dim,w0", [(2, 2, 6, 3, 10.0), (3, 3, 20, 1, 40.0)])
def test_init_ranges_and_shapes(key, in_dim, depth, width, out_dim, w0):
    """ddif.md §2.3: first layer U(±1/n); hidden and output U(±sqrt(6/d)/w0), biases too."""
    n = 400
    p = init_siren(key, n, in_dim=in_dim, depth=depth, width=width, out_dim=out_dim, w0=w0)
    first, rest = siren_init_bounds(in_dim, width, w0)
    assert first == 1 / in_dim and rest == pytest.approx(math.sqrt(6 / width) / w0)
    if (width, w0) == (6, 10.0):
        assert rest == pytest.approx(0.1)  # ddif.md: "d = 6, w0 = 10 gives 0.1"
    if (width, w0) == (20, 40.0):
        assert rest == pytest.approx(0.0137, abs=5e-5)
    shapes = {
        "W1": (n, in_dim, width), "b1": (n, width), "Wh": (n, depth - 1, width, width),
        "bh": (n, depth - 1, width), "Wo": (n, width, out_dim), "bo": (n, out_dim),
    }
    assert {k: v.shape for k, v in p.items()} == shapes
    assert sum(v[0].size for v in p.values()) == siren_num_params(in_dim, depth, width, out_dim)
    for name, v in p.items():
        bound = first if name in ("W1", "b1") else rest
        v = np.asarray(v)
        # within ±bound, and filling it (>= 400 uniform draws per leaf: P(max < 0.95 b) < 1e-8)
        assert v.min() >= -bound and v.max() <= bound, name
        assert v.min() < -0.95 * bound and v.max() > 0.95 * bound, name
    # instance i comes from fold_in(key, i): the first 7 of 400 equal a draw of 7
    p7 = init_siren(key, 7, in_dim=in_dim, depth=depth, width=width, out_dim=out_dim, w0=w0)
    for k in p:
        np.testing.assert_array_equal(p7[k], p[k][:7])


# --------------------------------------------------------------------------- decode
def test_sine_matches_float64_sin():
    x = np.concatenate([np.linspace(-60, 60, 100_001), np.linspace(-2e4, 2e4, 100_001)]).astype(np.float32)
    ref = np.sin(x.astype(np.float64))
    np.testing.assert_allclose(jax.jit(sine)(x), ref, rtol=0, atol=2 * 2**-24)  # 2 ulp at 1
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(sine)))(x), np.cos(x.astype(np.float64)), rtol=0, atol=3 * 2**-24)


@pytest.mark.parametrize("width", [6, 20])  # the unrolled and the einsum contraction
def test_gradients_match_plain_autodiff(key, width):
    """The custom VJP of the contractions and the polynomial sine's JVP give the gradients of
    the plain formulation (jnp.sin, einsum), for the fields and for the coordinates."""
    p = init_siren(key, 3, in_dim=2, depth=3, width=width, out_dim=3, w0=10.0)
    grid = coordinate_grid((5, 5))
    t = _normal((3, 5, 5, 3))

    def plain(p, grid):
        x = grid.reshape(-1, 2)
        h = jnp.sin(30.0 * (jnp.einsum("pn,bnd->bpd", x, p["W1"], precision="highest") + p["b1"][:, None]))
        for layer in range(2):
            h = jnp.sin(10.0 * (jnp.einsum("bpd,bde->bpe", h, p["Wh"][:, layer], precision="highest") + p["bh"][:, layer, None]))
        return (jnp.einsum("bpd,bdm->bpm", h, p["Wo"], precision="highest") + p["bo"][:, None]).reshape(3, 5, 5, 3)

    def loss(apply):
        return lambda p, grid: jnp.sum(jnp.sin(apply(p, grid)) * t)

    ours = jax.jit(jax.grad(loss(lambda p, g: siren_apply(p, g, w0_initial=30.0, w0=10.0)), argnums=(0, 1)))(p, grid)
    ref = jax.jit(jax.grad(loss(plain), argnums=(0, 1)))(p, grid)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        b = np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("width", [6, 20])  # the unrolled and the einsum contraction
def test_decode_matches_reference_and_loop_exactly(key, width):
    real = _normal((2, 6, 8, 8, 3))
    param = get_parameterisation("ddif", ipc=15, depth=3, width=width, warmup_steps=0)
    params, static = param.init(key, real)
    n = params["W1"].shape[0]
    assert n == 2 * (15 * 192 // siren_num_params(2, 3, width, 3))
    dec = jax.jit(param.decode)
    full = np.asarray(dec(params, static))
    assert full.shape == (n, 8, 8, 3)
    for i in (0, n - 1):  # the math of ddif.md §2.2 in float64 numpy
        ref = numpy_siren(jax.tree.map(lambda a: a[i], params), static["grid"], 30.0, 10.0)
        np.testing.assert_allclose(full[i], ref, rtol=0, atol=2e-6)
    # the reference's structure, one field at a time, gives the batched result
    loop = np.stack([np.asarray(dec(params, static, jnp.array([i])))[0] for i in range(n)])
    # Bit-identical on jax 0.10's XLA:CPU; newer XLA fuses the batched and the single-field
    # programs differently, so allow a few float32 ulps (measured: <= 6e-8 on jax 0.12).
    np.testing.assert_allclose(loop, full, rtol=1e-6, atol=2e-7)
    # so does any gathered subset, in any order, with repeats (ddif.md parity 7)
    idx = np.array([n - 1, 2, 2, 0])
    np.testing.assert_array_equal(dec(params, static, jnp.asarray(idx)), full[idx])
    np.testing.assert_array_equal(param.labels(static, jnp.asarray(idx)), idx // (n // 2))
    assert param.storage_floats(params, static) == n * siren_num_params(2, 3, width, 3)


def test_cross_resolution_decode(key):
    real = _normal((1, 4, 8, 8, 3))
    param = get_parameterisation("ddif", ipc=1, depth=2, width=6, warmup_steps=0)
    params, static = param.init(key, real)
    dec = jax.jit(param.decode)
    base = np.asarray(dec(params, static))
    # rebuilding the training grid through with_grid changes nothing
    np.testing.assert_array_equal(dec(params, with_grid(static, (8, 8))), base)
    # a (2H-1) grid contains the training grid at even indices (2i / (2H-2) == i / (H-1) exactly)
    fine = np.asarray(dec(params, with_grid(static, (15, 15))))
    assert fine.shape == (base.shape[0], 15, 15, 3)
    np.testing.assert_allclose(fine[:, ::2, ::2], base, rtol=1e-6, atol=2e-7)  # ulps, as above
    # and a 4x denser grid renders the same continuous field at the new points
    big = np.asarray(dec(params, with_grid(static, (32, 32))))
    ref = numpy_siren(jax.tree.map(lambda a: a[1], params), coordinate_grid((32, 32)), 30.0, 10.0)
    np.testing.assert_allclose(big[1], ref, rtol=0, atol=2e-6)


def test_grayscale_and_3d(key):
    gray = _normal((2, 3, 8, 8, 1))
    param = get_parameterisation("ddif", ipc=1, depth=2, width=4, warmup_steps=0)
    params, static = param.init(key, gray)
    assert params["Wo"].shape[-1] == 1 and params["bo"].shape[-1] == 1
    n_pc = 64 // siren_num_params(2, 2, 4, 1)  # 64 // 37 = 1
    assert param.decode(params, static).shape == (2 * n_pc, 8, 8, 1)
    # video/voxels: (t, y, x) coordinates, same code
    vid = _normal((2, 2, 4, 6, 6, 3))
    param3 = get_parameterisation("ddif", ipc=1, depth=2, width=4, warmup_steps=3, instances_per_class=2)
    params3, static3 = param3.init(key, vid)
    np.savez(io.BytesIO(), **params3, **static3)  # plain arrays: pipelines save them as they are
    assert params3["W1"].shape == (4, 3, 4) and static3["grid"].shape == (4, 6, 6, 3)
    out = jax.jit(param3.decode)(params3, static3)
    assert out.shape == (4, 4, 6, 6, 3)
    np.testing.assert_allclose(
        out[3], numpy_siren(jax.tree.map(lambda a: a[3], params3), static3["grid"], 30.0, 10.0),
        rtol=0, atol=2e-6,
    )
    assert param3.plan((4, 6, 6, 3), 2).forced
    assert jax.jit(param3.decode)(params3, with_grid(static3, (8, 6, 6))).shape == (4, 8, 6, 6, 3)


# --------------------------------------------------------------------------- warm-up
_apply = jax.jit(siren_apply, static_argnames=("w0_initial", "w0"))


def test_warmup_reduces_mse_strongly(key):
    # same shapes and steps as the init test below, so the two share one compilation
    targets = _smooth_images((2, 8, 8, 3), seed=3)
    grid = coordinate_grid((8, 8))
    p0 = init_siren(key, 2, in_dim=2, depth=2, width=10, out_dim=3, w0=10.0)
    mse0 = np.mean((np.asarray(_apply(p0, grid, w0_initial=30.0, w0=10.0)) - targets) ** 2, axis=(1, 2, 3))
    res = fit_fields(p0, grid, targets, steps=300, lr=1e-2, w0_initial=30.0, w0=10.0)
    assert res.loss_trace.shape == (300,)
    np.testing.assert_allclose(res.loss_trace[0], mse0.mean(), rtol=1e-5)  # trace = before each step
    # residuals ~1e-2 of values ~1 carry ~1e-7 rounding each (fusion differs between the fit's
    # program and this decode), i.e. ~1e-5 relative on the MSE
    np.testing.assert_allclose(
        res.mse, np.mean((np.asarray(_apply(res.params, grid, w0_initial=30.0, w0=10.0)) - targets) ** 2, axis=(1, 2, 3)),
        rtol=1e-4,
    )
    # every instance >50x lower (seeds 0-5 of this setting give 90x-260x)
    assert np.all(np.asarray(res.mse) < 0.02 * mse0), (res.mse, mse0)


def test_batched_warmup_equals_per_instance_fits(key):
    """ddif.md parity 5: the summed-loss batched fit == sequential per-instance fits."""
    targets = _normal((3, 6, 6, 3))
    grid = coordinate_grid((6, 6))
    p0 = init_siren(key, 3, in_dim=2, depth=2, width=6, out_dim=3, w0=10.0)
    kw = dict(steps=25, lr=5e-3, w0_initial=30.0, w0=10.0)
    batched = fit_fields(p0, grid, targets, **kw)
    moved = max(float(np.abs(np.asarray(batched.params[k]) - np.asarray(p0[k])).max()) for k in p0)
    assert moved > 0.05  # a wrong gradient would show at this scale

    # The backward matmuls round differently for 1 and 3 instances (XLA picks other kernels),
    # and Adam's normalised step turns gradient rounding into parameter differences of order
    # lr * (relative rounding) per step: allow 1e-5 of the largest possible Adam displacement
    # steps * lr (observed: ~1e-7, i.e. 1e-6 of it).
    tol = 1e-5 * kw["steps"] * kw["lr"]

    for i in range(3):
        one = fit_fields(jax.tree.map(lambda a: a[i : i + 1], p0), grid, targets[i : i + 1], **kw)
        for k in p0:
            np.testing.assert_allclose(one.params[k][0], batched.params[k][i], rtol=0, atol=tol)
    # chunked (2 + padded 1) is the same computation again
    chunked = fit_fields(p0, grid, targets, chunk_size=2, **kw)
    for k in p0:
        np.testing.assert_allclose(chunked.params[k], batched.params[k], rtol=0, atol=tol)
    np.testing.assert_allclose(chunked.loss_trace, batched.loss_trace, rtol=1e-5)


def test_init_fits_each_field_to_a_distinct_real_image_of_its_class(key):
    real = _smooth_images((12, 8, 8, 3)).reshape(2, 6, 8, 8, 3)
    param = get_parameterisation("ddif", ipc=1, depth=2, width=10, warmup_steps=300, warmup_lr=1e-2)
    params, static = param.init(key, real)
    n_pc = 192 // siren_num_params(2, 2, 10, 3)  # 192 // 173 = 1
    assert params["W1"].shape[0] == 2 * n_pc
    targets = select_real_images(jax.random.split(key)[0], real, n_pc)
    out = np.asarray(param.decode(params, static))
    mse = np.mean((out - np.asarray(targets)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(static["warmup_mse"], mse, rtol=1e-5)
    # every field reproduces its own target far better than any other real image
    for i in range(out.shape[0]):
        c = i // n_pc
        others = np.mean((out[i][None] - np.asarray(real[c])) ** 2, axis=(1, 2, 3))
        assert mse[i] < 0.1 * np.sort(others)[1]


def test_ddif_bad_inputs(key):
    with pytest.raises(ValueError, match="class 0 has 2 real images, but ddif needs 37 distinct"):
        get_parameterisation("ddif", ipc=1, depth=2, width=6, warmup_steps=1).init(key, jnp.zeros((2, 2, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"targets have shape \(2, 4, 4, 3\), expected \(2, 5, 5, 3\)"):
        p = init_siren(key, 2, in_dim=2, depth=1, width=2, out_dim=3, w0=10.0)
        fit_fields(p, coordinate_grid((5, 5)), jnp.zeros((2, 4, 4, 3)), steps=1, w0_initial=30.0, w0=10.0)
