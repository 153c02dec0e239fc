"""`flowcond evaluate`: metrics on hand-made inputs, the three generators, verdicts, a tiny CLI run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flowcond import Backbone, BackboneConfig, hookimpl
from flowcond.caglow.attach import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.datasets import load_dataset
from flowcond.paper.baselines import CGlow, CGlowConfig, PreStored
from flowcond.paper.evaluate import (
    METHODS,
    CAGlowGenerator,
    CGlowGenerator,
    PreStoredGenerator,
    attribute_metrics,
    claims,
    edit_metrics,
    markdown,
)
from flowcond.testing import tiny_image_dataset

TINY = BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8)


def _backbone() -> Backbone:
    bb = Backbone(TINY)
    bb.initialize(load_dataset("digits", "train").images[:64])
    return bb.freeze()


# ------------------------------------------------------------------ metrics, hand-made
def test_attribute_metrics_use_only_images_requested_with_the_attribute():
    ids = torch.tensor([0, 0, 1, 1])
    attrs = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    probs = torch.tensor([[0.9, 0.2], [0.7, 0.6], [0.5, 0.1], [0.2, 0.8]])
    m = attribute_metrics(probs, ids, attrs, ["a", "b"])
    # accuracy per attribute: a: 1, 1, 1 (0.5 is not > 0.5: wrong), 1 -> 3/4 ; b: 1, 1, 1, 1
    assert m["attribute_accuracy_per"] == {"a": 0.75, "b": 1.0}
    assert m["attribute_accuracy"] == pytest.approx(0.875)
    # AMP of a over images with a on: id 0 -> (0.9 + 0.7) / 2 = 0.8, id 1 -> 0.5; variance 0.0225
    assert m["amp_variance_per"]["a"] == pytest.approx(0.0225)
    # b on: id 0 -> 0.6, id 1 -> 0.8; variance 0.01
    assert m["amp_variance_per"]["b"] == pytest.approx(0.01)
    assert m["amp_variance"] == pytest.approx((0.0225 + 0.01) / 2)


def test_edit_metrics_interference_and_effect():
    # 1 identity, 3 attributes; attribute t is turned on in state t + 1
    amps = [
        np.array([[0.1, 0.1, 0.1]]),
        np.array([[0.9, 0.2, 0.1]]),
        np.array([[0.8, 0.9, 0.4]]),
        np.array([[0.8, 0.9, 0.9]]),
    ]
    m = edit_metrics(amps)
    assert m["interference"][0] == pytest.approx((0.1 + 0.0) / 2)  # b, c vs start
    assert m["interference"][1] == pytest.approx(0.3)  # c vs start
    assert math.isnan(m["interference"][2])  # nothing left untouched
    assert m["interference_per_step"] == pytest.approx([0.05, (0.1 + 0.3) / 2, 0.0])
    assert m["edit_effect"] == pytest.approx([0.8, 0.7, 0.5])


def _results(ca_acc=0.9, cg_acc=0.8, ca_var=0.01, ca_int=(0.01, 0.02, None)):
    def r(acc, var, inter, fid=10.0):
        return {
            "accuracy": acc,
            "fid": fid,
            "attribute_accuracy": 0.8,
            "attribute_accuracy_per": {"a": 0.8},
            "amp_variance": var,
            "amp_variance_per": {"a": var},
            "interference": list(inter),
            "interference_per_step": list(inter),
            "edit_effect": [0.3, 0.3, 0.3],
        }

    return {
        "CAGlow": r(ca_acc, ca_var, ca_int),
        "CGlow": r(cg_acc, 0.02, (0.05, 0.05, None)),
        "Glow + pre-stored": r(0.5, 0.03, (0.1, 0.1, None)),
        "Glow (prior)": {"fid": 9.0},
    }


def test_claims_are_confirmed_or_refuted_from_the_numbers():
    ok = claims(_results())
    assert [c["confirmed"] for c in ok] == [True, True, True, True]
    bad = claims(_results(ca_acc=0.7, ca_var=0.05, ca_int=(0.01, 0.2, None)))
    assert [c["confirmed"] for c in bad] == [False, True, False, False]
    assert "CAGlow 0.700 vs CGlow 0.800" in bad[0]["evidence"]


def test_markdown_lays_out_the_three_tables():
    res = _results()
    ref = {
        "class_accuracy_real_test": 0.99,
        "fid_real_train_vs_test": 1.0,
        "attribute_accuracy_real_test": 0.9,
        "attribute_accuracy_per_real_test": {"a": 0.9},
        "amp_variance_real_test": 0.001,
        "amp_variance_per_real_test": {"a": 0.001},
    }
    report = {
        "dataset": "d",
        "backbone": {"path": "bb", "content_hash": "0" * 64, "config": TINY.model_dump()},
        "config": {"seed": 0, "temperature": 0.7, "samples_per_class": 4, "alpha": 1.0},
        "machine": {"torch_threads": 1, "cpus": 2},
        "wall_seconds": 3.0,
        "attributes": {"names": ["a"]},
        "cost": {"CGlow": {"trained": "all", "seconds": 2.0, "bits_per_dim": 3.0}},
        "results": res,
        "reference": ref,
        "claims": claims(res),
        "figures": ["fig3.png"],
    }
    md = markdown(report)
    for title in ("## Table 1", "## Table 2", "## Table 3", "## Cost", "**confirmed**"):
        assert title in md
    assert "| CAGlow | 0.900 | 10.00 |" in md
    assert "n/a" in md  # undefined interference step


# ------------------------------------------------------------------------ generators
def test_generators_apply_the_same_conditions_as_their_models():
    ds = tiny_image_dataset()
    bb = _backbone()
    w = torch.eye(10)[torch.tensor([1, 4])]
    v = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    # Glow + pre-stored: eps + class shift + alpha * (v - 1/2) @ deltas
    feats = PreStored.fit(torch.randn(32, 64), ds.labels["digit"], ds.labels["attributes"], n_classes=10)
    gen = PreStoredGenerator(bb, feats, 0.7, alpha=2.0)
    noise = gen.noise(2, g)
    assert torch.allclose(
        gen.latents(w, v, noise), feats.latents(noise[0], torch.tensor([1, 4]), v, alpha=2.0)
    )
    # CGlow: its prior at [one-hot, attributes]
    cg = CGlow(TINY, CGlowConfig.from_dataset(ds))
    cg.backbone.initialize(ds.images)
    torch.nn.init.normal_(cg.prior_loc.weight)
    cg.freeze()
    gen = CGlowGenerator(cg, 0.7)
    noise = gen.noise(2, g)
    expect = cg.latents(cg.condition(torch.tensor([1, 4]), v), noise[0])
    assert torch.allclose(gen.latents(w, v, noise), expect)
    assert gen.images(w, v, noise).shape == (2, 1, 8, 8)
    # CAGlow: the heads' encoder at the targets' condition input
    from flowcond import registry

    names = ["ids", "attributes", "codes"]
    kinds = {n: registry.get_condition_kind(n).from_dataset(None, ds) for n in names}
    heads = Heads(bb, kinds, AttachConfig(plugins=names)).eval()
    gen = CAGlowGenerator(heads, 0.7)
    noise = gen.noise(2, g)
    c = heads.condition_input({"ids": torch.tensor([1, 4]), "attributes": v, "codes": noise[2]})
    with torch.no_grad():
        expect = heads.generate_from_input(c, noise[0], noise[1])
    assert torch.allclose(gen.latents(w, v, noise), expect)


# ------------------------------------------------------------------------ CLI, tiny
class _TinyData:
    @hookimpl
    def register_datasets(self, register):
        def load(split, root=None, download=False):
            ds = tiny_image_dataset(n=40, seed=0 if split == "train" else 1)
            ds.spec = {"name": "tinyattr", "split": split}
            return ds

        register("tinyattr", load, "random 8x8 images with digit + attributes")


def test_cli_evaluate_writes_tables_and_figures(tmp_path, flowcond_plugins, flowcond_cli):
    from flowcond.paper.evaluator import train_evaluator

    flowcond_plugins.register(_TinyData(), "tinyattr")
    train, test = load_dataset("tinyattr", "train"), load_dataset("tinyattr", "test")
    bb = Backbone(TINY)
    bb.initialize(train.images)
    bb.freeze().save(
        tmp_path / "bb.safetensors", dataset={"name": "tinyattr", "split": "train"}, test_bits_per_dim=5.0
    )
    common = dict(epochs=1, widths=[4], feature_dim=8, progress=False)
    train_evaluator((train, test), out=tmp_path / "ev.safetensors", label="digit", **common)
    train_evaluator((train, test), out=tmp_path / "attr.safetensors", label="attributes", **common)
    out = tmp_path / "res"
    r = flowcond_cli(
        "evaluate",
        "--backbone",
        str(tmp_path / "bb.safetensors"),
        "--evaluator",
        str(tmp_path / "ev.safetensors"),
        "--attr-evaluator",
        str(tmp_path / "attr.safetensors"),
        "--out",
        str(out),
        "--cglow-epochs",
        "3",
        "--cglow-max-steps",
        "2",
        "--attach-steps",
        "3",
        "--samples-per-class",
        "3",
        "--threads",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    )
    assert r.exit_code == 0, r.output
    report = json.loads((out / "results.json").read_text())
    assert report["dataset"] == "tinyattr"
    assert set(METHODS) <= set(report["results"]) and "Glow (prior)" in report["results"]
    for m in METHODS:
        x = report["results"][m]
        assert 0 <= x["accuracy"] <= 1 and x["fid"] >= 0 and len(x["interference"]) == 3
    assert {"CAGlow", "CGlow", "Glow + pre-stored"} <= set(report["cost"])
    assert report["cost"]["CGlow"]["steps"] == 2 and report["cost"]["CAGlow"]["steps"] == 3
    assert len(report["claims"]) == 4
    md = (out / "results.md").read_text()
    assert "## Table 3" in md and "Glow + pre-stored" in md
    for f in report["figures"]:
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    assert any(f.startswith("fig4_") for f in report["figures"])
    assert CGlow.load(out / "cglow.safetensors").cglow.n_attributes == 3
    assert "confirmed" in r.output or "refuted" in r.output


def test_evaluate_needs_class_and_attribute_fields(tmp_path, flowcond_cli):
    bb = _backbone()
    bb.save(tmp_path / "bb.safetensors", dataset={"name": "digits", "split": "train"})
    r = flowcond_cli(
        "evaluate",
        "--backbone",
        str(tmp_path / "bb.safetensors"),
        "--evaluator",
        "examples/evaluators/mnist5k_evaluator.safetensors",
        "--out",
        str(tmp_path / "o"),
        "--quiet",
    )
    assert r.exit_code != 0 and "categorical (class) and a binary (attributes)" in r.output
