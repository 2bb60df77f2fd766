"""DDiF: one SIREN per synthetic instance, held as stacked arrays (ddif.md §2, §9).

The fields are not Flax modules: thousands of independent tiny MLPs are just a dict of arrays
with a leading instance axis, and decoding them all is a handful of batched contractions over
every instance at once (`_dense`: per-instance h @ W for the whole batch) instead of one module
call per instance as in the reference.

Parameters of N fields with n inputs, L sine layers of width d and m outputs::

    W1 [N, n, d]   b1 [N, d]            first sine layer,  x -> sin(w0_initial * (x W1 + b1))
    Wh [N, L-1, d, d]   bh [N, L-1, d]  hidden sine layers, h -> sin(w0 * (h Wh + bh))
    Wo [N, d, m]   bo [N, m]            linear output (no tanh/clamp: normalised pixels)

w0 multiplies the whole pre-activation, bias included (ddif.md §2.2). Initialisation (§2.3),
weights and biases alike: U(-1/n, 1/n) for the first layer; U(-sqrt(6/d)/w0, +sqrt(6/d)/w0)
with the *hidden* w0 for the hidden and the output layers. Every leaf is stored, so P =
(n+1)d + (L-1)(d+1)d + (d+1)m floats per instance (`budget.siren_num_params`).

Coordinates (§2.4): every grid point, row-major, each axis a mapped to 2 (i / (S_a - 1) - 0.5)
in [-1, 1]; `grid[..., a]` is the coordinate along spatial axis a (row, col) for images,
(t, y, x) or (x, y, z) for 3-D. The reference divides both image axes by H - 1 (square images
only: for H != W its columns would end short of, or beyond, 1); dividing each axis by its own
size - 1 is the same for square images, covers [-1, 1] on every axis of a non-square image
(H x W images get an H x W grid, no padding or cropping), and is what the reference's video
code does for its time axis. A denser grid over the same square decodes at a higher resolution
(`with_grid`); the field is continuous, so nothing else changes.

Warm-up (§4): every field is fitted to a distinct real image of its class with Adam(5e-4),
5000 steps, as ONE batched optimisation of sum_i mean((decode_i - x_i)^2). Adam state is per
parameter and the summed loss gives instance i exactly the gradient of its own MSE, so this is
the reference's sequential per-instance fit done all at once (`fit_fields`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.distill.budget import BudgetReport, ddif_budget
from jaxdiff.distill.params.base import (
    Parameterisation,
    class_sorted_labels,
    labels_fn,
    real_images_shape,
    select_real_images,
    take_instances,
)

__all__ = [
    "SirenConfig",
    "DDIF_PRESETS",
    "ddif_preset",
    "coordinate_grid",
    "siren_init_bounds",
    "init_siren",
    "siren_apply",
    "sine",
    "WarmupResult",
    "fit_fields",
    "with_grid",
    "make_ddif",
]

PARAM_NAMES = ("W1", "b1", "Wh", "bh", "Wo", "bo")
_HIGHEST = jax.lax.Precision.HIGHEST  # keep fields in fp32 on TPU/GPU: sin(30 x) hates bf16


class SirenConfig(NamedTuple):
    """SIREN shape of a DDiF setting (ddif.md §3). `instances_per_class` forces N_pc (dipc)."""

    depth: int
    width: int
    w0_initial: float
    w0: float
    instances_per_class: int | None = None


# Default architectures of the reference's hyper_params.py (ddif.md §3), keyed (dataset, ipc).
DDIF_PRESETS: dict[tuple[str, int], SirenConfig] = {
    ("cifar10", 1): SirenConfig(2, 6, 30.0, 10.0),
    ("cifar10", 10): SirenConfig(2, 6, 30.0, 10.0),
    ("cifar10", 50): SirenConfig(2, 20, 30.0, 10.0),
    ("cifar100", 1): SirenConfig(2, 10, 30.0, 10.0),
    ("cifar100", 10): SirenConfig(2, 15, 30.0, 10.0),
    ("cifar100", 50): SirenConfig(2, 30, 30.0, 10.0),
    ("imagenet_subset_128", 1): SirenConfig(3, 20, 30.0, 40.0),
    ("imagenet_subset_128", 10): SirenConfig(3, 20, 30.0, 40.0),
    ("imagenet_subset_128", 50): SirenConfig(3, 40, 30.0, 40.0),
    ("imagenet_subset_256", 1): SirenConfig(3, 40, 30.0, 40.0),
    ("voxel32", 1): SirenConfig(3, 20, 30.0, 40.0),
    ("miniucf101", 1): SirenConfig(6, 40, 5.0, 5.0, instances_per_class=1),
}


def ddif_preset(dataset: str, ipc: int) -> SirenConfig:
    """The reference's SIREN shape for (dataset, ipc); ValueError listing the known settings."""
    try:
        return DDIF_PRESETS[(dataset, ipc)]
    except KeyError:
        known = ", ".join(f"{d}/IPC{i}" for d, i in DDIF_PRESETS)
        raise ValueError(f"no DDiF preset for {dataset!r} IPC {ipc}; known: {known}") from None


