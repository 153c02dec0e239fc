"""Small image CNN pieces shared by the evaluator (:mod:`flowcond.paper.evaluator`) and the image
check of checked sampling (:mod:`flowcond.caglow.image_check`)."""

from __future__ import annotations

from collections.abc import Sequence

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
