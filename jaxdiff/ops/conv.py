"""2-D convolution used by every ConvNet in jaxdiff, fast to train on XLA:CPU (issue 3).

`conv2d` is the single seam through which models convolve. Implementations:

* ``"xla"``: `lax.conv_general_dilated` with JAX's own derivative rules. Right on GPU/TPU.
* ``"matmul"``: the same forward value (XLA's convolution), with derivatives routed through
  formulations that XLA:CPU runs fast. Measured on the 2-core dev machine (batch 256,
  16x16x128->128 3x3 layer): XLA's forward and input-gradient convolutions run at 120-180
  GFLOP/s, its weight-gradient convolution at 12-25 GFLOP/s; and inside loop bodies
  (`lax.scan`, which expert trajectories, evaluation and unrolled trajectory matching use)
  the weight-gradient convolution is a further ~50x slower and the input gradient as JAX
  writes it ~6x slower. So:

  - weight gradient: a sum over kernel taps of (shifted input)^T @ (output gradient), one
    GEMM per tap contracting over N*H'*W' (in two halves; 70-120 GFLOP/s); for few input channels
    (< SMALL_C_IN, e.g. RGB) one GEMM on the im2col matrix instead (K = kh*kw*C_in);
  - input gradient: one *canonical* (NHWC/HWIO) XLA convolution of the stride-dilated output
    gradient with the flipped, feature-transposed kernel -- same speed as XLA's own outside
    loops, ~6x faster inside them; for few input channels (the image gradient of the first
    layer, which dataset distillation needs) one GEMM grad_out @ W^T and a col2im sum,
    ~3x faster than XLA there;
  - forward: XLA's convolution (fastest measured for every ConvNet-D3 layer).

* ``"auto"`` (default): ``"matmul"`` when the computation is lowered for CPU, ``"xla"``
  otherwise. Chosen with `lax.platform_dependent`, i.e. by the platform the computation is
  *lowered for* (not the default backend at trace time): a function jitted onto a GPU from a
  CPU-default process uses XLA's convolution there, and the compiled program contains only
  the selected branch.

Choosing the implementation: ``impl=`` wins; else the process-wide setting from
`set_conv_impl` / the `conv_impl` context manager; else ``$JAXDIFF_CONV_IMPL``; else
``"auto"``. The setting is read when a function is *traced*; jit's cache does not know about
it, so a function already traced keeps its implementation: set it before the first call, or
jit a fresh function object (as `benchmarks/conv_cpu.py` does).

Differentiation. ``"matmul"`` is a `jax.custom_vjp` whose backward pass is made of pieces
that are themselves differentiable with rules that stay on the fast, canonical formulations,
so second- and higher-order reverse mode never falls back to XLA's slow convolutions:

* forward value `_conv_fwd`: custom JVP; tangent = conv(dx, w) written so that its transpose
  is the canonical input gradient, plus the tap-GEMM form in dw (transpose: tap GEMMs);
* input gradient `_conv_dx`: custom JVP; tangent = itself in d(grad_out) written so that its
  transpose is the canonical forward convolution, plus a GEMM form in dw;
* weight gradient `_conv_dw`: plain matrix products (natively differentiable into matrix
  products), under `jax.checkpoint` so linearisation keeps x and grad_out, not 9 shifted
  copies.

Supported: `jit`, `vmap` (also pools of models, vmapped over x and w together), `grad` to any
order, `lax.scan`, and forward-over-reverse (`jax.jvp` of `jax.grad`: Hessian-vector
products). Not supported with ``"matmul"``/``"auto"`` on CPU: forward mode applied to
`conv2d` itself (`jax.jvp`, `jax.jacfwd`, `jax.hessian`), a `jax.custom_vjp` limitation; use
``impl="xla"`` there, or `jax.jacrev(jax.jacrev(f))`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "xla", "matmul")
ENV_VAR = "JAXDIFF_CONV_IMPL"

# Below this many input channels the per-tap GEMMs have a contraction (or output) dimension too
# small for the GEMM micro-kernels, and one im2col GEMM with K = kh*kw*C_in wins instead; the
# im2col matrix is then at most kh*kw*SMALL_C_IN/C_out of the layer output, i.e. small.
# Measured on the 2-core dev machine (benchmarks/results/conv_cpu.md): C_in=3 im2col is 2-4x
# faster than taps and than XLA for the weight and input gradients.
SMALL_C_IN = 16

_impl_setting: str | None = None


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
    return impl


def get_conv_impl() -> str:
    """The implementation `conv2d` uses when called without ``impl=``.

    `set_conv_impl`/`conv_impl` if set, else ``$JAXDIFF_CONV_IMPL``, else ``"auto"``.
    """
    if _impl_setting is not None:
        return _impl_setting
    return _check_impl(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")


def set_conv_impl(impl: str | None) -> str | None:
    """Set the process-wide default implementation (None: back to env var / "auto").

    Read at trace time: functions already traced keep their implementation. Returns the
    previous setting so callers can restore it.
    """
    global _impl_setting
    previous = _impl_setting
    _impl_setting = None if impl is None else _check_impl(impl)
    return previous


@contextlib.contextmanager
def conv_impl(impl: str) -> Iterator[None]:
    """Context manager: `conv2d` calls *traced* inside use `impl` by default."""
    previous = set_conv_impl(impl)
    try:
        yield
    finally:
        set_conv_impl(previous)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


class _Geom(NamedTuple):
    """Static description of one convolution (hashable: used as a nondiff argument).

    in_hw: (H, W) of the input; kernel: (kh, kw); stride: s (same along H and W);
    pads: ((top, bottom), (left, right)), each >= 0; out_hw: (H', W').
    """

    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: int
    pads: tuple[tuple[int, int], tuple[int, int]]
    out_hw: tuple[int, int]


def _normalize_padding(padding, in_hw, kernel, stride) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            # lax's convention: output ceil(H/s); the odd pixel of padding goes at the end.
            pads = []
            for size, k in zip(in_hw, kernel):
                out = -(-size // stride)
                total = max((out - 1) * stride + k - size, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}")
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(tuple(int(v) for v in p) for p in padding)
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise ValueError(f"padding pairs must be ((top, bottom), (left, right)), got {padding!r}")
    return pads


def _make_geom(x_shape, w_shape, stride, padding) -> _Geom:
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(
            f"conv2d expects x [N, H, W, C_in] and w [kh, kw, C_in, C_out]; got shapes "
            f"{tuple(x_shape)} and {tuple(w_shape)}"
        )
    if x_shape[-1] != w_shape[2]:
        raise ValueError(
            f"conv2d: x has {x_shape[-1]} channels but w expects {w_shape[2]} (w: HWIO)"
        )
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"conv2d: stride must be a positive int, got {stride!r}")
    in_hw = (int(x_shape[1]), int(x_shape[2]))
    kernel = (int(w_shape[0]), int(w_shape[1]))
    pads = _normalize_padding(padding, in_hw, kernel, stride)
    if any(v < 0 for p in pads for v in p):
        raise ValueError(f"conv2d: negative padding is not supported, got {pads}")
    out_hw = tuple(
        (size + lo + hi - k) // stride + 1 for size, (lo, hi), k in zip(in_hw, pads, kernel)
    )
    if min(out_hw) < 1:
        raise ValueError(
            f"conv2d: kernel {kernel} with padding {pads} does not fit input {in_hw}"
        )
    return _Geom(in_hw, kernel, stride, pads, out_hw)


# --------------------------------------------------------------------------------------------
# XLA formulations
# --------------------------------------------------------------------------------------------

_DIMS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x: jax.Array, w: jax.Array, geom: _Geom) -> jax.Array:
    """`[N, H, W, C] x [kh, kw, C, O] -> [N, H', W', O]` with XLA's convolution (NHWC/HWIO)."""
    return lax.conv_general_dilated(
        x, w, (geom.stride, geom.stride), geom.pads, dimension_numbers=_DIMS
    )