def _check_spatial(spatial: Sequence[int]) -> None:
    if len(spatial) < 1 or any(s < 2 for s in spatial):
        raise ValueError(
            f"ddif: cannot build a coordinate grid for spatial shape {tuple(spatial)}: every axis "
            f"needs at least 2 points (coordinates are i / (size - 1) mapped to [-1, 1])"
        )


def coordinate_grid(spatial: Sequence[int]) -> jax.Array:
    """`[*spatial, n]` float32 coordinates in [-1, 1], n = len(spatial), row-major.

    Axis a: 2 * (i / (spatial[a] - 1) - 0.5), each axis on its own (non-square grids too). First
    point (-1, ..., -1), last (1, ..., 1) up to float32 rounding (XLA multiplies by the rounded
    reciprocal of S - 1: the last point is 1 + 2^-23 for S = 16).
    """
    spatial = tuple(int(s) for s in spatial)
    _check_spatial(spatial)
    return _grid(spatial)


@functools.partial(jax.jit, static_argnums=0)
def _grid(spatial: tuple[int, ...]) -> jax.Array:
    axes = [
        2.0 * (jnp.arange(s, dtype=jnp.float32) / jnp.float32(s - 1) - 0.5) for s in spatial
    ]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


def with_grid(static: dict, spatial: Sequence[int]) -> dict:
    """`static` with the coordinate grid replaced by one of shape `spatial` (cross-resolution).

    The new grid covers the same [-1, 1] cube, so `decode(params, with_grid(static, (64, 64)))`
    renders 32x32-trained fields at 64x64; the number of spatial axes must not change.
    """
    if len(spatial) != static["grid"].shape[-1]:
        raise ValueError(
            f"ddif: the fields take {static['grid'].shape[-1]}-D coordinates; cannot decode on a "
            f"{len(spatial)}-D grid of shape {tuple(spatial)}"
        )
    return {**static, "grid": coordinate_grid(spatial)}


def siren_init_bounds(in_dim: int, width: int, w0: float) -> tuple[float, float]:
    """(first-layer bound 1/n, hidden/output bound sqrt(6/d)/w0) of ddif.md §2.3."""
    return 1.0 / in_dim, math.sqrt(6.0 / width) / w0


@functools.partial(
    jax.jit, static_argnames=("num_instances", "in_dim", "depth", "width", "out_dim", "w0")
)
def init_siren(
    key: jax.Array, num_instances: int, *, in_dim: int, depth: int, width: int, out_dim: int, w0: float
) -> dict:
    """Random fields: weights and biases uniform in the ±bounds of `siren_init_bounds`.

    Instance i is drawn from `fold_in(key, i)`, so it does not depend on how many are drawn. Its
    P parameters come from one `uniform(-1, 1)` draw of length P, scaled by each leaf's bound and
    cut into leaves in `PARAM_NAMES` order (one PRNG call per instance: XLA:CPU takes about a
    second to compile each vmapped threefry call, and six of them made init slow).
    Returns the dict of stacked arrays described in the module docstring.
    """
    first, rest = siren_init_bounds(in_dim, width, w0)
    shapes = {
        "W1": ((in_dim, width), first),
        "b1": ((width,), first),
        "Wh": ((depth - 1, width, width), rest),
        "bh": ((depth - 1, width), rest),
        "Wo": ((width, out_dim), rest),
        "bo": ((out_dim,), rest),
    }
    sizes = [math.prod(shapes[name][0]) for name in PARAM_NAMES]
    bounds = np.concatenate([np.full(n, shapes[name][1], np.float32) for name, n in zip(PARAM_NAMES, sizes)])
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_instances, dtype=jnp.uint32))
    flat = jax.vmap(lambda k: jax.random.uniform(k, (sum(sizes),), jnp.float32, -1.0, 1.0))(keys)
    flat = flat * bounds
    out, start = {}, 0
    for name, n in zip(PARAM_NAMES, sizes):
        out[name] = flat[:, start : start + n].reshape(num_instances, *shapes[name][0])
        start += n
    return out


