"""Coverage metrics with known answers, and the class-balanced random reference sets of
``flowcond evaluate`` (the old first-N selection took the first classes of a class-ordered split)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowcond.paper import metrics
from flowcond.paper.sampling import balanced_indices, requested


def test_identical_sets_have_full_precision_recall_and_coverage():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert metrics.precision_recall(x, x) == (1.0, 1.0)
    density, coverage = metrics.density_coverage(x, x)
    assert coverage == 1.0 and density >= 1.0  # every real ball holds its own centre


def test_disjoint_far_sets_have_none():
    x = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
    assert metrics.precision_recall(x, x + 100) == (0.0, 0.0)
    assert metrics.density_coverage(x, x + 100) == (0.0, 0.0)


def test_a_generator_repeating_one_real_sample_has_precision_but_no_recall():
    real = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    fake = real[:1].repeat(50, 1)  # one mode, copied
    precision, recall = metrics.precision_recall(real, fake)
    _, coverage = metrics.density_coverage(real, fake)
    assert precision == 1.0 and recall < 0.05 and coverage < 0.05
    assert metrics.mean_pairwise_distance(fake) == pytest.approx(0.0, abs=1e-5)


def test_half_the_real_modes_give_half_the_recall():
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0]])
    real = torch.cat([c + torch.randn(200, 2, generator=g) for c in centres])
    fake = centres[0] + torch.randn(200, 2, generator=g)
    precision, recall = metrics.precision_recall(real, fake)
    assert precision > 0.9 and recall == pytest.approx(0.5, abs=0.06)


def test_pairwise_and_nearest_distances():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0]])
    assert metrics.mean_pairwise_distance(x) == pytest.approx((5 + 8 + 5) / 3, abs=1e-5)
    near = metrics.nearest_distances(torch.tensor([[0.0, 1.0], [3.0, 4.0]]), x)
    assert near == pytest.approx([1.0, 0.0], abs=1e-3)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mean_pairwise_distance(x[:1])


def test_balanced_random_subsets_fix_the_class_ordered_split():
    classes = torch.arange(10).repeat_interleave(400)  # ordered by class, like mnist5k's train split
    old = classes[:1000]  # the old reference set: the first 1,000 images
    assert set(np.unique(old.numpy())) == {0, 1, 2}  # classes 0-2 only: the bug
    idx = balanced_indices(classes, 1000, seed=0)
    counts = torch.bincount(classes[idx], minlength=10)
    assert counts.tolist() == [100] * 10 and len(set(idx.tolist())) == 1000
    assert not torch.equal(idx, balanced_indices(classes, 1000, seed=1))  # random, seeded
    assert torch.equal(idx, balanced_indices(classes, 1000, seed=0))
    # 25 images of 10 classes: 3 from each of the first five, 2 from the others
    assert (
        torch.bincount(classes[balanced_indices(classes, 25, 0)], minlength=10).tolist() == [3] * 5 + [2] * 5
    )
    # a class with fewer images gives all it has
    small = torch.tensor([0, 0, 0, 1])
    assert torch.bincount(small[balanced_indices(small, 4, 0)]).tolist() == [2, 1]


def test_requested_attributes_come_from_the_class_by_default():
    classes = torch.arange(4).repeat(50)
    attrs = torch.stack([(classes == 1).float(), torch.zeros(200)], 1)
    joint = requested(4, 30, classes, attrs, seed=0)
    assert torch.equal(joint.attrs[:, 0], (joint.ids == 1).float())  # class 1 has it, the rest not
    ind = requested(4, 300, classes, attrs, seed=0, prior="independent")
    assert ind.attrs[ind.ids == 0, 0].mean() == pytest.approx(0.25, abs=0.08)  # overall frequency


def test_classes_with_one_test_image_are_left_out_of_the_diversity():
    """CelebA's test identities mostly have one image: no pairs, no crash, the row counts them."""
    from flowcond.paper.coverage import CoverageReference

    class Flat:  # features = the flattened pixels
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(len(x), -1)

    gen = torch.Generator().manual_seed(0)
    test_x = torch.rand(9, 1, 4, 4, generator=gen)
    test_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])  # class 2: a single image
    train_x = torch.rand(12, 1, 4, 4, generator=gen)
    train_ids = torch.arange(12) % 3
    ref = CoverageReference.build(Flat(), test_x, test_ids, train_x, train_x, train_ids, 3)
    assert ref.real_row["diversity_classes"] == 2
    assert ref.real_row["diversity_pixels"] > 0
