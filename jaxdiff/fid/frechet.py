"""The Fréchet distance between two Gaussian fits of Inception features (FID), in float64 on host.

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

`method="eigh"` (default) takes the trace term from a symmetric form: S1 S2 has the eigenvalues
of M = B^T S2 B for any B with B B^T = S1 (AB and BA share their non-zero eigenvalues), and M is
symmetric positive semi-definite, so tr((S1 S2)^(1/2)) = sum_i sqrt(max(lambda_i(M), 0)) from one
`eigvalsh`. B is the Cholesky factor of S1, or its symmetric square root from `eigh` when S1 is
singular (fewer samples than dimensions; `jaxdiff.diffusion.quality.frechet_distance`). Stable,
and never complex.

`method="sqrtm"` is the computation of pytorch-fid's `calculate_frechet_distance` and EDM's
`fid.py`: `scipy.linalg.sqrtm(S1 @ S2)`, with pytorch-fid's fallback of adding eps * I to both
covariances when the root is not finite, and the real part taken (refused when the diagonal's
imaginary part exceeds 1e-3). Use it to reproduce a published number digit for digit; on
well-conditioned statistics both methods agree to ~1e-8 relative (tests/fid/test_frechet.py).
"""

from __future__ import annotations

import numpy as np

from jaxdiff.diffusion.quality import frechet_distance
from jaxdiff.errors import UserError

METHODS = ("eigh", "sqrtm")


def check_statistics(mu, sigma, what: str = "statistics", dim: int | None = None):
    """`(mu [D] float64, sigma [D, D] float64)`, checked: shapes agree (and D == `dim` when
    given), all finite. `UserError` naming `what` and the shapes otherwise."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise UserError(f"{what}: mu must be [D] and sigma [D, D]; got mu {mu.shape}, "
                        f"sigma {sigma.shape}")
    if dim is not None and mu.size != dim:
        raise UserError(f"{what} have feature dimension {mu.size}, but the FID Inception's "
                        f"pool3 features have {dim}: they come from another feature layer or "
                        f"network; recompute them with this one")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{what}: mu or sigma holds NaN or infinite values")
    return mu, sigma


def _sqrtm_trace(s1, s2, eps: float) -> float:
    """tr(sqrtm(S1 S2)) the way pytorch-fid computes it (see module docstring)."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(s1 @ s2)   # `disp=False` of the originals is deprecated
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise UserError(f"the matrix square root of S1 S2 has an imaginary part of "
                            f"{np.max(np.abs(covmean.imag)):.3g}; use method='eigh'")
        covmean = covmean.real
    return float(np.trace(covmean))


def _fid_cholesky(mu1, s1, mu2, s2) -> float:
    """The "eigh" method: with S1 = L L^T (Cholesky), M = L^T S2 L is symmetric PSD with the
    eigenvalues of S2 S1, so one `eigvalsh` gives the trace term (about half the work of two
    eigendecompositions: ~1.5 s for D = 2048 on two cores). A singular S1 (fewer samples than
    dimensions) has no Cholesky factor: then the symmetric square-root form of
    `jaxdiff.diffusion.quality.frechet_distance` is used."""
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    try:
        low = np.linalg.cholesky(s1)
    except np.linalg.LinAlgError:
        return frechet_distance(mu1, s1, mu2, s2)
    m = low.T @ s2 @ low
    tr_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def fid_from_statistics(mu1, sigma1, mu2, sigma2, *, method: str = "eigh",
                        eps: float = 1e-6) -> float:
    """FID between N(mu1, sigma1) and N(mu2, sigma2) (e.g. samples vs reference `.npz`), float64.

    `UserError` when the two feature dimensions differ (both named) or a value is not finite.
    `eps` is used by `method="sqrtm"` only (pytorch-fid's singular-product fallback)."""
    mu1, sigma1 = check_statistics(mu1, sigma1, "the first statistics")
    mu2, sigma2 = check_statistics(mu2, sigma2, "the second statistics")
    if mu1.size != mu2.size:
        raise UserError(f"feature dimensions differ: {mu1.size} vs {mu2.size}; both statistics "
                        f"must come from the same network layer (FID: 2048-d pool3)")
    if method == "eigh":
        return _fid_cholesky(mu1, sigma1, mu2, sigma2)
    if method != "sqrtm":
        raise UserError(f"method {method!r} is not one of {', '.join(METHODS)}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                 - 2.0 * _sqrtm_trace(sigma1, sigma2, eps))