# ----------------------------------------------------------------------------- fast kernels
# Measured on the 2-core CPU (benchmarks/results/ddif_cpu.md): XLA:CPU's `sin` costs ~14 ns per
# element (scalar libm), 20x more than the polynomial below, and dominated decode time; XLA's
# batched dot of hundreds of (P x 6) @ (6 x 6) products is ~10x slower than the same contraction
# written as d multiply-adds, which fuse into one elementwise loop. Both replacements are plain
# jnp arithmetic, so they run (and differentiate) the same on every backend.

# pi split for Cody-Waite reduction (Cephes' sinf constants times 4): k * _PI_A and k * _PI_B are
# exact for |k| < 2**13, so the reduction is exact to float32 rounding for |x| < 8192 * pi.
_PI_A = np.float32(3.140625)
_PI_B = np.float32(9.67502593994140625e-4)
_PI_C = np.float32(np.pi - 3.140625 - 9.67502593994140625e-4)
_INV_PI = np.float32(1.0 / np.pi)
# Taylor coefficients of sin (to r^13) and cos (to r^16) on |r| <= pi/2: truncation error
# (pi/2)^15/15! = 7e-10 and (pi/2)^18/18! = 5e-12, far below float32 rounding.
_SIN_C = [np.float32((-1) ** i / math.factorial(2 * i + 1)) for i in range(1, 7)]
_COS_C = [np.float32((-1) ** i / math.factorial(2 * i)) for i in range(1, 9)]


def _reduce_pi(x):
    """x = k pi + r, |r| <= pi/2; returns r and whether k is odd (sin/cos change sign)."""
    k = jnp.round(x * _INV_PI)
    r = ((x - k * _PI_A) - k * _PI_B) - k * _PI_C
    return r, (k - 2.0 * jnp.floor(0.5 * k)) != 0


def _horner(r2, coeffs):
    acc = coeffs[-1]
    for c in coeffs[-2::-1]:
        acc = acc * r2 + c
    return acc


@jax.custom_jvp
def sine(x: jax.Array) -> jax.Array:
    """float32 sin(x) by range reduction and a polynomial: absolute error below 2^-23 (2 ulp at
    1) for |x| < 8192 pi (SIREN pre-activations are O(10..100)); its derivative is the matching
    polynomial cosine (same accuracy)."""
    r, odd = _reduce_pi(x)
    s = r + r * (r * r) * _horner(r * r, _SIN_C)
    return jnp.where(odd, -s, s)


@sine.defjvp
def _sine_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    r, odd = _reduce_pi(x)
    r2 = r * r
    s = r + r * r2 * _horner(r2, _SIN_C)
    c = 1.0 + r2 * _horner(r2, _COS_C)
    return jnp.where(odd, -s, s), jnp.where(odd, -c, c) * t


_UNROLL_MAX = 16  # widest contraction written as multiply-adds; wider ones use einsum


@jax.custom_vjp
def _dense(h: jax.Array, w: jax.Array) -> jax.Array:
    """Per-instance w^T h in feature-major layout: h `[B or 1, d, P]`, w `[B, d, e]` -> `[B, e, P]`.

    Activations are feature-major ([instance, unit, point]) so that unit j of every instance is
    the contiguous row h[:, j]. For d <= 16 each output row is written out as
    sum_j w[:, j, e] * h[:, j] (a fixed scalar expression per element: decoding any subset of
    instances equals slicing the full decode bit for bit, and XLA fuses a whole layer into one
    elementwise loop; with the point-major layout XLA:CPU split such a layer into one fusion per
    unit and recomputed the layer below in each, 5x slower inside a loss). The backward pass uses
    einsum: its reduction over the P points is a real matmul.
    """
    b, d, e = w.shape
    if d > _UNROLL_MAX:
        return jnp.einsum("bdp,bde->bep", jnp.broadcast_to(h, (b, *h.shape[1:])), w, precision=_HIGHEST)
    rows = []
    for k in range(e):
        acc = w[:, 0, k, None] * h[:, 0, :]
        for j in range(1, d):
            acc = acc + w[:, j, k, None] * h[:, j, :]
        rows.append(acc)
    return jnp.stack(rows, axis=1)


