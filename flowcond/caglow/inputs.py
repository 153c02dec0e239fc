"""Encoder input modules of condition kinds: map a batch of targets to ``(B, width)`` floats.

:meth:`flowcond.conditions.ConditionKind.input_module` returns one of these (or any
``nn.Module``); they live here, not in :mod:`flowcond.conditions`, because they need torch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AsFloat", "Embedding", "OneHot", "Standardize"]


class AsFloat(nn.Module):
    """Default input module: targets used as they are, as float ``(B, width)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.float().reshape(t.shape[0], self.width)


class OneHot(nn.Module):
    """Input module for class ids: ``(B,)`` long -> one-hot ``(B, classes)`` float."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(t.long().reshape(-1), self.classes).float()


class Embedding(nn.Embedding):
    """Learned input module for many class ids: ``nn.Embedding(classes, dim)`` that accepts
    targets of any integer dtype and shape ``(B,)``."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return super().forward(t.long().reshape(-1))


class Standardize(nn.Module):
    """Input module for measured quantities: ``(targets - mean) / std`` as float ``(B, width)``.

    ``mean`` and ``std`` come from the kind's state (statistics of the training labels), so they
    are non-persistent buffers: not written to the heads file, rebuilt from the state."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ValueError(f"Standardize needs one mean and one std per column, got {mean}, {std}")
        self.width = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return (t.float().reshape(t.shape[0], self.width) - self.mean) / self.std
