"""The prior of each level of the backbone (``BackboneConfig.prior``).

``"glow"``: normflows' ``GlowBase``, one mean and log-scale per channel, each stored as
``value * exp(logs * logscale_factor)`` (what ``train-backbone`` trains). ``"diag"``: normflows'
``DiagGaussian``, one mean and log-scale per dimension (priors of imported flows).
"""

from __future__ import annotations

import normflows as nf
import torch
from torch import nn


def prior_type(name: str) -> type[nn.Module]:
    """The normflows distribution class of ``BackboneConfig.prior`` ``name``."""
    return nf.distributions.DiagGaussian if name == "diag" else nf.distributions.GlowBase


def prior_params(q: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-scale of one level's prior ``q``, broadcastable to its latent ``(B, C, H, W)``."""
    if isinstance(q, nf.distributions.DiagGaussian):
        return q.loc, q.log_scale
    loc = q.loc * torch.exp(q.loc_logs * q.logscale_factor)
    log_scale = q.log_scale * torch.exp(q.log_scale_logs * q.logscale_factor)
    return loc, log_scale