def _dense_fwd(h, w):
    return _dense(h, w), (h, w)


def _dense_bwd(res, g):
    h, w = res
    if h.shape[0] != g.shape[0]:  # h is the grid, shared by all instances (XLA drops this
        grad_h = jnp.einsum("bde,bep->dp", w, g, precision=_HIGHEST)[None]  # when unused)
        grad_w = jnp.einsum("dp,bep->bde", h[0], g, precision=_HIGHEST)
    else:
        grad_h = jnp.einsum("bde,bep->bdp", w, g, precision=_HIGHEST)
        grad_w = jnp.einsum("bdp,bep->bde", h, g, precision=_HIGHEST)
    return grad_h, grad_w


_dense.defvjp(_dense_fwd, _dense_bwd)


def siren_apply(params: dict, grid: jax.Array, *, w0_initial: float, w0: float) -> jax.Array:
    """Evaluate B stacked fields on a shared grid: `[B, *spatial, m]`.

    h1 = sin(w0_initial (x W1 + b1)); h_l = sin(w0 (h W_l + b_l)); out = h Wo + bo, for every
    instance at once (`_dense` contractions in feature-major layout, polynomial `sine`).

    Args:
      params: stacked field parameters (leading axis B).
      grid: `[*spatial, n]` coordinates (`coordinate_grid`).
    """
    spatial = grid.shape[:-1]
    x = grid.reshape(-1, grid.shape[-1]).T[None]  # [1, n, P], shared by every field
    h = sine(w0_initial * (_dense(x, params["W1"]) + params["b1"][:, :, None]))
    for layer in range(params["Wh"].shape[1]):  # depth - 1 hidden layers, static
        h = sine(w0 * (_dense(h, params["Wh"][:, layer]) + params["bh"][:, layer, :, None]))
    out = _dense(h, params["Wo"]) + params["bo"][:, :, None]  # [B, m, P]
    return jnp.swapaxes(out, 1, 2).reshape(out.shape[0], *spatial, out.shape[1])


class WarmupResult(NamedTuple):
    """Output of `fit_fields`.

    params: fitted fields; mse: `[N]` per-instance MSE after the last step; loss_trace:
    `[steps]` mean over instances of the per-instance MSE before each step.
    """

    params: dict
    mse: jax.Array
    loss_trace: jax.Array


@functools.partial(jax.jit, static_argnames=("steps", "w0_initial", "w0"))
def _fit_batch(params, grid, targets, weights, lr, *, steps, w0_initial, w0):
    """One compiled warm-up of a batch of fields; `weights` [B] (0 for padding) only weight the
    logged trace, which is returned as a per-step weighted *sum* of per-instance MSEs."""
    opt = optax.adam(lr)  # PyTorch defaults: b1 0.9, b2 0.999, eps 1e-8

    def per_instance_mse(p):
        err = siren_apply(p, grid, w0_initial=w0_initial, w0=w0) - targets
        return jnp.mean(jnp.square(err), axis=tuple(range(1, err.ndim)))

    def loss(p):
        mse = per_instance_mse(p)
        return jnp.sum(mse), mse  # sum, not mean: instance i gets exactly its own gradient

    def step(carry, _):
        p, state = carry
        (_, mse), grads = jax.value_and_grad(loss, has_aux=True)(p)
        updates, state = opt.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), jnp.sum(weights * mse)

    (params, _), trace = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params, per_instance_mse(params), trace