# XLA:CPU runs convolutions in canonical form (NHWC input, HWIO kernel) fast everywhere, but a
# convolution whose kernel is given with swapped feature dimensions (HWOI) -- which is what
# JAX's transpose rule emits for the input gradient of a canonical convolution -- runs 5-6x
# slower inside loop bodies (`lax.scan`/`while`; measured 310 ms vs 53 ms for a 64x16x16x128
# layer), and XLA's weight-gradient convolution 50x slower there. Expert trajectories,
# evaluation loops and unrolled trajectory matching all train inside scans, so every
# convolution this module emits, including those produced by transposition at higher orders,
# is kept canonical:
#
# * `_xla_conv_t` computes the same values as `_xla_conv` but is written with the HWOI kernel
#   spec on w^T, so JAX's transpose of it (the input gradient, `_xla_conv_dx`) is canonical;
# * `_xla_conv_dx_t` is the input gradient written as JAX's transpose of the canonical
#   convolution (HWOI); its own transpose is the canonical forward convolution.
#
# The `_t` forms are used only as tangents (they are transposed, rarely evaluated).

_DIMS_T = ("NHWC", "HWOI", "NHWC")


def _xla_conv_t(x: jax.Array, w: jax.Array, geom: _Geom) -> jax.Array:
    """`_xla_conv` written so that its transpose in x is a canonical convolution."""
    return lax.conv_general_dilated(
        x, jnp.swapaxes(w, 2, 3), (geom.stride, geom.stride), geom.pads, dimension_numbers=_DIMS_T
    )


