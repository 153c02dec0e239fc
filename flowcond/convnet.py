"""The image CNN shared by the evaluator (:mod:`flowcond.paper.evaluator`) and the image check of
checked sampling (:mod:`flowcond.caglow.image_check`): conv blocks, then a feature layer; each
adds its own dropout and heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: the blocks' feature map is pooled to this side, so what follows has one width for any image
POOLED = 4


def conv_blocks(channels: int, side: int, widths: Sequence[int]) -> tuple[nn.Sequential, int]:
    """One conv3x3 + batch norm + ReLU block per width, each followed by a 2x2 max-pool while the
    feature map's short side ``side`` is at least 8, then adaptive average pooling to
    :data:`POOLED` x :data:`POOLED`. Returns the blocks and their output channels."""
    layers: list[nn.Module] = []
    c = channels
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        if side >= 8:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        c = w
    layers.append(nn.AdaptiveAvgPool2d(POOLED))
    return nn.Sequential(*layers), c


class ConvFeatures(nn.Module):
    """:func:`conv_blocks`, then a fully connected feature layer of ``feature_dim`` units (ReLU)."""

    def __init__(self, channels: int, side: int, widths: Sequence[int], feature_dim: int) -> None:
        super().__init__()
        self.conv, c = conv_blocks(channels, side, widths)
        self.fc = nn.Linear(c * POOLED * POOLED, feature_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> features ``(N, feature_dim)``."""
        return torch.relu(self.fc(self.conv(x).flatten(1)))
