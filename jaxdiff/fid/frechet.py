"""The Fréchet distance between two Gaussian fits of Inception features (FID), in float64 on host.

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

`method="eigh"` (default) takes the trace term from the symmetric form: S1 S2 is similar to
M = S1^(1/2) S2 S1^(1/2) (AB and BA share their non-zero eigenvalues), and M is symmetric positive
semi-definite, so tr((S1 S2)^(1/2)) = sum_i sqrt(max(lambda_i(M), 0)) with both roots from `eigh`
(`jaxdiff.diffusion.quality.frechet_distance`). That is stable for the singular covariances of
fewer samples than dimensions (2048) and never gives complex values.

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
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    if method != "sqrtm":
        raise UserError(f"method {method!r} is not one of {', '.join(METHODS)}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
                 - 2.0 * _sqrtm_trace(sigma1, sigma2, eps))