def fit_fields(
    params: dict,
    grid: jax.Array,
    targets: jax.Array,
    *,
    steps: int = 5000,
    lr: float = 5e-4,
    w0_initial: float,
    w0: float,
    chunk_size: int | None = None,
) -> WarmupResult:
    """Fit every field to its target image at once (ddif.md §4, §9): one `lax.scan` of
    `steps` Adam(lr) steps on sum_i mean((field_i(grid) - targets_i)^2).

    Args:
      params: N stacked fields. grid: `[*spatial, n]`. targets: `[N, *spatial, m]`.
      chunk_size: fit at most this many instances per compiled call (memory bound for large
        sets); instances are independent, so chunking changes no result. The last chunk is
        padded by repeating its last instance, so every chunk reuses one compilation.
    """
    n = targets.shape[0]
    expect = (n, *grid.shape[:-1], params["Wo"].shape[-1])
    if tuple(targets.shape) != expect:
        raise ValueError(f"ddif warm-up: targets have shape {tuple(targets.shape)}, expected {expect}")
    if steps < 1:
        raise ValueError(f"ddif warm-up needs steps >= 1, got {steps}")
    lr = jnp.asarray(lr, jnp.float32)
    kw = dict(steps=steps, w0_initial=float(w0_initial), w0=float(w0))
    chunk = n if chunk_size is None or chunk_size >= n else chunk_size
    pad = (-n) % chunk

    def padded(a):
        return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a

    params_p, targets_p = jax.tree.map(padded, params), padded(targets)
    weights = (jnp.arange(n + pad) < n).astype(jnp.float32)
    outs = []
    for start in range(0, n + pad, chunk):
        sl = slice(start, start + chunk)
        outs.append(
            _fit_batch(jax.tree.map(lambda a: a[sl], params_p), grid, targets_p[sl], weights[sl], lr, **kw)
        )
    if len(outs) == 1:
        fitted, mse, trace = outs[0]
    else:
        fitted = jax.tree.map(lambda *a: jnp.concatenate(a)[:n], *[o[0] for o in outs])
        mse = jnp.concatenate([o[1] for o in outs])[:n]
        trace = sum(o[2] for o in outs)
    return WarmupResult(fitted, mse, trace / n)


def make_ddif(
    *,
    ipc: int,
    depth: int,
    width: int,
    w0_initial: float = 30.0,
    w0: float = 10.0,
    warmup_steps: int = 5000,
    warmup_lr: float = 5e-4,
    warmup_chunk: int | None = None,
    instances_per_class: int | None = None,
) -> Parameterisation:
    """DDiF parameterisation (defaults: the CIFAR w0s; see `DDIF_PRESETS` for each setting).

    Args:
      ipc: budget in images per class; N_pc = floor(ipc * prod(image_shape) / P).
      depth, width: L sine layers of width d.
      w0_initial, w0: first-layer and hidden w0 (images: 30 and 10 for CIFAR, 40 for ImageNet).
      warmup_steps: Adam steps fitting each field to a distinct real image (0 = random fields).
      warmup_lr: warm-up Adam learning rate (`lr_nf_init`).
      warmup_chunk: fit at most this many instances per compiled call (`fit_fields`).
      instances_per_class: force N_pc (`--dipc`), e.g. 1 for the video setting.

    `static` holds `labels [N]`, `grid [*spatial, n]` and `warmup_mse [N]` (NaN without
    warm-up); the output channel count m is the real images' (3 for RGB, 1 for grayscale/voxels).
    """

    def plan(image_shape, num_classes: int) -> BudgetReport:
        _check_spatial(tuple(image_shape)[:-1])
        return ddif_budget(
            ipc, image_shape, num_classes, depth=depth, width=width,
            instances_per_class=instances_per_class,
        )

    def init_fn(key: jax.Array, real_by_class: Any) -> tuple[dict, dict]:
        num_classes, image_shape, _ = real_images_shape(real_by_class)
        n_pc = plan(image_shape, num_classes).instances_per_class
        spatial, n = image_shape[:-1], num_classes * n_pc
        grid = coordinate_grid(spatial)
        key_images, key_fields = jax.random.split(key)
        params = init_siren(
            key_fields, n, in_dim=len(spatial), depth=depth, width=width,
            out_dim=image_shape[-1], w0=w0,
        )
        mse = jnp.full((n,), jnp.nan, jnp.float32)
        if warmup_steps > 0:
            targets = select_real_images(key_images, real_by_class, n_pc, name="ddif")
            params, mse, _ = fit_fields(
                params, grid, targets, steps=warmup_steps, lr=warmup_lr,
                w0_initial=w0_initial, w0=w0, chunk_size=warmup_chunk,
            )
        return params, {"labels": class_sorted_labels(num_classes, n_pc), "grid": grid, "warmup_mse": mse}

    def decode(params: dict, static: dict, index: jax.Array | None = None) -> jax.Array:
        """`[B, *spatial, m]`: the selected fields evaluated on `static["grid"]`."""
        return siren_apply(take_instances(params, index), static["grid"], w0_initial=w0_initial, w0=w0)

    def storage_floats(params: dict, static: dict) -> int:
        del static  # grid and labels are not charged (ddif.md §3)
        return int(sum(a.size for a in jax.tree.leaves(params)))

    return Parameterisation("ddif", plan, init_fn, decode, labels_fn, storage_floats)
