"""Attach summary metrics survive an exploding latent; the latent cache key follows the dataset
plugin's version."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import torch

from flowcond import Backbone
from flowcond.caglow.attach import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.caglow.latents import LatentCache
from flowcond.caglow.metrics import EXPLODING_FACTOR, heads_metrics, plausible
from flowcond.datasets import load_dataset
from flowcond.registry import get_condition_kind
from flowcond.testing import make_distribution, tiny_image_dataset

SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "backbones" / "glow_mnist5k.safetensors"


def _heads(backbone):
    ds = tiny_image_dataset()
    kinds = {n: get_condition_kind(n).from_dataset({}, ds) for n in ("ids", "codes")}
    return Heads(backbone, kinds, AttachConfig(plugins=["ids", "codes"])).eval()


def test_plausible_leaves_out_non_finite_and_exploding_latents():
    z = torch.randn(100, 64)
    z[3] *= 1.15e8  # as the shipped backbone's test digit 934
    z[7, 0] = float("nan")
    z[9] *= EXPLODING_FACTOR * 1.5  # 15x the typical norm: exploding too
    z[11] *= 3  # an unusual but ordinary latent
    keep = plausible(z)
    assert (~keep).nonzero().flatten().tolist() == [3, 7, 9]


def test_a_planted_huge_latent_does_not_rule_the_summary(tiny_backbone):
    heads = _heads(tiny_backbone)
    ds = tiny_image_dataset(64, seed=1)
    z = tiny_backbone.encode(ds.images)
    labels = dict(ds.labels)
    clean = heads_metrics(heads, z[1:], {k: v[1:] for k, v in labels.items()})
    planted = z.clone()
    planted[0] = planted[0] / planted[0].norm() * 1.15e8
    robust = heads_metrics(heads, planted, labels)
    assert robust["real_latents"] == {
        "evaluated": 63,
        "left_out": 1,
        "left_out_rows": [0],
        "rule": "left out: non-finite latents and those with norm > 10 x the median norm",
    }
    for key in ("ids/real", "disc/real_median_prob", "disc/real_mean_prob"):
        assert robust[key] == clean[key], key
    assert clean["real_latents"]["left_out"] == 0


def test_the_shipped_backbone_summary_leaves_out_test_digit_934():
    test = load_dataset("mnist5k", "test")
    bb = Backbone.load(SHIPPED)
    z = bb.encode(test.images[930:940])  # digit 934 has latent norm ~1.15e8, the others ~15
    heads = Heads(
        bb, {"ids": get_condition_kind("ids").from_dataset({}, test)}, AttachConfig(plugins=["ids"])
    )
    out = heads_metrics(heads.eval(), z, {k: v[930:940] for k, v in test.labels.items()}, n_fake=16)
    assert out["real_latents"]["left_out_rows"] == [4] and out["real_latents"]["evaluated"] == 9


DATASET_PLUGIN = """
import flowcond
from flowcond.testing import tiny_image_dataset

def load(split, root=None, download=False):
    ds = tiny_image_dataset(24)
    ds.spec = {"name": "versioned", "split": split}
    return ds

@flowcond.hookimpl
def register_datasets(register):
    register("versioned", load)
"""


def test_a_new_dataset_plugin_version_re_encodes(
    flowcond_plugins, tiny_backbone, tmp_path, monkeypatch, capsys
):
    """Same spec, same labels, but a new release of the plugin that computes them: re-encoded."""
    folders = []
    for v in ("0.1.0", "0.2.0"):
        folder = tmp_path / v
        make_distribution(
            folder,
            "flowcond-versioned",
            {"versioned": f"versioned_{v.replace('.', '_')}"},
            {f"versioned_{v.replace('.', '_')}.py": textwrap.dedent(DATASET_PLUGIN)},
            v,
        )
        folders.append(folder)
    monkeypatch.syspath_prepend(str(folders[0]))
    flowcond_plugins.reload()
    first = load_dataset("versioned", "train")
    assert first.provider == {"plugin": "versioned", "distribution": "flowcond-versioned", "version": "0.1.0"}
    LatentCache.build(tiny_backbone, first, tmp_path / "cache", progress=False)
    LatentCache.build(tiny_backbone, load_dataset("versioned", "train"), tmp_path / "cache", progress=False)
    assert "rebuilding" not in capsys.readouterr().err  # same version: reused
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folders[0])])
    monkeypatch.syspath_prepend(str(folders[1]))
    flowcond_plugins.reload()
    LatentCache.build(tiny_backbone, load_dataset("versioned", "train"), tmp_path / "cache", progress=False)
    assert "made for other data (dataset_provider differ); rebuilding it" in capsys.readouterr().err
