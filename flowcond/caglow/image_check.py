"""The image check: a CNN that reads the supervised conditions back from generated images.

Not in the paper. The encoder learns from the latent classifier ``C`` of the supervision block,
which reads the flow's latents less reliably than a CNN reads the images (the shipped MNIST
backbone: 82 % of the real test latents against 98 % of the images), so some generated latents
satisfy ``C`` and decode to another class. ``attach --image-check STEPS`` trains this CNN (the
evaluator's kind of network, trained the same way) on the real training images, one head per
supervised kind with the kind's own width and loss; it is stored in the heads file. Checked sampling
(:func:`checked_images`) then redraws the noise of every sample whose image the check reads as
disagreeing with a given condition (:meth:`ConditionKind.agrees`), and the conditions that were
not given unless a row of samples shares them, at most ``rounds`` times, and says how many it
redrew: the samples come from the heads' own distribution restricted to images that show what
was asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from flowcond.augment import random_affine
from flowcond.caglow.label_table import note
from flowcond.conditions import ConditionKind
from flowcond.convnet import ConvFeatures
from flowcond.training import SkipBudget, optimizer_step, progress_bar, warmup_cosine

#: redraws of a sample's noise before checked sampling keeps its last draw (and says so)
ROUNDS = 10
#: channels of the check's conv blocks and width of its feature layer (those of the evaluator)
WIDTHS, FEATURES = (32, 64, 128), 128
#: the check's peak learning rate and weight decay (AdamW; those of the evaluator)
LR, WEIGHT_DECAY = 3e-3, 5e-4


class ImageCheck(ConvFeatures):
    """The evaluator's kind of network (:class:`~flowcond.convnet.ConvFeatures`, dropout) with one
    linear head per supervised kind."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        head_dims: Mapping[str, int],
        widths: Sequence[int] = WIDTHS,
        feature_dim: int = FEATURES,
    ) -> None:
        super().__init__(image_shape[0], min(image_shape[1:]), widths, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, d) for name, d in head_dims.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images ``(B, C, H, W)`` in ``[0, 1]`` -> ``{kind: head output}``."""
        f = self.dropout(self.features(x))
        return {name: head(f) for name, head in self.heads.items()}

    @torch.no_grad()
    def agreement(
        self,
        kinds: Mapping[str, ConditionKind],
        x: torch.Tensor,
        targets: Mapping[str, torch.Tensor],
        names: Sequence[str],
    ) -> torch.Tensor:
        """``(B,)`` bool: the images that agree with their targets for every kind in ``names``
        (kinds whose :meth:`~ConditionKind.agrees` says None, or that have no head, are not read).
        Reads in eval mode (batch norm's running statistics, no dropout)."""
        was_training = self.training
        self.eval()
        try:
            out = self(x)
        finally:
            self.train(was_training)
        ok = torch.ones(len(x), dtype=torch.bool)
        for name in names:
            if name not in out:
                continue
            agrees = kinds[name].agrees(out[name], targets[name])
            if agrees is not None:
                ok &= agrees.reshape(len(x)).bool()
        return ok


def checkable(heads: Any, names: Sequence[str]) -> list[str]:
    """Of ``names``, the kinds the heads' image check has a head for (supervised kinds)."""
    check = heads.image_check
    return [n for n in names if check is not None and n in check.heads]


def train_image_check(
    check: ImageCheck,
    kinds: Mapping[str, ConditionKind],
    dataset: Any,
    rows: torch.Tensor,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    progress: bool = True,
) -> None:
    """Train ``check`` on the images at ``rows`` of ``dataset`` with each supervised kind's loss
    (weighted by its ``loss_weight``) as the evaluator is trained: AdamW (learning rate
    :data:`LR`, linear warmup then cosine decay), random shifts up to 1/16 of the image side,
    rotations up to 10 degrees and zooms of up to 10 %; non-finite steps are skipped (more than a
    tenth of them: FlowcondError)."""
    shift = max(1, dataset.image_shape[-1] // 16)
    params = list(check.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    lr_factor = warmup_cosine(steps)
    budget = SkipBudget(
        max(10, steps // 10), lambda n: f"training the image check diverged: {n} non-finite steps"
    )
    check.train()
    bar = progress_bar(steps, "image check", progress)
    for step in range(steps):
        bar.update()
        for group in opt.param_groups:
            group["lr"] = LR * lr_factor(step)
        idx = rows[torch.randint(len(rows), (batch_size,), generator=generator)]
        x = random_affine(dataset.images_at(idx).float(), shift, 10.0, 0.1, generator)
        labels = {k: v[idx] for k, v in dataset.labels.items()}
        out = check(x)
        loss = sum(
            kinds[n].loss_weight * kinds[n].loss(out[n], kinds[n].targets(labels)) for n in check.heads
        )
        if not optimizer_step(loss, opt, params):
            budget.skip()
            continue
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    check.eval()


@torch.no_grad()
def check_metrics(
    check: ImageCheck,
    kinds: Mapping[str, ConditionKind],
    images: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
    batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Each kind's :meth:`~ConditionKind.metrics` of the check on real (test) images, and the
    fraction of them it reads as agreeing with their own labels."""
    check.eval()
    parts = [check(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    out = {name: torch.cat([p[name] for p in parts]) for name in check.heads}
    metrics = {}
    for name in check.heads:
        targets = kinds[name].targets(dict(labels))
        m = {k: round(float(v), 4) for k, v in kinds[name].metrics(out[name], targets).items()}
        agrees = kinds[name].agrees(out[name], targets)
        if agrees is not None:
            m["agrees"] = round(float(agrees.float().mean()), 4)
        metrics[name] = m
    return metrics


@torch.no_grad()
def checked_images(
    heads: Any,
    targets: Mapping[str, torch.Tensor],
    temperature: float,
    generator: torch.Generator | None,
    given: Sequence[str],
    prior: str | None = None,
    rounds: int = ROUNDS,
    batch_size: int = 256,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
    """Images ``F^-1(E(c, eps))`` for ``targets``; those the image check reads as disagreeing
    with a ``given`` kind are drawn again, at most ``rounds`` times: their noise, and with
    ``prior`` (``"joint"`` or ``"independent"``) their conditions not given too
    (:meth:`Heads.sample_targets`; None keeps them, e.g. when a row of samples shares them).

    Returns the images, the targets (with the redrawn conditions) and a report: the kinds
    checked, the samples, the fraction agreeing at the first draw, the redraws and the samples
    still disagreeing after the last round (kept as drawn, and said on stderr)."""
    names = checkable(heads, given)
    targets = {k: v.clone() for k, v in targets.items()}
    n = len(next(iter(targets.values())))
    c = heads.condition_input(targets)
    eps, eps_res = heads.noise(n, temperature, generator)
    images = heads.decode(heads.generate_from_input(c, eps, eps_res), batch_size)
    report: dict[str, Any] = {"checked": list(names), "samples": n, "redrawn": 0, "disagreeing": 0}
    if not names:
        return images, targets, report
    pending = torch.arange(n)
    for round_ in range(rounds + 1):
        ok = _agreeing(heads, images[pending], {k: v[pending] for k, v in targets.items()}, names, batch_size)
        pending = pending[~ok]
        if round_ == 0:
            report["agreeing_first"] = round(1 - len(pending) / n, 4)
        if not len(pending) or round_ == rounds:
            break
        if prior is not None:
            fixed = {k: targets[k][pending] for k in given}
            for k, v in heads.sample_targets(len(pending), fixed, generator, prior).items():
                targets[k][pending] = v
            c[pending] = heads.condition_input({k: v[pending] for k, v in targets.items()})
        e, r = heads.noise(len(pending), temperature, generator)
        images[pending] = heads.decode(heads.generate_from_input(c[pending], e, r), batch_size)
        report["redrawn"] += len(pending)
    report["disagreeing"] = len(pending)
    if len(pending):
        note(
            f"checked sampling: {len(pending)} of {n} images still disagree with "
            f"{', '.join(names)} after {rounds} redraws (kept)"
        )
    return images, targets, report


def _agreeing(
    heads: Any,
    images: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    names: Sequence[str],
    batch_size: int,
) -> torch.Tensor:
    """:meth:`ImageCheck.agreement` in batches of ``batch_size`` images."""
    parts = [
        heads.image_check.agreement(
            heads.kinds,
            images[i : i + batch_size],
            {k: v[i : i + batch_size] for k, v in targets.items()},
            names,
        )
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
