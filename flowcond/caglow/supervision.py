"""The CAGlow supervision block: one shared trunk, a discriminator head and one head per condition."""

from __future__ import annotations

import torch
from torch import nn


class SupervisionBlock(nn.Module):
    """Shared trunk over latents, then a real/fake logit and a head per condition plugin.

    ``kind="mlp"`` (paper, MNIST): the first FC layer (``hidden`` units) is shared, heads are FC on
    top. ``kind="conv"`` (paper, CelebA): two stride-2 convolutions (64, 128) on the spatial latent,
    then FC heads. The trunk features also serve feature matching (Eq. 14).
    """

    def __init__(
        self,
        latent_dim: int,
        head_dims: dict[str, int],
        kind: str = "mlp",
        hidden: int = 64,
        spatial_shape: tuple[int, int, int] | None = None,
        cond_dim: int = 0,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.spatial = kind == "conv"
        if kind == "mlp":
            self.trunk = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2))
            width = hidden
        elif kind == "conv":
            if spatial_shape is None:
                raise ValueError("conv supervision block needs the spatial latent shape")
            c, h, w = spatial_shape
            self.trunk = nn.Sequential(
                nn.Conv2d(c, 64, 3, stride=2, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(64, 128, 3, stride=2, padding=1),
                nn.LeakyReLU(0.2),
                nn.Flatten(),
            )
            with torch.no_grad():
                width = self.trunk(torch.zeros(1, c, h, w)).shape[1]
        else:
            raise ValueError(f"supervision block kind must be 'mlp' or 'conv', got {kind!r}")
        self.feature_dim = width
        self.disc = nn.Linear(width, 1)
        # projection discriminator term <W c, f(z)> for the supervised conditions c (optional)
        self.projection = nn.Linear(cond_dim, width, bias=False) if cond_dim else None
        self.heads = nn.ModuleDict({name: nn.Linear(width, d) for name, d in head_dims.items()})

    def forward(
        self, z: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Latents (and supervised condition inputs ``c``, for a conditional discriminator) ->
        (trunk features, discriminator logits (B,), {plugin: head output})."""
        f = self.trunk(z)
        logits = self.disc(f).squeeze(1)
        if self.projection is not None and c is not None:
            logits = logits + (self.projection(c) * f).sum(1)
        return f, logits, {name: head(f) for name, head in self.heads.items()}
