"""Fréchet distance: Gaussian closed forms, identical statistics, permutation invariance, both
square-root methods, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdiff.errors import UserError
from jaxdiff.fid.frechet import METHODS, fid_from_statistics
from jaxdiff.fid.stats import finalize, init_moments, update_moments


def _closed_form(mu1, a, mu2, b) -> float:
    """FID of N(mu1, Q diag(a) Q^T) and N(mu2, Q diag(b) Q^T): commuting covariances."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rotate", [False, True])
def test_gaussian_closed_form(method, rotate):
    rng = np.random.default_rng(0)
    d = 64
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    q = np.linalg.qr(rng.normal(size=(d, d)))[0] if rotate else np.eye(d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    want = _closed_form(mu1, a, mu2, b)
    assert fid_from_statistics(mu1, s1, mu2, s2, method=method) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_identical_statistics_give_zero(method):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(300, 48)) @ rng.normal(size=(48, 48))
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    assert abs(fid_from_statistics(mu, sigma, mu, sigma, method=method)) < 1e-6


def test_identical_singular_statistics_give_zero():
    """Fewer samples than dimensions (rank 19 of 64), as FID on small sample sets: the
    symmetric root stays real; the square roots of the 45 round-off eigenvalues of the null
    space leave ~1e-7 of the trace."""
    f = np.random.default_rng(2).normal(size=(20, 64)) * 3.0
    mu, sigma = f.mean(0), np.cov(f, rowvar=False)
    assert abs(fid_from_statistics(mu, sigma, mu, sigma)) < 1e-7 * 2 * np.trace(sigma)


def test_methods_agree_on_feature_statistics():
    rng = np.random.default_rng(3)
    f1 = np.abs(rng.normal(size=(400, 32)))
    f2 = np.abs(rng.normal(0.2, 1.1, size=(400, 32)))
    stats = [f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)]
    eigh, sqrtm = (fid_from_statistics(*stats, method=m) for m in METHODS)
    assert eigh > 0.1 and eigh == pytest.approx(sqrtm, rel=1e-8)


def test_permutation_invariance_through_streaming():
    """Shuffling the samples leaves the streamed statistics, and so FID, unchanged."""
    rng = np.random.default_rng(4)
    feats = np.abs(rng.normal(0.5, 1.0, size=(96, 16))).astype(np.float32)
    ref = np.abs(rng.normal(0.4, 1.0, size=(96, 16)))
    ref_stats = (ref.mean(0), np.cov(ref, rowvar=False))

    def fid_of(rows):
        m = init_moments(16)
        for s in range(0, len(rows), 32):
            m = update_moments(m, rows[s:s + 32])
        return fid_from_statistics(*finalize(m), *ref_stats)

    base = fid_of(feats)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(len(feats))
        assert fid_of(feats[perm]) == pytest.approx(base, rel=1e-6)
    one_shot = fid_from_statistics(feats.astype(np.float64).mean(0),
                                   np.cov(feats.astype(np.float64), rowvar=False), *ref_stats)
    assert base == pytest.approx(one_shot, rel=1e-6)


def test_refusals_name_the_problem():
    mu, sigma = np.zeros(8), np.eye(8)
    with pytest.raises(UserError, match="feature dimensions differ: 8 vs 4"):
        fid_from_statistics(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(UserError, match=r"mu must be \[D\] and sigma \[D, D\]; got mu \(8,\), "
                                        r"sigma \(8, 7\)"):
        fid_from_statistics(mu, sigma[:, :7], mu, sigma)
    bad = sigma.copy()
    bad[0, 0] = np.nan
    with pytest.raises(UserError, match="NaN or infinite"):
        fid_from_statistics(mu, sigma, mu, bad)
    with pytest.raises(UserError, match="'svd' is not one of eigh, sqrtm"):
        fid_from_statistics(mu, sigma, mu, sigma, method="svd")
