"""Random image augmentation (the evaluator, the image check): integer shifts, or shift + rotation + zoom."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by an independent integer offset in [-max_shift, max_shift] (zero fill)."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    p = max_shift
    xp = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]
    return xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_affine(
    x: torch.Tensor,
    max_shift: float,
    max_rotate: float = 0.0,
    max_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random shift (up to ``max_shift`` pixels), rotation (up to ``max_rotate`` degrees) and
    zoom (factor in ``1 +- max_scale``) per image; bilinear, zero fill. Integer shifts only
    (exact, :func:`random_shift`) when rotation and zoom are off."""
    if max_rotate <= 0 and max_scale <= 0:
        return random_shift(x, int(max_shift), generator)
    n, _, h, w = x.shape

    def uniform(bound: float) -> torch.Tensor:
        return (2 * torch.rand(n, generator=generator) - 1) * bound

    angle = uniform(math.radians(max_rotate))
    zoom = 1.0 + uniform(max_scale)
    tx, ty = uniform(2.0 * max_shift / w), uniform(2.0 * max_shift / h)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
