"""Coverage next to fidelity: does a generator cover the data, or repeat a few good samples?

* :func:`precision_recall` (Kynkäänniemi et al., 2019): the real and fake manifolds are unions of
  balls around each sample reaching its ``k``-th nearest neighbour in its own set; precision is
  the fraction of fake samples inside the real manifold, recall the fraction of real samples
  inside the fake one.
* :func:`density_coverage` (Naeem et al., 2020): density counts, per fake sample, the real balls
  that contain it (divided by ``k``; about 1 for matching distributions, unbounded); coverage is
  the fraction of real samples whose ball contains at least one fake sample.
* :func:`mean_pairwise_distance`: within-set diversity, the mean L2 distance between distinct
  pairs (pixels or features).
* :func:`nearest_distances`: each sample's L2 distance to its nearest reference (training) image,
  for a copy check against real test images' distances.

All take feature arrays ``(N, D)`` (images are flattened), in float32, with full distance matrices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flowcond.paper.metrics._util import to_numpy


def _flat(x: Any) -> torch.Tensor:
    t = torch.as_tensor(to_numpy(x, np.float32))
    return t.reshape(len(t), -1)


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (matrix-product form: fast; exact zeros on the diagonal of a set with
    itself are not guaranteed, which the k-NN radii do not need)."""
    return torch.cdist(a, b)


def _radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its ``k``-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} samples, got {len(x)}")
    d = _cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 0 to itself is the first


def precision_recall(real: Any, fake: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` with ``k``-NN balls."""
    r, f = _flat(real), _flat(fake)
    r_rad, f_rad = _radii(r, k), _radii(f, k)
    d = _cdist(f, r)  # (F, R)
    precision = (d <= r_rad[None, :]).any(1).double().mean()
    recall = (d.T <= f_rad[None, :]).any(1).double().mean()
    return float(precision), float(recall)


def density_coverage(real: Any, fake: Any, k: int = 3) -> tuple[float, float]:
    """Density and coverage of ``fake`` against ``real`` with ``k``-NN balls around real samples."""
    r, f = _flat(real), _flat(fake)
    r_rad = _radii(r, k)
    inside = _cdist(f, r) <= r_rad[None, :]  # (F, R)
    density = inside.double().sum() / (k * len(f))
    coverage = inside.any(0).double().mean()
    return float(density), float(coverage)


def mean_pairwise_distance(x: Any) -> float:
    """Mean L2 distance over the distinct pairs of rows of ``x`` (at least 2)."""
    t = _flat(x)
    if len(t) < 2:
        raise ValueError("pairwise distances need at least 2 samples")
    d = _cdist(t, t)
    n = len(t)
    return float(d.sum() / (n * (n - 1)))


def nearest_distances(x: Any, reference: Any, batch: int = 512) -> np.ndarray:
    """L2 distance of each row of ``x`` to its nearest row of ``reference``."""
    t, ref = _flat(x), _flat(reference)
    out = [_cdist(t[i : i + batch], ref).min(1).values for i in range(0, len(t), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0)
