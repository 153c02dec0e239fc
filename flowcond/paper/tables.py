"""Numbers of the paper's Tables 1-3 for one generator (and for real test images).

* Table 1: class accuracy and FID (evaluator features) of :func:`table_metrics`;
* Table 2: attribute accuracy and AMP variance across identities (:func:`attribute_metrics`);
* Table 3: interference and edit effect of cumulative edits (:func:`edit_states`,
  :func:`edit_metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flowcond.paper import metrics
from flowcond.paper.evaluator import Evaluator
from flowcond.paper.generators import Generator, Noise
from flowcond.paper.sampling import Requested, requested

__all__ = ["Requested", "attribute_metrics", "edit_metrics", "edit_states", "requested", "table_metrics"]


def table_metrics(
    images: torch.Tensor,
    ids: torch.Tensor,
    attrs: torch.Tensor,
    evaluator: Evaluator,
    attr_evaluator: Evaluator,
    real_feats: torch.Tensor,
) -> dict[str, Any]:
    """Tables 1 and 2 for one set of generated images with requested ``ids`` and ``attrs``."""
    out: dict[str, Any] = {
        "accuracy": metrics.accuracy(evaluator.predict(images), ids),
        "fid": metrics.frechet_distance(evaluator.features(images), real_feats),
    }
    out.update(
        attribute_metrics(attr_evaluator.predict_proba(images), ids, attrs, attr_evaluator.class_names)
    )
    return out


def attribute_metrics(
    probs: torch.Tensor, ids: torch.Tensor, attrs: torch.Tensor, names: list[str]
) -> dict[str, Any]:
    """Attribute accuracy per attribute, and AMP variance across identities per attribute (over
    the images requested with that attribute on)."""
    acc = metrics.attribute_accuracy(probs, attrs)
    var = []
    for a in range(probs.shape[1]):
        on = attrs[:, a] > 0.5
        if on.sum() < 2:
            var.append(float("nan"))
            continue
        var.append(float(metrics.amp_variance(probs[on, a], ids[on])[0]))
    return {
        "attribute_accuracy": float(np.mean(acc)),
        "attribute_accuracy_per": dict(zip(names, acc.tolist(), strict=True)),
        "amp_variance": float(np.nanmean(var)),
        "amp_variance_per": dict(zip(names, var, strict=True)),
    }


@torch.no_grad()
def edit_states(
    gen: Generator, req: Requested, noise: Noise, n_attributes: int, attr_evaluator: Evaluator
) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """Table 3's states: all attributes off, then turned on one by one (same noise).

    Returns the per-identity AMPs (K, A) and the images of each of the ``A + 1`` states.
    """
    v = torch.zeros(len(req.ids), n_attributes)
    amps, states = [], []
    for t in range(n_attributes + 1):
        if t:
            v = v.clone()
            v[:, t - 1] = 1.0
        xs = gen.images(req.w, v, noise)
        states.append(xs)
        amps.append(metrics.attribute_mean_probability(attr_evaluator.predict_proba(xs), req.ids).amp)
    return amps, states


def edit_metrics(amps: list[np.ndarray]) -> dict[str, Any]:
    """Table 3 from per-identity AMPs (K, A) of states 0..A (attribute t turned on in state t+1)."""
    edits = list(range(len(amps) - 1))
    cumulative = metrics.cumulative_interference(amps, edits)
    per_step = [metrics.interference(amps[t - 1], amps[t], edits[t - 1]) for t in range(1, len(amps))]
    effect = [
        float(np.mean(amps[t][:, edits[t - 1]] - amps[t - 1][:, edits[t - 1]])) for t in range(1, len(amps))
    ]
    return {"interference": cumulative, "interference_per_step": per_step, "edit_effect": effect}
