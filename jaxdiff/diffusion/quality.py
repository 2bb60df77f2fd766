"""Sample-quality metrics: kernel MMD, sliced Wasserstein and the Frechet distance.

Samples are `[N, ...]` arrays flattened to `[N, D]`. MMD and sliced Wasserstein are jittable JAX
functions (low-dimensional toy data, features); the Frechet distance is computed in float64 NumPy
on the host because the matrix square root of a feature covariance is ill-conditioned in float32
(it runs once per evaluation, never inside a loop).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _flat(x):
    x = jnp.asarray(x)
    return x.reshape(x.shape[0], -1)


def _sq_dists(a, b):
    """Pairwise squared Euclidean distances `[n, m]`, clipped at 0 (cancellation)."""
    d = (
        jnp.sum(a * a, axis=1)[:, None]
        + jnp.sum(b * b, axis=1)[None, :]
        - 2.0 * (a @ b.T)
    )
    return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames=("max_points",))
def median_bandwidth(x, y, max_points: int = 1024) -> jax.Array:
    """Median heuristic bandwidth: `h**2 = median(|a - b|^2) / 2` over distinct pairs of the
    pooled set, so the RBF kernel below is `exp(-d2 / median(d2))` (Gretton et al. 2012).

    Beyond `max_points` pooled points, the median is taken over an evenly spaced subset of that
    size (the heuristic needs a scale, not an exact order statistic; a full median over N^2
    pairs would dominate the cost).
    """
    z = jnp.concatenate([_flat(x), _flat(y)], axis=0)
    if z.shape[0] > max_points:
        z = z[np.linspace(0, z.shape[0] - 1, max_points).round().astype(np.int32)]
    iu = np.triu_indices(z.shape[0], k=1)
    return jnp.sqrt(0.5 * jnp.median(_sq_dists(z, z)[iu]))


@jax.jit
def mmd_rbf(x, y, bandwidth=None) -> jax.Array:
    """Unbiased estimate of the squared MMD with an RBF kernel (Gretton et al. 2012, Eq. 3).

        k(a, b) = exp(-|a - b|^2 / (2 h^2)),
        MMD_u^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j).

    Args:
      x: `[n, ...]`, y: `[m, ...]` (n, m >= 2), same trailing size.
      bandwidth: h (scalar, may be traced); None uses `median_bandwidth(x, y)`.

    Returns:
      scalar; unbiased, so it can be slightly negative when the distributions agree.
    """
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same feature size, got {x.shape} and {y.shape}")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples per set")
    h = median_bandwidth(x, y) if bandwidth is None else jnp.asarray(bandwidth, x.dtype)
    g = 1.0 / (2.0 * jnp.square(h))
    kxx = jnp.exp(-g * _sq_dists(x, x))
    kyy = jnp.exp(-g * _sq_dists(y, y))
    kxy = jnp.exp(-g * _sq_dists(x, y))
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return sxx + syy - 2.0 * jnp.mean(kxy)


def random_directions(key, num: int, dim: int, dtype=jnp.float32) -> jax.Array:
    """`[num, dim]` directions uniform on the unit sphere (normalised Gaussians)."""
    v = jax.random.normal(key, (num, dim), dtype)
    return v / jnp.linalg.norm(v, axis=1, keepdims=True)


@functools.partial(jax.jit, static_argnames=("num_projections", "p"))
def sliced_wasserstein(x, y, key, num_projections: int = 128, p: int = 2) -> jax.Array:
    """Sliced p-Wasserstein distance `(E_theta W_p^p(theta.x, theta.y))^(1/p)`, theta uniform on
    the sphere, estimated with `num_projections` random directions from `key`.

    Each 1-D W_p compares sorted projections; sets of different sizes are compared at the
    common quantile levels `(i + 1/2)/L`, `L = max(n, m)` (linear interpolation).

    For `y = x + delta` (the same points shifted), the value is exactly
    `(mean_theta |theta . delta|^p)^(1/p)`; for two Gaussians differing by a shift it tends to
    `|delta| (E|theta_1|^p)^(1/p)` (= `|delta|/sqrt(D)` for p = 2).
    """
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same feature size, got {x.shape} and {y.shape}")
    theta = random_directions(key, num_projections, x.shape[1], x.dtype)
    px = jnp.sort(x @ theta.T, axis=0)  # [n, P]
    py = jnp.sort(y @ theta.T, axis=0)
    if px.shape[0] != py.shape[0]:
        L = max(px.shape[0], py.shape[0])
        q = (np.arange(L) + 0.5) / L
        px, py = _sorted_quantiles(px, q), _sorted_quantiles(py, q)
    wp = jnp.mean(jnp.abs(px - py) ** p, axis=0)  # [P]: W_p^p per direction
    return jnp.mean(wp) ** (1.0 / p)


def _sorted_quantiles(sorted_vals, q):
    """Linear-interpolation quantiles (numpy's default) of columns already sorted along axis 0."""
    n = sorted_vals.shape[0]
    pos = np.asarray(q) * (n - 1)  # static levels: indices and weights are host constants
    lo = np.floor(pos).astype(np.int32)
    hi = np.minimum(lo + 1, n - 1)
    w = jnp.asarray(pos - lo, sorted_vals.dtype)[:, None]
    return sorted_vals[lo] * (1 - w) + sorted_vals[hi] * w


# --------------------------------------------------------------------------------------------
# Frechet distance (host, float64)
# --------------------------------------------------------------------------------------------


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigendecomposition (negative round-off eigenvalues -> 0)."""
    c = 0.5 * (c + c.T)
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2):

        |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^(1/2) C2 C1^(1/2))^(1/2)).

    Uses the symmetric form, so both square roots are of symmetric PSD matrices (eigh), in
    float64. Returns a Python float (FID when the inputs are Inception-feature statistics).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    c1, c2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or c1.shape != c2.shape or c1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, cov1 {c1.shape}, cov2 {c2.shape}"
        )
    s1 = _sqrtm_psd(c1)
    m = s1 @ c2 @ s1
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    tr_sqrt = float(np.sum(np.sqrt(np.clip(w, 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[D]` and unbiased covariance `[D, D]` of `[N, D]` features, float64 on the host."""
    f = np.asarray(features, np.float64).reshape(np.shape(features)[0], -1)
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance_from_features(f1, f2) -> float:
    """Frechet distance between the Gaussian fits of two feature sets `[N1, D]`, `[N2, D]`."""
    return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
