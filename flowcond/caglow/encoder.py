"""The CAGlow encoder ``E(c, eps) -> z``: conditions plus Gaussian noise to a standardized latent."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """Maps concatenated condition inputs ``c`` and noise ``eps`` to a latent.

    ``kind="mlp"`` (paper, MNIST): two fully connected layers with ``hidden`` units, output the flat
    latent ``(B, D)``. ``kind="conv"`` (paper, CelebA): FC to a ``(channels[0], h/4, w/4)`` map, then
    two stride-2 transposed convolutions and a stride-1 convolution to the spatial latent
    ``spatial_shape``. With ``residual_noise`` a learned per-dimension scale adds full-dimensional
    noise ``exp(log_scale) * eps_res``, since the flow's latents have full rank while the network's
    output lies on a manifold of the size of its input.
    """

    def __init__(
        self,
        cond_dim: int,
        latent_dim: int,
        kind: str = "mlp",
        hidden: int = 64,
        noise_dim: int = 64,
        residual_noise: bool = True,
        spatial_shape: tuple[int, int, int] | None = None,
        channels: tuple[int, int] = (128, 512),
    ) -> None:
        super().__init__()
        self.kind, self.cond_dim, self.latent_dim, self.noise_dim = (
            kind,
            cond_dim,
            latent_dim,
            noise_dim,
        )
        self.spatial = kind == "conv"
        n_in = cond_dim + noise_dim
        if kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(n_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, latent_dim)
            )
        elif kind == "conv":
            if spatial_shape is None or spatial_shape[1] % 4 or spatial_shape[2] % 4:
                raise ValueError(
                    f"conv encoder needs a spatial latent with H, W divisible by 4, got {spatial_shape}"
                )
            c, h, w = spatial_shape
            self.start = (channels[0], h // 4, w // 4)
            self.net = nn.Sequential(
                nn.Linear(n_in, channels[0] * (h // 4) * (w // 4)),
                nn.LeakyReLU(0.2),
                nn.Unflatten(1, self.start),
                nn.ConvTranspose2d(channels[0], channels[1], 4, stride=2, padding=1),
                nn.LeakyReLU(0.2),
                nn.ConvTranspose2d(channels[1], channels[1] // 2, 4, stride=2, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(channels[1] // 2, c, 3, padding=1),
            )
        else:
            raise ValueError(f"encoder kind must be 'mlp' or 'conv', got {kind!r}")
        self.log_scale = nn.Parameter(torch.full((latent_dim,), -1.0)) if residual_noise else None

    def forward(
        self, c: torch.Tensor, eps: torch.Tensor, eps_res: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``c`` (B, cond_dim), ``eps`` (B, noise_dim) -> latent: flat (B, D), or spatial for conv.

        ``eps_res`` (B, D) is the residual noise (flat layout; zeros if None).
        """
        out = self.net(torch.cat([c, eps], dim=1))
        if self.log_scale is not None and eps_res is not None:
            res = torch.exp(self.log_scale) * eps_res
            out = out + (res if not self.spatial else res.view_as(out))
        return out
