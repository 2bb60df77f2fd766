"""Quality metrics against closed forms: Frechet distance of Gaussians, RBF-MMD of shifted
Gaussians, sliced Wasserstein of shifted sets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxdiff.diffusion import quality as Q


def test_frechet_closed_form_commuting():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    ref = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert Q.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(ref, rel=1e-12)


def test_frechet_general_matches_sqrtm_formula():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = A @ A.T + 0.1 * np.eye(5), B @ B.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real  # the textbook (non-symmetric) form
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * covmean)
    assert Q.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-9)
    assert Q.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)
    # rank-deficient covariances stay finite and non-negative
    low = np.outer(A[0], A[0])
    assert Q.frechet_distance(mu1, low, mu1, low) == pytest.approx(0.0, abs=1e-6)


def test_frechet_from_features_converges_to_gaussian_value(key):
    k1, k2 = jax.random.split(key)
    n = 20000
    f1 = np.asarray(jax.random.normal(k1, (n, 4)))
    f2 = np.asarray(jax.random.normal(k2, (n, 4))) * np.array([1.0, 2.0, 1.0, 0.5]) + np.array([1.0, 0, 0, 0])
    ref = 1.0 + (1 - 2) ** 2 + (1 - 0.5) ** 2  # |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    assert Q.frechet_distance_from_features(f1, f2) == pytest.approx(ref, abs=0.05)
    with pytest.raises(ValueError, match="shape mismatch"):
        Q.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def _mmd_gauss(delta2, s2, h2, d):
    """Closed-form MMD^2 of N(mu1, s2 I) vs N(mu2, s2 I) with k = exp(-|a-b|^2/(2 h2))."""
    c = (h2 / (h2 + 2 * s2)) ** (d / 2)
    return 2 * c * (1 - np.exp(-delta2 / (2 * (h2 + 2 * s2))))


def test_mmd_matches_closed_form_for_shifted_gaussians(key):
    k1, k2 = jax.random.split(key)
    n, d, h = 3000, 2, 1.0
    x = jax.random.normal(k1, (n, d))
    y0 = jax.random.normal(k2, (n, d))
    same = float(Q.mmd_rbf(x, y0, h))
    shifted = float(Q.mmd_rbf(x, y0 + jnp.array([0.5, 0.0]), h))
    # the unbiased estimator's null std at n = 3000 is ~1e-3 here
    assert abs(same) < 3e-3
    assert shifted == pytest.approx(_mmd_gauss(0.25, 1.0, h**2, d), abs=4e-3)
    assert shifted > 10 * abs(same)
    # the median heuristic also separates them
    assert float(Q.mmd_rbf(x, y0 + 0.5)) > 10 * abs(float(Q.mmd_rbf(x, y0)))


def test_mmd_equals_naive_unbiased_estimator(key):
    x = np.asarray(jax.random.normal(key, (7, 3)))
    y = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (5, 3))) + 0.3
    h = 0.8
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * h * h))  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    kyy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    kxy = sum(k(a, b) for a in x for b in y) / 35
    assert float(Q.mmd_rbf(x, y, h)) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-5)
    # median heuristic: h^2 = median of distinct pooled squared distances / 2
    z = np.concatenate([x, y])
    d2 = [np.sum((z[i] - z[j]) ** 2) for i in range(12) for j in range(i + 1, 12)]
    assert float(Q.median_bandwidth(x, y)) == pytest.approx(np.sqrt(np.median(d2) / 2), rel=1e-5)


def test_sliced_wasserstein_exact_for_a_shifted_copy(key):
    x = jax.random.normal(key, (500, 3))
    delta = jnp.array([1.0, -2.0, 0.5])
    kp = jax.random.fold_in(key, 1)
    theta = Q.random_directions(kp, 64, 3)
    ref = jnp.sqrt(jnp.mean((theta @ delta) ** 2))
    np.testing.assert_allclose(Q.sliced_wasserstein(x, x + delta, kp, 64), ref, rtol=1e-4)
    np.testing.assert_allclose(Q.sliced_wasserstein(x, x, kp, 64), 0.0, atol=1e-7)


def test_sliced_wasserstein_shifted_gaussians(key):
    """Independent samples of N(0, I) and N(delta, I): along direction theta the 1-D W_2 is
    |theta . delta| (+ finite-sample noise), so SW_2 = sqrt(mean_theta (theta . delta)^2), which
    tends to |delta| / sqrt(D) for uniform directions."""
    k1, k2, kp = jax.random.split(key, 3)
    d, P = 4, 512
    delta = jnp.array([2.0, 0.0, 0.0, 0.0])
    x = jax.random.normal(k1, (2000, d))
    y = jax.random.normal(k2, (1500, d)) + delta  # different sizes: the quantile path
    sw = float(Q.sliced_wasserstein(x, y, kp, P))
    theta = Q.random_directions(kp, P, d)  # the same directions sliced_wasserstein drew
    assert sw == pytest.approx(float(jnp.sqrt(jnp.mean((theta @ delta) ** 2))), rel=0.03)
    # uniform directions: E (theta . delta)^2 = |delta|^2 / D (512 draws: ~4% relative noise)
    assert sw == pytest.approx(2.0 / np.sqrt(d), rel=0.12)
    with pytest.raises(ValueError, match="feature size"):
        Q.sliced_wasserstein(x, y[:, :2], kp)
