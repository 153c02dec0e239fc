"""The coverage table of ``flowcond evaluate``: fidelity and coverage per class, diversity, copies.

For each class ``k``, the images generated for ``k`` are compared with the real test images of
``k`` in the class evaluator's features: improved precision / recall (Kynkäänniemi et al., 2019)
and density / coverage (Naeem et al., 2020) with ``K_NN`` nearest neighbours; within-class
diversity is the mean pairwise L2 distance in pixels and in features; the copy check is each
sample's L2 distance (pixels) to its nearest training image. Numbers are means over classes (the
per-class values are kept in results.json).

The real reference row: precision ... coverage of a class-balanced random set of *training*
images against the test images (the floor, like FID's), the diversity of the real *test* images,
and the test images' distances to their nearest training image (what "not a copy" looks like).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flowcond.paper import metrics
from flowcond.paper.evaluator import Evaluator

#: nearest neighbours of the k-NN manifolds (the papers' recommended small k)
K_NN = 3
#: a sample "looks copied" when it is closer to a training image than this quantile of the real
#: test images' nearest-training distances
COPY_QUANTILE = 0.05


@dataclass
class CoverageReference:
    """Real test features per class, the training pixels and the real test images' copy check."""

    test_feats: list[torch.Tensor]  #: per class, evaluator features of its test images
    train_pixels: torch.Tensor  #: (N, C*H*W) training images
    real_nn: np.ndarray  #: each test image's distance to its nearest training image
    real_row: dict[str, Any]  #: the real reference row of the table

    @classmethod
    def build(
        cls,
        evaluator: Evaluator,
        test_x: torch.Tensor,
        test_ids: torch.Tensor,
        train_x: torch.Tensor,
        train_sample_x: torch.Tensor,
        train_sample_ids: torch.Tensor,
        n_classes: int,
    ) -> CoverageReference:
        """From all test images (and their classes), all training images and a class-balanced
        random training sample (and its classes) for the real row."""
        test_f = evaluator.features(test_x.float())
        feats = [test_f[test_ids == k] for k in range(n_classes)]
        train_pixels = train_x.float().reshape(len(train_x), -1)
        real_nn = metrics.nearest_distances(test_x.float(), train_pixels)
        ref = cls(feats, train_pixels, real_nn, {})
        row = ref.per_class(evaluator.features(train_sample_x.float()), train_sample_ids, None)
        # a class with fewer than 2 test images has no pairs (CelebA: most identities of the test
        # split): it is left out of the diversity means, and the row says how many classes count
        counted = [k for k in range(n_classes) if int((test_ids == k).sum()) >= 2]
        test_div = [metrics.mean_pairwise_distance(test_x[test_ids == k].float()) for k in counted]
        feat_div = [metrics.mean_pairwise_distance(feats[k]) for k in counted]
        row.update(
            diversity_pixels=float(np.mean(test_div)) if counted else float("nan"),
            diversity_features=float(np.mean(feat_div)) if counted else float("nan"),
            diversity_classes=len(counted),
            diversity_pixels_per_class=test_div,
            nn_train_median=float(np.median(real_nn)),
            copy_fraction=float(np.mean(real_nn < np.quantile(real_nn, COPY_QUANTILE))),
        )
        ref.real_row = row
        return ref

    def per_class(
        self, feats: torch.Tensor, ids: torch.Tensor, images: torch.Tensor | None
    ) -> dict[str, Any]:
        """Precision, recall, density, coverage (means over classes and per class) of features
        ``feats`` with classes ``ids``; with ``images``, also their diversity."""
        per: dict[str, list[float]] = {
            k: [] for k in ("precision", "recall", "density", "coverage", "diversity_features")
        }
        pix: list[float] = []
        for k, real in enumerate(self.test_feats):
            fake = feats[ids == k]
            if len(fake) <= K_NN or len(real) <= K_NN:
                continue
            p, r = metrics.precision_recall(real, fake, K_NN)
            d, c = metrics.density_coverage(real, fake, K_NN)
            for name, v in zip(("precision", "recall", "density", "coverage"), (p, r, d, c), strict=True):
                per[name].append(v)
            per["diversity_features"].append(metrics.mean_pairwise_distance(fake))
            if images is not None:
                pix.append(metrics.mean_pairwise_distance(images[ids == k].float()))
        out: dict[str, Any] = {name: float(np.mean(v)) if v else float("nan") for name, v in per.items()}
        out["per_class"] = {name: v for name, v in per.items() if name != "diversity_features"}
        if images is not None:
            out["diversity_pixels"] = float(np.mean(pix)) if pix else float("nan")
            out["diversity_pixels_per_class"] = pix
        return out

    def judge(self, evaluator: Evaluator, images: torch.Tensor, ids: torch.Tensor) -> dict[str, Any]:
        """The coverage row of generated ``images`` requested with classes ``ids``."""
        out = self.per_class(evaluator.features(images.float()), ids, images)
        nn = metrics.nearest_distances(images.float(), self.train_pixels)
        out["nn_train_median"] = float(np.median(nn))
        out["copy_fraction"] = float(np.mean(nn < np.quantile(self.real_nn, COPY_QUANTILE)))
        return out
