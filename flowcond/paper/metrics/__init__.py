"""Metrics of the paper's tables, computed with flowcond's evaluator.

- Table 1: :func:`accuracy`, :func:`frechet_distance` of evaluator features (reported as
  ``FID_NAME = "FID (evaluator features)"``: evaluator features, not Inception).
- Table 2: :func:`attribute_accuracy`, :func:`attribute_mean_probability` (AMP and its variance
  across identities).
- Table 3: :func:`interference`, :func:`cumulative_interference`.
"""

from flowcond.paper.metrics.accuracy import accuracy, attribute_accuracy
from flowcond.paper.metrics.amp import AMPResult, amp_variance, attribute_mean_probability
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
    "frechet_distance",
    "interference",
]
