"""Tiny heads for the demo tests: a random 1x8x8 backbone with ``ids``, ``attributes`` and
``codes`` heads (random weights: no attach needed, different conditions give different images)."""

from __future__ import annotations

from pathlib import Path

import pytest


def make_tiny_heads(folder: Path) -> Path:
    """Write ``tiny.safetensors`` and ``tiny.heads.safetensors`` (which records it) to ``folder``."""
    import torch

    from flowcond import Backbone, BackboneConfig, registry
    from flowcond.caglow.attach import AttachConfig
    from flowcond.caglow.heads import Heads
    from flowcond.testing import tiny_image_dataset

    plugins = ["ids", "attributes", "codes"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8))
        bb.initialize(torch.rand(16, 1, 8, 8))
        bb.freeze().save(folder / "tiny.safetensors", dataset={"name": "tiny", "split": "train"})
        bb = Backbone.load(folder / "tiny.safetensors")
        ds = tiny_image_dataset()
        kinds = {n: registry.get_condition_kind(n).from_dataset(None, ds) for n in plugins}
        heads = Heads(bb, kinds, AttachConfig(plugins=plugins))
        with torch.no_grad():
            for p in heads.parameters():
                p.add_(0.3 * torch.randn_like(p))
    heads.save(folder / "tiny.heads.safetensors", backbone_path="tiny.safetensors")
    return folder / "tiny.heads.safetensors"


@pytest.fixture(scope="session")
def tiny_heads_file(tmp_path_factory) -> Path:
    return make_tiny_heads(tmp_path_factory.mktemp("demo"))
