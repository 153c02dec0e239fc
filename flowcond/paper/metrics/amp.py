"""Table 2: attribute mean probability (AMP) per identity and its variance across identities.

For images generated for several identities (each with the same requested attributes), the
evaluator gives each image a probability per attribute. AMP of identity ``k`` and attribute ``a``
is the mean of those probabilities over identity ``k``'s images. A conditional generator whose
attribute control works equally for everyone has the same AMP for every identity: the variance of
AMP across identities (population variance, ``ddof=0``) is then 0. Lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flowcond.paper.metrics._util import to_numpy


@dataclass
class AMPResult:
    identities: np.ndarray  #: (K,) the distinct identity labels, sorted
    counts: np.ndarray  #: (K,) images per identity
    amp: np.ndarray  #: (K, A) attribute mean probability per identity
    variance: np.ndarray  #: (A,) variance of AMP across identities, per attribute

    @property
    def mean_variance(self) -> float:
        """Variance of AMP averaged over attributes (one number for a table)."""
        return float(self.variance.mean())


def attribute_mean_probability(probs: Any, identities: Any) -> AMPResult:
    """AMP per identity and its variance across identities from probabilities (N, A), ids (N,)."""
    p = to_numpy(probs, np.float64)
    ids = to_numpy(identities)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or ids.ndim != 1 or len(ids) != len(p):
        raise ValueError(f"expected probabilities (N, A) and identities (N,), got {p.shape} and {ids.shape}")
    if len(p) == 0:
        raise ValueError("AMP of an empty set")
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    sums = np.zeros((len(uniq), p.shape[1]))
    np.add.at(sums, inverse, p)
    amp = sums / counts[:, None]
    return AMPResult(identities=uniq, counts=counts, amp=amp, variance=amp.var(axis=0))


def amp_variance(probs: Any, identities: Any) -> np.ndarray:
    """Variance of AMP across identities, per attribute (A,)."""
    return attribute_mean_probability(probs, identities).variance
