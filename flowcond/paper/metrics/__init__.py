"""Metrics of the paper's tables, computed with flowcond's evaluator.

- Table 1: :func:`accuracy`, :func:`frechet_distance` of evaluator features (reported as
  ``FID_NAME = "FID (evaluator features)"``: evaluator features, not Inception).
- Table 2: :func:`attribute_accuracy`, :func:`attribute_mean_probability` (AMP and its variance
  across identities).
- Table 3: :func:`interference`, :func:`cumulative_interference`.
- Coverage (:mod:`~flowcond.paper.metrics.coverage`): :func:`precision_recall`,
  :func:`density_coverage`, :func:`mean_pairwise_distance` (diversity), :func:`nearest_distances`
  (copy check).
"""

from flowcond.paper.metrics.accuracy import accuracy, attribute_accuracy
from flowcond.paper.metrics.amp import AMPResult, amp_variance, attribute_mean_probability
from flowcond.paper.metrics.coverage import (
    density_coverage,
    mean_pairwise_distance,
    nearest_distances,
    precision_recall,
)
from flowcond.paper.metrics.fid import FID_NAME, frechet_distance
from flowcond.paper.metrics.interference import cumulative_interference, interference

__all__ = [
    "FID_NAME",
    "AMPResult",
    "accuracy",
    "amp_variance",
    "attribute_accuracy",
    "attribute_mean_probability",
    "cumulative_interference",
    "density_coverage",
    "frechet_distance",
    "interference",
    "mean_pairwise_distance",
    "nearest_distances",
    "precision_recall",
]
