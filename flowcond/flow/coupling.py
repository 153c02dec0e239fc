"""Soft-clamped log-scale for normflows' affine coupling (``scale_map="exp"``).

Glow's ``sigmoid(s + 2)`` scale divides by a value that can reach 0 when decoding a latent the
coupling network has not seen, and the decoded image becomes inf/NaN. Bounding the log-scale to
``(-c, c)`` with ``c * tanh(s / c)`` keeps every coupling's expansion below ``e**c`` in both
directions, so decoding generated latents stays finite (and, on MNIST-5k, training converges faster).
"""

from __future__ import annotations

import torch
from torch import nn


class SoftClampedParams(nn.Module):
    """Wraps a coupling network whose output interleaves (shift, log-scale) channels as normflows'
    ``AffineCoupling`` reads them (``0::2`` shift, ``1::2`` log-scale) and soft-clamps the log-scale."""

    def __init__(self, net: nn.Module, clamp: float) -> None:
        super().__init__()
        self.net = net
        self.clamp = float(clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.net(x)
        shift, log_scale = p[:, 0::2], p[:, 1::2]
        log_scale = self.clamp * torch.tanh(log_scale / self.clamp)
        return torch.stack([shift, log_scale], dim=2).flatten(1, 2)
