"""Encoder input modules of condition kinds: map a batch of targets to ``(B, width)`` floats.

:meth:`flowcond.conditions.ConditionKind.input_module` returns one of these (or any
``nn.Module``); they live here, not in :mod:`flowcond.conditions`, because they need torch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AsFloat", "Embedding", "OneHot"]


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
