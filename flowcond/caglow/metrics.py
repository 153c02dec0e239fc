"""The summary metrics of attached heads, computed so that one exploding latent cannot rule them.

A flow's inverse can explode on an unseen image: the shipped MNIST-5k backbone encodes test digit
934 to a latent of norm 1.15e8, where the others have norms of about 15. One such latent turned a
regression head's test MSE from 0.12 into 1.2e10. So the metrics on real latents are computed on
the *plausible* ones only (:func:`plausible`): a latent is left out if it is non-finite or its
norm is more than :data:`EXPLODING_FACTOR` times the median norm of the latents evaluated (a
median, which the few exploding ones cannot move; a trained flow's latents of ordinary images
differ in norm by a factor of two or three, not ten). The summary says how many were left out, and
which (the first :data:`LISTED` row indices). The discriminator's probabilities are reported as
median and mean.
"""

from __future__ import annotations

from typing import Any

import torch

from flowcond.caglow.heads import Heads

#: a latent whose norm exceeds this many times the median norm is "exploding"
EXPLODING_FACTOR = 10.0
#: row indices of left-out latents listed in the summary
LISTED = 10
RULE = f"left out: non-finite latents and those with norm > {EXPLODING_FACTOR:g} x the median norm"


def plausible(z: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the rows of ``z`` (``(N, ...)``) that are finite and not exploding."""
    return plausible_norms(z.flatten(1).double().norm(dim=1))


def plausible_norms(norms: torch.Tensor) -> torch.Tensor:
    """:func:`plausible` from the rows' norms ``(N,)`` (for latents streamed from disk)."""
    finite = torch.isfinite(norms)
    if not finite.any():
        return finite
    limit = EXPLODING_FACTOR * norms[finite].median().clamp_min(1e-12)
    return finite & (norms <= limit)


def left_out_report(keep: torch.Tensor, kept_as: str) -> dict[str, Any]:
    """What a :func:`plausible` mask left out, for a summary: ``{kept_as: count, "left_out",
    "left_out_rows"`` (the first :data:`LISTED`), ``"rule"}``."""
    left_out = (~keep).nonzero().flatten()
    return {
        kept_as: int(keep.sum()),
        "left_out": len(left_out),
        "left_out_rows": left_out[:LISTED].tolist(),
        "rule": RULE,
    }


@torch.no_grad()
def heads_metrics(
    heads: Heads, z: torch.Tensor, labels: dict, n_fake: int = 1000, seed: int = 1
) -> dict[str, Any]:
    """Head metrics on real latents (supervised kinds; plausible latents only, see the module
    doc) and on generated latents (all kinds); ``real_latents`` says how many were left out."""
    was_training = heads.training
    heads.eval()
    g = torch.Generator().manual_seed(seed)
    keep = plausible(z)
    z, labels = z[keep], {k: v[keep] for k, v in labels.items()}
    out: dict[str, Any] = {"real_latents": left_out_report(keep, "evaluated")}
    d_real = torch.zeros(0, 1)
    if len(z):
        real_targets = {n: k.targets(labels) for n, k in heads.kinds.items() if k.supervised}
        _, d_real, h_real = heads.supervise(z, real_targets)
        for name, kind in heads.kinds.items():
            if kind.supervised:
                out[f"{name}/real"] = kind.metrics(h_real[name], real_targets[name])
    targets = heads.sample_targets(n_fake, None, g)
    fake = heads.generate(targets, 1.0, g)
    _, d_fake, h_fake = heads.supervise(fake, targets)
    for name, kind in heads.kinds.items():
        out[f"{name}/generated"] = kind.metrics(h_fake[name], targets[name])
    for which, logits in (("real", d_real), ("generated", d_fake)):
        if len(logits):
            prob = torch.sigmoid(logits.float())
            out[f"disc/{which}_median_prob"] = float(prob.median())
            out[f"disc/{which}_mean_prob"] = float(prob.mean())
    heads.train(was_training)
    return out
