"""One bits/dim: ``Backbone.bits_per_dim`` is the standard figure (uniform dequantization noise, the
variational bound, averaged over noise draws) everywhere; the bin midpoint reads lower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowcond.datasets import load_dataset
from flowcond.flow.backbone import Backbone
from flowcond.flow.train import bpd_per_image

SHIPPED = Path(__file__).parents[2] / "examples" / "backbones" / "glow_mnist5k.safetensors"


def test_bits_per_dim_is_uniform_dequantization_averaged_over_draws(tiny_backbone):
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    draws = [torch.rand(x.shape, generator=g) for _ in range(3)]
    by_hand = torch.stack([tiny_backbone.bits_per_dim_input(tiny_backbone.preprocess(x, u)) for u in draws])
    got = tiny_backbone.bits_per_dim(x, draws=3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(got, by_hand.mean(0), atol=1e-5)
    one = tiny_backbone.bits_per_dim(x, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(one, by_hand[0], atol=1e-5)
    assert torch.allclose(tiny_backbone.bits_per_dim(x, draws[0]), by_hand[0], atol=1e-5)  # a given draw
    midpoint = tiny_backbone.bits_per_dim_input(tiny_backbone.preprocess(x))
    assert not torch.allclose(one, midpoint)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the shipped backbone is not in this checkout")
def test_the_shipped_backbone_reads_1_35_with_uniform_noise_and_lower_at_the_midpoint():
    torch.set_num_threads(1)
    bb = Backbone.load(SHIPPED)
    test = load_dataset("mnist5k", "test")
    every_fifth = _Subset(test, torch.arange(0, len(test), 5))  # 200 images, every class
    x = every_fifth.images_at(slice(0, len(every_fifth))).float()
    uniform = bb.bits_per_dim(x, draws=2, generator=torch.Generator().manual_seed(0)).median()
    midpoint = bb.bits_per_dim_input(bb.preprocess(x)).median()
    assert 1.25 < float(uniform) < 1.45  # the figure train-backbone and the README report (1.354)
    assert float(midpoint) < float(uniform) - 0.3  # the midpoint is not a bound: it reads lower
    per_image = bpd_per_image(bb, every_fifth, draws=2)
    assert per_image.median() == pytest.approx(float(uniform), abs=0.02)


class _Subset:
    """The images of a dataset at ``index``, as ``bpd_per_image`` reads them."""

    def __init__(self, ds, index):
        self.ds, self.index = ds, index

    def __len__(self):
        return len(self.index)

    def images_at(self, part):
        return self.ds.images_at(self.index[part])
