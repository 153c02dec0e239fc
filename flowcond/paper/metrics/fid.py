"""Table 1: Frechet distance between two sets of *evaluator* features.

This is the FID recipe (Heusel et al., 2017) applied to the penultimate layer of flowcond's own
evaluator classifier, not to Inception-v3: its numbers are comparable only between runs that use
the same evaluator file, never to published FID values. Report it as ``FID_NAME``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import linalg

from flowcond.paper.metrics._util import to_numpy

FID_NAME = "FID (evaluator features)"


def frechet_distance(feats_a: Any, feats_b: Any, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with ``scipy.linalg.sqrtm``. As in
    the standard FID code: when the product is singular (non-finite root) ``eps * I`` is added to
    both covariances; a small imaginary part from round-off is dropped, a large one is an error.
    """
    a, b = to_numpy(feats_a, np.float64), to_numpy(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected features (N, D) and (M, D), got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each feature set needs at least 2 samples for a covariance")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    return _frechet(mu_a, cov_a, mu_b, cov_b, eps)


def _sqrtm(m: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular matrices; we check the result
        root = linalg.sqrtm(m)
    return root[0] if isinstance(root, tuple) else root


def _frechet(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray, eps: float) -> float:
    diff = mu_a - mu_b
    covmean = _sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(cov_a)) * eps
        covmean = _sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        scale = max(1.0, np.abs(np.diagonal(covmean).real).max())
        if imag > 1e-3 * scale:
            raise ValueError(f"matrix square root has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # >= 0 in exact arithmetic; clip round-off