def _x_aval(g: jax.Array, w: jax.Array, geom: _Geom) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((g.shape[0], *geom.in_hw, w.shape[2]), g.dtype)


def _xla_conv_dx(g: jax.Array, w: jax.Array, geom: _Geom) -> jax.Array:
    """Input gradient `[N, H', W', O] -> [N, H, W, C]` as one canonical XLA convolution
    (of the stride-dilated g with the flipped, feature-transposed kernel)."""
    (dx,) = jax.linear_transpose(lambda x: _xla_conv_t(x, w, geom), _x_aval(g, w, geom))(g)
    return dx


def _xla_conv_dx_t(g: jax.Array, w: jax.Array, geom: _Geom) -> jax.Array:
    """`_xla_conv_dx` written so that its transpose in g is the canonical forward conv."""
    (dx,) = jax.linear_transpose(lambda x: _xla_conv(x, w, geom), _x_aval(g, w, geom))(g)
    return dx


# --------------------------------------------------------------------------------------------
# Matrix-product formulations (plain jnp: natively differentiable to any order)
# --------------------------------------------------------------------------------------------


def _pad(x: jax.Array, geom: _Geom) -> jax.Array:
    (t, b), (l, r) = geom.pads
    if t == b == l == r == 0:
        return x
    return jnp.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))


def _tap(xpad: jax.Array, i: int, j: int, geom: _Geom) -> jax.Array:
    """The input pixels that kernel tap (i, j) sees: `[N, H', W', C]` (a strided slice)."""
    s = geom.stride
    ho, wo = geom.out_hw
    return lax.slice(
        xpad,
        (0, i, j, 0),
        (xpad.shape[0], i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, xpad.shape[3]),
        (1, s, s, 1),
    )


def _taps(x: jax.Array, geom: _Geom) -> list[jax.Array]:
    xpad = _pad(x, geom)
    kh, kw = geom.kernel
    return [_tap(xpad, i, j, geom) for i in range(kh) for j in range(kw)]


def _as_rows(a: jax.Array) -> jax.Array:
    # [N, H, W, C] -> [N*H*W, C]: a free reshape; 2-D GEMMs measured faster on XLA:CPU than
    # the equivalent 4-D dot_generals (which XLA lowers with extra transposes).
    return a.reshape(-1, a.shape[-1])


def _im2col(x: jax.Array, geom: _Geom) -> jax.Array:
    """`[N*H'*W', kh*kw*C]`, columns ordered (i, j, c) like `w.reshape(-1, O)` of HWIO."""
    k = geom.kernel[0] * geom.kernel[1] * x.shape[-1]
    return jnp.concatenate(_taps(x, geom), axis=-1).reshape(-1, k)


def _mm_conv(x: jax.Array, w: jax.Array, geom: _Geom) -> jax.Array:
    """Forward convolution as matrix products: `[N, H, W, C] x [kh, kw, C, O] -> [N, H', W', O]`.

    im2col (one GEMM) for few input channels, else a sum of per-tap GEMMs. Used as the
    tangent in the weight argument (its transpose is the fast weight gradient) and as the
    forward value for few input channels.
    """
    n = x.shape[0]
    kh, kw, c, o = w.shape
    if c < SMALL_C_IN:
        y = _im2col(x, geom) @ w.reshape(kh * kw * c, o)
    else:
        wt = w.reshape(kh * kw, c, o)
        y = None
        for t, xt in enumerate(_taps(x, geom)):
            term = _as_rows(xt) @ wt[t]
            y = term if y is None else y + term
    return y.reshape(n, *geom.out_hw, o)


