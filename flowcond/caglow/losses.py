"""The losses of attaching heads (paper Eq. 10-15), on real latents ``F(x)`` and generated ones.

* supervision block step: ``Di`` (Eq. 11), ``C`` on real latents (Eq. 12), ``De`` on generated
  latents (Eq. 13);
* encoder step: ``E`` (Eq. 10, non-saturating), ``C`` and ``De`` on generated latents, the pairwise
  feature matching ``FM`` (Eq. 14), ``MM`` (not in the paper: moment matching) and
  ``MS`` (not in the paper: mode seeking, :func:`noise_losses`);

weighted by the ``lambdas`` of Eq. 15 (:func:`weighted_sum`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from flowcond.caglow.config import Lambdas
from flowcond.caglow.heads import Heads
from flowcond.conditions import ConditionKind
from flowcond.errors import ConfigError


def loss_weights(lambdas: Lambdas, kinds: Mapping[str, ConditionKind]) -> dict[str, float]:
    """Each kind's weight inside ``C`` (supervised) or ``De`` (unsupervised): ``--lambda C.NAME``
    / ``De.NAME``, else the kind's ``loss_weight``. A one-line ConfigError for a weight of a kind
    not attached, in the wrong group, or a ``loss_weight`` that is not a finite number >= 0."""
    for key in lambdas.kinds:
        group, _, name = key.partition(".")
        if name not in kinds:
            raise ConfigError(f"--lambda {key}: no condition {name!r} is attached ({', '.join(kinds)})")
        right = "C" if kinds[name].supervised else "De"
        if group != right:
            raise ConfigError(f"--lambda {key}: the loss of {name!r} is part of {right}: use {right}.{name}")
    out = {}
    for name, kind in kinds.items():
        default = getattr(kind, "loss_weight", 1.0)
        if isinstance(default, bool) or not isinstance(default, int | float) or not 0 <= default < 1e6:
            raise ConfigError(
                f"condition plugin {name!r}: loss_weight {default!r} must be a number in [0, 1e6)"
            )
        out[name] = lambdas.kind_weight("C" if kind.supervised else "De", name, float(default))
    return out


def kind_losses(heads: Heads, outs: Mapping, targets: Mapping, supervised: bool) -> torch.Tensor:
    """Weighted sum (:func:`loss_weights`) of the heads' losses of the supervised (Eq. 12) or
    unsupervised (Eq. 13) kinds."""
    weights = loss_weights(heads.config.lambdas, heads.kinds)
    total = torch.zeros(())
    for name, kind in heads.kinds.items():
        if kind.supervised == supervised:
            total = total + weights[name] * kind.loss(outs[name], targets[name])
    return total


def supervision_losses(
    heads: Heads,
    z_real: torch.Tensor,
    fake: torch.Tensor,
    targets: Mapping,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Losses of the supervision block's step: ``Di`` (Eq. 11: real vs generated), ``C`` (Eq. 12 on
    real latents, supervised kinds; with ``classifier_noise`` on noisy real latents) and ``De``
    (Eq. 13: code decoders on generated latents)."""
    _, d_real, h_real = heads.supervise(z_real, targets)
    sigma = heads.config.classifier_noise
    if sigma > 0:
        noise = torch.randn(z_real.shape, generator=generator).to(z_real)
        h_real = heads.supervise(z_real + sigma * noise, targets)[2]
    _, d_fake, h_fake = heads.supervise(fake, targets)
    l_di = F.binary_cross_entropy_with_logits(
        d_real, torch.ones_like(d_real)
    ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    return {
        "Di": l_di,
        "C": kind_losses(heads, h_real, targets, supervised=True),
        "De": kind_losses(heads, h_fake, targets, supervised=False),
    }


def encoder_losses(
    heads: Heads, z_real: torch.Tensor, fake: torch.Tensor, targets: Mapping
) -> dict[str, torch.Tensor]:
    """Losses of the encoder's step: ``E`` (Eq. 10, non-saturating ``-log D(E(c, eps))``), ``C``
    and ``De`` on generated latents (Eq. 12, 13), ``FM`` (Eq. 14): squared L2 between trunk
    features of each real latent and of the latent generated with the same conditions, and
    ``MM``: squared differences of the per-dimension means and standard deviations."""
    with torch.no_grad():
        f_real = heads.supervise(z_real, targets)[0]
    f_fake, d_fake, h_fake = heads.supervise(fake, targets)
    return {
        "E": F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake)),
        "C": kind_losses(heads, h_fake, targets, supervised=True),
        "De": kind_losses(heads, h_fake, targets, supervised=False),
        "FM": feature_matching(f_fake, f_real, heads.config.feature_matching),
        "MM": (fake.mean(0) - z_real.mean(0)).pow(2).mean() + (fake.std(0) - z_real.std(0)).pow(2).mean(),
    }


def noise_losses(
    heads: Heads,
    c: torch.Tensor,
    fake: torch.Tensor,
    noise: tuple[torch.Tensor, torch.Tensor],
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The encoder's losses that draw more noise for the same encoder input ``c`` (not in the
    paper), computed only when weighted above 0: ``MS`` (:func:`mode_seeking`, against ``fake``
    generated from ``noise``)."""
    lam, out = heads.config.lambdas, {}
    if lam.MS > 0:
        eps2, res2 = heads.noise(len(c), 1.0, generator)
        d = torch.cat([noise[0] - eps2, noise[1] - res2], dim=1).pow(2).mean(1).sqrt()
        out["MS"] = mode_seeking(fake, heads.generate_from_input(c, eps2, res2), d)
    return out


def mode_seeking(fake: torch.Tensor, fake2: torch.Tensor, noise_distance: torch.Tensor) -> torch.Tensor:
    """Mode seeking (Mao et al., 2019, not in the CAGlow paper): the mean ratio of the noises'
    distance to the distance of the latents they give with the same conditions (per dimension,
    so that it does not depend on the sizes). Small when different noise gives different latents:
    it counters an encoder that maps all noise to a few latents."""
    d_z = (fake - fake2).pow(2).mean(1).sqrt()
    return (noise_distance / (d_z + 1e-5)).mean()


def feature_matching(f_fake: torch.Tensor, f_real: torch.Tensor, mode: str) -> torch.Tensor:
    """Eq. 14: mean squared L2 between paired features (``pairwise``), or between their batch
    means (``mean``), per feature."""
    if mode == "mean":
        return (f_fake.mean(0) - f_real.mean(0)).pow(2).mean()
    return (f_fake - f_real).pow(2).sum(1).mean() / f_fake.shape[1]


def weighted_sum(losses: Mapping[str, torch.Tensor], lambdas: Lambdas) -> torch.Tensor:
    """Eq. 15: ``sum_k lambda_k L_k`` over the given losses, in their order."""
    return sum(getattr(lambdas, name) * loss for name, loss in losses.items())
