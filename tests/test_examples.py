"""The README's main job (``examples/mnist_digits.py``) runs end to end, here on a tiny backbone."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

from flowcond import Backbone, BackboneConfig
from flowcond.caglow.heads import Heads
from flowcond.datasets import load_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist_digits.py"


def test_main_job_writes_figures_and_a_report(tmp_path, monkeypatch):
    bb = Backbone(BackboneConfig(channels=1, height=32, width=32, levels=2, steps=1, hidden=8))
    bb.initialize(load_dataset("mnist5k", "train").images[:128])
    bb.freeze().save(tmp_path / "bb.safetensors", dataset={"name": "mnist5k", "split": "train"})
    monkeypatch.setenv("FLOWCOND_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["mnist_digits.py", "--backbone", str(tmp_path / "bb.safetensors"), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv + ["--steps", "3", "--per-class", "4", "--image-check", "20"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")

    figures = ("samples.png", "interpolate_1_7.png", "edits_4.png", "explore_thick.png")
    for name in (*figures, "digits.heads.safetensors"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["temperature"] == 0.6 and report["mode_seeking"] == 1.5
    heads = Heads.load(out / "digits.heads.safetensors")
    assert list(heads.kinds) == ["ids", "attributes"]
    assert heads.config.dataset == "mnist5k-morpho" and heads.config.lambdas.MS == 1.5
    # the image check is in the heads file, and the report's samples were checked with it
    assert heads.image_check is not None and report["image_check"]["steps"] == 20
    checked = report["checked_sampling"]
    assert checked["checked"] == ["ids"] and checked["samples"] == 40
    assert 0.0 <= checked["agreeing_first"] <= 1.0
    assert len(report["evaluator_accuracy_per_class"]) == 10
    assert 0.0 <= report["evaluator_accuracy"] <= 1.0
    div = report["diversity"]
    assert div["real_mean_pairwise_l2"] > 0 and div["real_test_nearest_train_l2"] > 0
    assert div["generated_mean_pairwise_l2"] > 0 and div["generated_nearest_train_l2"] > 0
