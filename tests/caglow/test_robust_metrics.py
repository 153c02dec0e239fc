"""Attach (its training and its summary metrics) and the pre-stored baseline survive exploding
latents; the latent cache key follows the dataset plugin's version."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import torch

from flowcond import Backbone, BackboneConfig
from flowcond.caglow import attach as attach_module
from flowcond.caglow.attach import AttachConfig, attach
from flowcond.caglow.heads import Heads
from flowcond.caglow.latents import LatentCache
from flowcond.caglow.metrics import EXPLODING_FACTOR, heads_metrics, plausible
from flowcond.datasets import load_dataset
from flowcond.paper.baselines.prestored import PreStored
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


def _exploding_backbone(monkeypatch, images):
    """A tiny digits backbone that encodes each of ``images`` to a latent 1e9 times too long."""
    bb = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8))
    bb.initialize(load_dataset("digits", "train").images[:128])
    bb.freeze()
    encode, planted = bb.encode, images.flatten(1)

    def exploding(x, *args, **kwargs):
        z = encode(x, *args, **kwargs)
        hit = (x.flatten(1)[:, None, :] == planted[None].to(x)).all(2).any(1)
        return torch.where(hit[:, None], z * 1e9, z)

    monkeypatch.setattr(bb, "encode", exploding)
    return bb


def test_attach_trains_only_on_plausible_latents(monkeypatch, tmp_path, capsys):
    """One exploding training latent in a batch wrecks the heads (25 of 52,000 shifted MNIST
    digits took evaluator accuracy to 0.12): attach leaves them out, says so and records them."""
    train = load_dataset("digits", "train")
    bb = _exploding_backbone(monkeypatch, train.images[[5, 40]])
    same = [[torch.equal(train.images[i], train.images[j]) for j in (5, 40)] for i in range(len(train))]
    planted = [i for i, hits in enumerate(same) if any(hits)]
    drawn = []
    batch = attach_module._batch

    def spy(z_all, rows, *args):
        out = batch(z_all, rows, *args)
        drawn.append(out[0].norm(dim=1).max())
        return out

    monkeypatch.setattr(attach_module, "_batch", spy)
    config = AttachConfig(
        plugins=["ids"], dataset="digits", steps=30, batch_size=64, cache_dir=str(tmp_path / "cache")
    )
    _, summary = attach(bb, config, tmp_path / "h.safetensors", progress=False)
    assert summary["training_latents"] == {
        "used": len(train) - len(planted),
        "left_out": len(planted),
        "left_out_rows": planted,
        "rule": "left out: non-finite latents and those with norm > 10 x the median norm",
    }
    assert len(drawn) == 30 and max(drawn) < 1e3  # 30 batches of 64 from 1,000 rows: never one
    err = capsys.readouterr().err
    assert f"attach: left out {len(planted)} of {len(train)} training latents of dataset 'digits'" in err


def test_attach_draws_the_same_batches_when_nothing_is_left_out():
    """Rows 0..N-1: the draws of the generator are those of an attach without the rule."""
    z = torch.randn(50, 4)
    kinds = {"ids": get_condition_kind("ids").from_dataset({}, tiny_image_dataset(50))}
    labels = dict(tiny_image_dataset(50).labels)
    got, _ = attach_module._batch(z, torch.arange(50), labels, kinds, 16, torch.Generator().manual_seed(3))
    assert torch.equal(got, z[torch.randint(50, (16,), generator=torch.Generator().manual_seed(3))])


def test_prestored_features_leave_out_exploding_latents():
    g = torch.Generator().manual_seed(0)
    z, classes = torch.randn(200, 16, generator=g), torch.arange(200) % 4
    attributes = (torch.rand(200, 2, generator=g) < 0.5).float()
    clean = PreStored.fit(z[1:], classes[1:], attributes[1:], n_classes=4)
    planted = z.clone()
    planted[0] *= 1.15e8
    robust = PreStored.fit(planted, classes, attributes, n_classes=4)
    assert torch.allclose(robust.class_shifts, clean.class_shifts)
    assert torch.allclose(robust.deltas, clean.deltas)
    assert robust.info["left_out"] == 1 and clean.info["left_out"] == 0


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
