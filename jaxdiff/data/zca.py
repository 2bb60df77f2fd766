"""ZCA whitening as a fitted, invertible transform (dd-common.md §2; kornia `ZCAWhitening`, MTT).

Images are flattened in PyTorch's CHW order (NHWC -> NCHW, then flatten) so the stored matrices
match those of the references element for element. The whitened output itself does not depend on
the flattening order (ZCA commutes with permutations of coordinates); the matrices do.

Fit (host, NumPy float64): mu = mean over samples; Sigma = (X - mu)^T (X - mu) / (N - 1);
Sigma = U diag(S) U^T (`np.linalg.eigh`, Sigma is symmetric PSD);
T = U diag((S + reg)^-1/2) U^T, T^-1 = U diag((S + reg)^1/2) U^T.
Apply (device, jnp, jittable): whitened = (x - mu) T; invert: y T^-1 + mu.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ZCA(NamedTuple):
    """A fitted ZCA transform over D = C*H*W features in CHW order (a pytree: pass it to `jit`).

    Attributes:
      mean:    `[D]` float32, per-feature training mean.
      whiten:  `[D, D]` float32, T = U diag((S + reg)^-1/2) U^T (symmetric).
      inverse: `[D, D]` float32, T^-1 = U diag((S + reg)^1/2) U^T (symmetric).
    """

    mean: np.ndarray
    whiten: np.ndarray
    inverse: np.ndarray


def _flatten_chw(x, xp):
    n, h, w, c = x.shape
    return xp.transpose(x, (0, 3, 1, 2)).reshape(n, c * h * w)


def _unflatten_chw(flat, shape, xp):
    n, h, w, c = shape
    return xp.transpose(flat.reshape(n, c, h, w), (0, 2, 3, 1))


def fit_zca(images, reg: float = 0.1, *, chunk: int = 4096) -> ZCA:
    """Fit ZCA on `images: [N, H, W, C]` float (N >= 2), e.g. the whole training set in [0, 1].

    `reg` is kornia's `eps`, added to the eigenvalues (0.1 in MTT). The covariance is accumulated
    in float64 over chunks of `chunk` images, so CIFAR-10 (50000 x 3072) needs ~0.4 GB extra.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"fit_zca expects [N, H, W, C] images, got shape {images.shape}")
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"fit_zca needs at least 2 images for an unbiased covariance, got {n}")
    if reg < 0:
        raise ValueError(f"reg must be >= 0, got {reg}")
    d = int(np.prod(images.shape[1:]))
    mean = np.zeros(d)
    for s in range(0, n, chunk):
        mean += _flatten_chw(images[s:s + chunk], np).astype(np.float64).sum(axis=0)
    mean /= n
    cov = np.zeros((d, d))
    for s in range(0, n, chunk):
        xc = _flatten_chw(images[s:s + chunk], np).astype(np.float64) - mean
        cov += xc.T @ xc
    cov /= n - 1
    evals, evecs = np.linalg.eigh(cov)
    evals = np.maximum(evals, 0.0)  # round-off can make tiny eigenvalues negative
    whiten = (evecs * (evals + reg) ** -0.5) @ evecs.T
    inverse = (evecs * (evals + reg) ** 0.5) @ evecs.T
    return ZCA(mean.astype(np.float32), whiten.astype(np.float32), inverse.astype(np.float32))


def _check(zca: ZCA, x) -> None:
    if x.ndim != 4 or int(np.prod(x.shape[1:])) != zca.mean.shape[0]:
        raise ValueError(f"ZCA was fitted on {zca.mean.shape[0]} features; got images of shape "
                         f"{x.shape} (expected [N, H, W, C] with H*W*C = {zca.mean.shape[0]})")


@jax.jit
def zca_apply(zca: ZCA, x: jax.Array) -> jax.Array:
    """Whiten `x: [N, H, W, C]` float -> `[N, H, W, C]` float32: (x - mean) T in CHW order."""
    _check(zca, x)
    flat = _flatten_chw(jnp.asarray(x, jnp.float32), jnp) - zca.mean
    out = jnp.matmul(flat, zca.whiten, precision=jax.lax.Precision.HIGHEST)
    return _unflatten_chw(out, x.shape, jnp)


@jax.jit
def zca_invert(zca: ZCA, x: jax.Array) -> jax.Array:
    """Undo `zca_apply`: `x: [N, H, W, C]` whitened -> x T^-1 + mean, `[N, H, W, C]` float32."""
    _check(zca, x)
    flat = _flatten_chw(jnp.asarray(x, jnp.float32), jnp)
    out = jnp.matmul(flat, zca.inverse, precision=jax.lax.Precision.HIGHEST) + zca.mean
    return _unflatten_chw(out, x.shape, jnp)
