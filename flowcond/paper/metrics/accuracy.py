"""Table 1/2: accuracy of (generated) images as judged by the evaluator."""

from __future__ import annotations

from typing import Any

import numpy as np

from flowcond.paper.metrics._util import to_numpy


def accuracy(pred: Any, target: Any) -> float:
    """Fraction of ``pred`` equal to ``target``.

    ``pred`` is either labels of ``target``'s shape (class indices (N,), or 0/1 attributes (N, A):
    the fraction of correct attribute bits), or scores with one more trailing axis than ``target``
    (logits or probabilities (N, K) for class targets (N,)), which are arg-maxed first.
    """
    p, t = to_numpy(pred), to_numpy(target)
    if p.ndim == t.ndim + 1:
        p = p.argmax(-1)
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {p.shape}, target {t.shape}")
    if t.size == 0:
        raise ValueError("accuracy of an empty set")
    return float((p == t).mean())


def attribute_accuracy(probs: Any, target: Any, threshold: float = 0.5) -> np.ndarray:
    """Per-attribute accuracy (A,) of attribute probabilities (N, A) against 0/1 targets (N, A)."""
    p, t = to_numpy(probs, np.float64), to_numpy(target, np.float64)
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"expected probs and targets of the same shape (N, A), got {p.shape} and {t.shape}")
    return ((p > threshold) == (t > 0.5)).mean(axis=0)
