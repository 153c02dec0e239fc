"""State shared by the stages of ``flowcond evaluate``: what was loaded (:class:`Context`), the
judges of generated images (:class:`Judges`, with the real-data references), stage logging and
timing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowcond.datasets import ImageDataset, LabelField
from flowcond.flow.backbone import Backbone
from flowcond.paper import metrics
from flowcond.paper.config import EvaluateConfig
from flowcond.paper.coverage import CoverageReference
from flowcond.paper.discovery import Roles
from flowcond.paper.evaluator import Evaluator
from flowcond.paper.sampling import balanced_indices
from flowcond.paper.tables import attribute_metrics


def stage(msg: str, progress: bool) -> None:
    """Announce a stage (``== msg``) when showing progress."""
    if progress:
        tqdm.write(f"== {msg}")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@dataclass
class Context:
    """One evaluation run: its options, backbone, class evaluator, dataset, fields and roles."""

    cfg: EvaluateConfig
    out: Path
    backbone: Backbone
    evaluator: Evaluator
    dataset: str
    train: ImageDataset
    test: ImageDataset
    cf: LabelField  #: the class field (categorical)
    af: LabelField  #: the attribute field (binary)
    roles: Roles
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def K(self) -> int:
        """Number of classes."""
        return self.cf.size

    @property
    def A(self) -> int:
        """Number of attributes."""
        return self.af.size

    @property
    def names(self) -> list[str]:
        """Attribute names (their indices when the dataset names none)."""
        return list(self.af.names) or [str(i) for i in range(self.af.size)]


@dataclass
class Judges:
    """The class and attribute evaluators, real test features for FID, the coverage reference and
    the real-data reference rows. Every real set is class-balanced and random (seeded)."""

    classes: Evaluator
    attributes: Evaluator
    attributes_path: str
    real_feats: torch.Tensor
    reference: dict[str, Any]
    coverage: CoverageReference

    @classmethod
    def build(cls, ctx: Context, attr_eval: Evaluator, attr_path: str) -> Judges:
        """Score real images: class accuracy and attribute metrics on the test set, FID of
        ``fid_real`` train images against as many test images (both class-balanced random
        subsets drawn with the run's seed), and the coverage reference rows."""
        ev, cf, af, seed = ctx.evaluator, ctx.cf.name, ctx.af.name, ctx.cfg.seed
        n = ctx.cfg.fid_real
        test_idx = balanced_indices(ctx.test.labels[cf], n, seed)
        train_idx = balanced_indices(ctx.train.labels[cf], n, seed + 1)
        real_feats = ev.features(ctx.test.images_at(test_idx).float())
        x_train = ctx.train.images_at(train_idx).float()
        x_test = ctx.test.all_images()
        labels = ctx.test.labels
        per_class = balanced_indices(ctx.train.labels[cf], ctx.K * ctx.cfg.samples_per_class, seed + 2)
        coverage = CoverageReference.build(
            ev,
            x_test,
            labels[cf],
            ctx.train.all_images(),
            ctx.train.images_at(per_class),
            ctx.train.labels[cf][per_class],
            ctx.K,
        )
        reference = {
            "class_accuracy_real_test": metrics.accuracy(ev.predict(x_test), labels[cf]),
            "fid_real_train_vs_test": metrics.frechet_distance(ev.features(x_train), real_feats),
            "coverage_real": coverage.real_row,
            **{
                f"{k}_real_test": v
                for k, v in attribute_metrics(
                    attr_eval.predict_proba(x_test), labels[cf], labels[af].float(), ctx.names
                ).items()
            },
        }
        return cls(ev, attr_eval, attr_path, real_feats, reference, coverage)