def _mm_conv_dw(x: jax.Array, g: jax.Array, geom: _Geom) -> jax.Array:
    """Weight gradient `[N, H, W, C] x [N, H', W', O] -> [kh, kw, C, O]` as GEMMs.

    dW[i, j] = tap_ij(x)^T @ g, each a GEMM contracting over N*H'*W'; for few input channels
    one GEMM im2col(x)^T @ g.
    """
    kh, kw = geom.kernel
    c, o = x.shape[-1], g.shape[-1]
    g2 = _as_rows(g)
    if c < SMALL_C_IN:
        return (_im2col(x, geom).T @ g2).reshape(kh, kw, c, o)
    rows = g2.shape[0]
    if rows % 2:
        return jnp.stack([_as_rows(xt).T @ g2 for xt in _taps(x, geom)]).reshape(kh, kw, c, o)
    # The contraction split in two halves, one batched product of two GEMMs, then summed: a
    # [C, O] GEMM with a long contraction parallelises poorly over the output, and the two halves
    # run side by side instead (ConvNet-D3 train step, 2 cores: 566 -> 555 ms; layer 2's taps
    # 23 -> 18 ms each; benchmarks/results/evaluate_cpu.md §5).
    gh = g2.reshape(2, rows // 2, o)

    def tap(xt):
        xh = _as_rows(xt).reshape(2, rows // 2, c)
        return jnp.sum(lax.dot_general(xh, gh, (((1,), (1,)), ((0,), (0,)))), axis=0)
    return jnp.stack([tap(xt) for xt in _taps(x, geom)]).reshape(kh, kw, c, o)


def _mm_conv_dx(g: jax.Array, w: jax.Array, geom: _Geom) -> jax.Array:
    """Input gradient `[N, H', W', O] x [kh, kw, C, O] -> [N, H, W, C]` as GEMMs + col2im.

    cols = g @ W^T (`[N*H'*W', kh*kw*C]`), then each tap's columns are scattered back to the
    pixels it read (the transpose of a strided slice is an interior pad) and summed.
    """
    n = g.shape[0]
    kh, kw, c, o = w.shape
    s = geom.stride
    (t, b), (l, r) = geom.pads
    hp, wp = geom.in_hw[0] + t + b, geom.in_hw[1] + l + r
    ho, wo = geom.out_hw
    g2 = _as_rows(g)
    if c < SMALL_C_IN:
        cols = (g2 @ w.reshape(kh * kw * c, o).T).reshape(n, ho, wo, kh * kw, c)
        parts = [cols[..., k, :] for k in range(kh * kw)]
    else:
        wt = w.reshape(kh * kw, c, o)
        parts = [(g2 @ wt[k].T).reshape(n, ho, wo, c) for k in range(kh * kw)]
    acc = None
    zero = jnp.zeros((), g.dtype)
    for k, part in enumerate(parts):
        i, j = divmod(k, kw)
        # Place tap (i, j)'s contribution at rows i + s*h', cols j + s*w' of the padded input.
        placed = lax.pad(
            part,
            zero,
            (
                (0, 0, 0),
                (i, hp - i - s * (ho - 1) - 1, s - 1),
                (j, wp - j - s * (wo - 1) - 1, s - 1),
                (0, 0, 0),
            ),
        )
        acc = placed if acc is None else acc + placed
    return acc[:, t : t + geom.in_hw[0], l : l + geom.in_hw[1], :]


def _symbolic_zero(t) -> bool:
    return isinstance(t, jax.custom_derivatives.SymbolicZero)


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


# --------------------------------------------------------------------------------------------
# The differentiable pieces of the "matmul" implementation
# --------------------------------------------------------------------------------------------


def _lin_x(dx, w, geom):
    """conv(dx, w) as a tangent: transposes to the fast input gradient for this layer."""
    if w.shape[2] < SMALL_C_IN:
        return _mm_conv(dx, w, geom)  # transposes to the GEMM + col2im input gradient
    return _xla_conv_t(dx, w, geom)  # transposes to the canonical XLA input gradient


def _lin_g(dg, w, geom):
    """conv_dx(dg, w) as a tangent: transposes to the fast forward convolution."""
    if w.shape[2] < SMALL_C_IN:
        return _mm_conv_dx(dg, w, geom)
    return _xla_conv_dx_t(dg, w, geom)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv_fwd(x: jax.Array, w: jax.Array, geom: _Geom) -> jax.Array:
    """Forward value `[N, H, W, C] x [kh, kw, C, O] -> [N, H', W', O]` (XLA's conv)."""
    # XLA's forward convolution is the fastest measured formulation for every layer of
    # ConvNet-D3, including the RGB input layer (im2col GEMM: 2x slower there).
    return _xla_conv(x, w, geom)


@_conv_fwd.defjvp
def _conv_fwd_jvp(geom, primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = _conv_fwd(x, w, geom)
    ty = None
    if not _symbolic_zero(dx):
        # Linear in dx; reverse mode transposes it to the (canonical) input gradient.
        ty = _add(ty, _lin_x(dx, w, geom))
    if not _symbolic_zero(dw):
        # Linear in dw with x fixed: written as matrix products so that its transpose is the
        # tap-GEMM weight gradient; checkpointed so linearisation keeps x, not the shifted taps.
        ty = _add(ty, jax.checkpoint(_mm_conv, static_argnums=(2,))(x, dw, geom))
    if ty is None:
        ty = jnp.zeros_like(y)
    return y, ty


def _dx_value(g, w, geom):
    if w.shape[2] < SMALL_C_IN:
        return _mm_conv_dx(g, w, geom)
    return _xla_conv_dx(g, w, geom)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv_dx(g: jax.Array, w: jax.Array, geom: _Geom) -> jax.Array:
    """Input gradient `[N, H', W', O] x [kh, kw, C, O] -> [N, H, W, C]`."""
    return _dx_value(g, w, geom)


@_conv_dx.defjvp
def _conv_dx_jvp(geom, primals, tangents):
    g, w = primals
    dg, dw = tangents
    dx = _conv_dx(g, w, geom)
    t = None
    if not _symbolic_zero(dg):
        # Linear in dg; reverse mode transposes it to the canonical forward convolution.
        t = _add(t, _lin_g(dg, w, geom))
    if not _symbolic_zero(dw):
        # Transposes (in dw) to tap GEMMs, never to XLA's weight-gradient convolution.
        t = _add(t, jax.checkpoint(_mm_conv_dx, static_argnums=(2,))(g, dw, geom))
    if t is None:
        t = jnp.zeros_like(dx)
    return dx, t


def _conv_dw(x: jax.Array, g: jax.Array, geom: _Geom) -> jax.Array:
    """Weight gradient `[kh, kw, C, O]` (tap GEMMs; checkpointed to keep residuals small)."""
    return jax.checkpoint(_mm_conv_dw, static_argnums=(2,))(x, g, geom)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_matmul(x: jax.Array, w: jax.Array, geom: _Geom) -> jax.Array:
    return _conv_fwd(x, w, geom)


def _conv_matmul_fwd(x, w, geom):
    return _conv_fwd(x, w, geom), (x, w)


def _conv_matmul_bwd(geom, res, g):
    x, w = res
    return _conv_dx(g, w, geom), _conv_dw(x, g, geom)


_conv_matmul.defvjp(_conv_matmul_fwd, _conv_matmul_bwd)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def conv2d(
    x: jax.Array,
    w: jax.Array,
    *,
    stride: int = 1,
    padding: str | int | Sequence[tuple[int, int]] = "SAME",
    impl: str | None = None,
) -> jax.Array:
    """NHWC x HWIO 2-D convolution (cross-correlation, like `lax.conv_general_dilated`).

    Args:
      x: images `[N, H, W, C_in]`.
      w: kernel `[kh, kw, C_in, C_out]`.
      stride: spatial stride (same along H and W).
      padding: "SAME", "VALID", an int p (p pixels of zeros on every side) or a sequence of
        (low, high) pairs for H and W (non-negative).
      impl: "auto" (matmul-based derivatives on CPU, XLA elsewhere), "xla" or "matmul";
        None reads `get_conv_impl()` at trace time. See the module docstring.

    Returns:
      `[N, H', W', C_out]` in the promoted dtype of x and w, with `H' = floor((H + pad_h -
      kh) / stride) + 1` (for "SAME": `ceil(H / stride)`).
    """
    impl = get_conv_impl() if impl is None else _check_impl(impl)
    geom = _make_geom(jnp.shape(x), jnp.shape(w), stride, padding)
    dtype = jnp.result_type(x, w)
    x = jnp.asarray(x, dtype)
    w = jnp.asarray(w, dtype)
    if impl == "xla":
        return _xla_conv(x, w, geom)
    if impl == "matmul":
        return _conv_matmul(x, w, geom)
    return lax.platform_dependent(
        x,
        w,
        cpu=lambda x, w: _conv_matmul(x, w, geom),
        default=lambda x, w: _xla_conv(x, w, geom),
    )
