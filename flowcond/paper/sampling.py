"""Seeded, class-balanced subsets and requested conditions for ``flowcond evaluate``.

A dataset split may be ordered by class (``mnist5k``'s train split is): its first ``n`` images
hold a few classes only, so every reference or comparison set here is drawn at random, the same
number from each class, with a seed (:func:`balanced_indices`). The conditions asked of every
method (:func:`requested`) fix the class and draw the attributes from the data's joint
distribution given the class (a random training image of that class supplies them), or, with
``prior="independent"``, each attribute from its overall frequency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def balanced_indices(classes: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` random indices into ``classes`` (N,), as many from each class as possible.

    Each of the ``K`` classes present gives ``n // K`` images (the first ``n % K`` classes one
    more), fewer when it has fewer (then it gives all it has). Grouped by class, in class order.
    """
    g = torch.Generator().manual_seed(seed)
    classes = torch.as_tensor(classes).reshape(-1)
    present = torch.unique(classes)
    K = len(present)
    if K == 0 or n <= 0:
        return torch.zeros(0, dtype=torch.long)
    out = []
    for i, k in enumerate(present.tolist()):
        members = (classes == k).nonzero().flatten()
        take = min(len(members), n // K + (1 if i < n % K else 0))
        out.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(out)


@dataclass
class Requested:
    """Conditions asked of every method: ``per_class`` images per class, attributes per image."""

    ids: torch.Tensor  #: (N,) class of each image
    w: torch.Tensor  #: (N, K) one-hot class weights
    attrs: torch.Tensor  #: (N, A) 0/1 attributes
    per_class: int  #: images per class (``ids`` is ``arange(K)`` each repeated ``per_class`` times)


def requested(
    n_classes: int,
    per_class: int,
    classes: torch.Tensor,
    attributes: torch.Tensor,
    seed: int,
    prior: str = "joint",
) -> Requested:
    """``per_class`` images of each class; attributes of a random training image of the same
    class (``prior="joint"``) or drawn from the attributes' overall frequencies
    (``"independent"``). ``classes`` (N,) and ``attributes`` (N, A) are the training labels."""
    g = torch.Generator().manual_seed(seed + 1000)
    ids = torch.arange(n_classes).repeat_interleave(per_class)
    attributes = attributes.float()
    if prior == "independent":
        attrs = torch.bernoulli(attributes.mean(0).expand(len(ids), -1), generator=g)
    else:
        attrs = torch.empty(len(ids), attributes.shape[1])
        for k in range(n_classes):
            members = (classes == k).nonzero().flatten()
            if len(members) == 0:  # a class with no training image: its attributes' frequencies
                freq = attributes.mean(0).expand(per_class, -1)
                attrs[ids == k] = torch.bernoulli(freq, generator=g)
                continue
            attrs[ids == k] = attributes[members[torch.randint(len(members), (per_class,), generator=g)]]
    return Requested(ids, torch.eye(n_classes)[ids], attrs, per_class)
