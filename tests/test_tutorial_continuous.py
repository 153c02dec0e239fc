"""The second tutorial of docs/writing-plugins.md (a continuous condition with its own dataset
plugin, examples/plugins/flowcond-ink) runs as written: its files are the ones in the docs, and
its steps (datasets, attach, sample, explore, manipulate, measured control) run on a tiny
backbone."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from flowcond import Backbone, BackboneConfig, registry
from flowcond.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugins" / "flowcond-ink"
DOC = ROOT / "docs" / "writing-plugins.md"


def _doc_files() -> dict[str, str]:
    """Code blocks of the docs preceded by ``<!-- file: PATH -->``, by path."""
    pattern = re.compile(r"<!-- file: (\S+) -->\s*\n```\w*\n(.*?)```", re.S)
    return {path: text for path, text in pattern.findall(DOC.read_text())}


def test_the_tutorial_shows_the_example_files_as_they_are():
    files = _doc_files()
    assert {"flowcond_ink.py", "pyproject.toml", "check_control.py"} <= set(files)
    for name, text in files.items():
        assert (EXAMPLE / name).read_text() == text, f"docs/writing-plugins.md shows another {name}"


@pytest.fixture
def ink_plugin(flowcond_register, monkeypatch):
    """The example plugin, registered for the test as `pip install -e` would (unless it is)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    module = importlib.import_module("flowcond_ink")
    if "ink" not in registry.condition_kinds():
        flowcond_register(module, "ink")
    yield module
    sys.modules.pop("check_control", None)


def test_the_tutorial_steps_run(ink_plugin, flowcond_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCOND_CACHE", str(tmp_path / "cache"))
    bb = Backbone(BackboneConfig(channels=1, height=32, width=32, levels=2, steps=1, hidden=8))
    bb.initialize(load_dataset("mnist5k", "train").images[:128])
    backbone = tmp_path / "bb.safetensors"
    bb.freeze().save(backbone, dataset={"name": "mnist5k", "split": "train"}, test_bits_per_dim=0.0)

    r = flowcond_cli("datasets", "mnist5k-ink", "--json")
    assert r.exit_code == 0, r.output
    fields = {f["name"]: f for f in json.loads(r.stdout)[0]["fields"]}
    assert fields["ink"]["kind"] == "continuous" and "ink" in fields["ink"]["conditions"]

    heads = tmp_path / "ink.heads.safetensors"
    r = flowcond_cli(
        "attach", "--backbone", str(backbone), "--dataset", "mnist5k-ink", "--plugin", "ids",
        "--plugin", "ink", "--steps", "4", "--quiet", "--out", str(heads),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    for args in (
        ["sample", "--condition", "ids=3", "--condition", "ink=90", "--n", "4"],
        ["explore", "--condition", "ink", "--steps", "3", "--rows", "2"],
        ["manipulate", "--condition", "ink=60", "--add", "ink=+30", "--add", "ink=+30", "--rows", "2"],
    ):
        r = flowcond_cli(args[0], str(heads), *args[1:], "--out", str(tmp_path / f"{args[0]}.png"))
        assert r.exit_code == 0, r.output
    r = flowcond_cli("sample", str(heads), "--condition", "ink=9999", "--out", str(tmp_path / "x.png"))
    assert r.exit_code == 1 and "ink" in r.stderr and "outside the observed" in r.stderr

    check_control = importlib.import_module("check_control")
    from flowcond import Heads

    report = check_control.control(Heads.load(heads), values=3, n=20)
    assert len(report["measured_mean"]) == 3 and -1.0 <= report["correlation"] <= 1.0
    assert torch.isfinite(torch.tensor(report["slope"]))


def test_the_tutorial_test_snippet_passes(ink_plugin):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    (snippet,) = [b for b in blocks if "def test_ink_round_trips_and_refuses_out_of_range" in b]
    namespace: dict = {}
    exec(compile(snippet, "docs/writing-plugins.md", "exec"), namespace)
    from flowcond.testing import tiny_image_dataset

    namespace["test_ink_round_trips_and_refuses_out_of_range"](tiny_image_dataset())


def test_the_tutorial_kind_passes_the_conformance_check(ink_plugin):
    from flowcond.testing import check_condition_kind

    check_condition_kind(ink_plugin.Ink, {"field": "measures.brightness"})
