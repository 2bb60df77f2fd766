"""Separable DCT-II as matrix products (fast on every backend and differentiable).

Two scalings (fred.md §2.2, §4):

* `norm=None` — scipy's unnormalised DCT-II, the FreD reference's convention:
  X_k = 2 * sum_n x_n cos(pi k (2n + 1) / (2N)), i.e. D[k, n] = 2 cos(pi k (2n + 1) / (2N)).
  Exact inverse D^-1 = D^T diag(1/2, 1, ..., 1) / (2N).
* `norm="ortho"` — the orthonormal DCT-II Q (scipy `norm="ortho"`); Q^-1 = Q^T.

They differ by a diagonal row scaling, D = diag(s) Q with s_0 = 2 sqrt(N), s_k = sqrt(2N) for
k > 0 (`dct_scale`). A 2-D transform of an image X along both spatial axes is F = D X D^T.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DCT_NORMS", "dct_matrix", "idct_matrix", "dct_scale", "apply_along", "dctn", "idctn"]

DCT_NORMS = (None, "ortho")


def _check_norm(norm) -> None:
    if norm not in DCT_NORMS:
        raise ValueError(f"unknown DCT norm {norm!r}; valid: None (unnormalised, FreD's) or 'ortho'")


def dct_scale(n: int) -> np.ndarray:
    """`[n]` float64 s with D_unnormalised = diag(s) @ D_ortho: s_0 = 2 sqrt(n), s_k = sqrt(2n)."""
    s = np.full(n, np.sqrt(2.0 * n))
    s[0] = 2.0 * np.sqrt(n)
    return s


def dct_matrix(n: int, norm: str | None = None) -> np.ndarray:
    """`[n, n]` float64 DCT-II matrix D (row k = frequency k), so that X = D @ x along axis 0."""
    _check_norm(norm)
    k = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    cos = np.cos(np.pi * k * (2 * j + 1) / (2 * n))
    unnormalised = 2.0 * cos
    if norm is None:
        return unnormalised
    return unnormalised / dct_scale(n)[:, None]


def idct_matrix(n: int, norm: str | None = None) -> np.ndarray:
    """`[n, n]` float64 exact inverse of `dct_matrix(n, norm)`.

    Unnormalised: D^-1 = D^T diag(1/2, 1, ..., 1) / (2n) (fred.md §2.2). Orthonormal: Q^T.
    """
    d = dct_matrix(n, norm)
    if norm == "ortho":
        return d.T
    w = np.ones(n)
    w[0] = 0.5
    return d.T * (w / (2.0 * n))[None, :]


def apply_along(x: jax.Array, mats: Sequence[jax.Array], first_axis: int) -> jax.Array:
    """Apply `mats[i]` ([n_i, n_i]) along axis `first_axis + i` of `x`: y = M x on that axis.

    HIGHEST precision so TPUs/GPUs do not round the matmuls to bf16/tf32 (FreD's unnormalised
    coefficients reach 4 N^2 times the pixel scale).
    """
    for i, m in enumerate(mats):
        axis = first_axis + i
        y = jnp.tensordot(x, m, axes=([axis], [1]), precision=jax.lax.Precision.HIGHEST)
        x = jnp.moveaxis(y, -1, axis)
    return x


def dctn(x: jax.Array, num_axes: int, first_axis: int = 1, norm: str | None = None) -> jax.Array:
    """Separable DCT-II over `num_axes` axes starting at `first_axis` (e.g. H, W of NHWC).

    Equals `scipy.fft.dctn(x, type=2, norm=norm, axes=range(first_axis, first_axis+num_axes))`.
    """
    mats = [
        jnp.asarray(dct_matrix(x.shape[first_axis + i], norm), jnp.float32) for i in range(num_axes)
    ]
    return apply_along(x, mats, first_axis)


def idctn(x: jax.Array, num_axes: int, first_axis: int = 1, norm: str | None = None) -> jax.Array:
    """Exact inverse of `dctn` with the same arguments."""
    mats = [
        jnp.asarray(idct_matrix(x.shape[first_axis + i], norm), jnp.float32) for i in range(num_axes)
    ]
    return apply_along(x, mats, first_axis)
