"""The contract checks (:mod:`flowcond.contract`) run once on a first batch, before training.

:func:`check_first_batch` runs every method a training step calls on a few real latents and
labels: ``targets`` (supervised kinds) and ``sample_prior``, each kind's input module and head,
and its ``loss`` on real and on generated latents. It draws its own random numbers (the global
torch generator is forked), so a run with the check trains exactly as one without.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from flowcond import contract
from flowcond.caglow.heads import Heads
from flowcond.caglow.metrics import plausible

#: rows of the first batch checked
CHECK_ROWS = 8
#: latents read for the check: the first plausible CHECK_ROWS among them are used
CHECK_HEAD = 64


def plausible_rows(z: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first ``n`` rows of ``z`` that are finite and not exploding
    (:func:`flowcond.caglow.metrics.plausible`): a check must not fail because the backbone
    explodes on one image."""
    return plausible(z).nonzero().flatten()[:n]


@torch.no_grad()
def check_first_batch(
    heads: Heads, z: torch.Tensor, labels: Mapping[str, torch.Tensor], rows: int = CHECK_ROWS
) -> None:
    """Run the contract checks on the first ``rows`` plausible latents and their labels; a
    one-line PluginError naming the plugin, the method and expected against returned shape."""
    idx = plausible_rows(z, rows)
    b = len(idx)
    if b == 0:
        return
    batch_labels = {k: v[idx] for k, v in labels.items()}
    with torch.random.fork_rng(devices=[]):
        g = torch.Generator().manual_seed(0)
        targets = {}
        for name, kind in heads.kinds.items():
            prior = contract.check_prior(kind, kind.sample_prior(b, g), b)
            if kind.supervised:
                targets[name] = contract.check_targets(kind, kind.targets(batch_labels), b)
            else:
                targets[name] = prior
            contract.check_input(kind, heads.inputs[name](targets[name]), b)
        _, _, h_real = heads.supervise(z[idx], targets)
        fake = heads.generate(targets, 1.0, g)
        _, _, h_fake = heads.supervise(fake, targets)
        for name, kind in heads.kinds.items():
            for head_out in (h_real[name], h_fake[name]):
                contract.check_head(kind, head_out, b)
                inputs_finite = bool(torch.isfinite(head_out).all()) and bool(
                    torch.isfinite(targets[name].float()).all()
                )  # a diverged encoder's NaN is the attach loop's to report, not the plugin's
                contract.check_loss(kind, kind.loss(head_out, targets[name]), finite=inputs_finite)
