"""Tests of the parity plugin, written with the fixtures flowcond ships (flowcond.testing)."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch
from flowcond_parity import Parity

from flowcond.errors import ConfigError


def _installed() -> bool:
    return any(ep.name == "parity" for ep in importlib.metadata.entry_points(group="flowcond"))


def test_targets_prior_and_state_round_trip(tiny_dataset):
    kind = Parity.from_dataset({}, tiny_dataset)
    assert kind.state()["field"] == "digit"
    labels = {"digit": torch.tensor([0, 1, 2, 7])}
    assert kind.targets(labels).tolist() == [[0.0], [1.0], [0.0], [1.0]]
    saved = json.loads(json.dumps({"options": kind.options.model_dump(), "state": kind.state()}))
    rebuilt = Parity(saved["options"], saved["state"])
    assert rebuilt.state() == kind.state()
    prior = rebuilt.sample_prior(64, torch.Generator().manual_seed(0))
    assert prior.shape == (64, 1) and set(prior.unique().tolist()) <= {0.0, 1.0}


def test_parse_format_and_errors(tiny_dataset):
    kind = Parity.from_dataset(None, tiny_dataset)
    assert kind.parse("odd").tolist() == [1.0]
    assert kind.format(kind.parse("Even")) == "even"
    with pytest.raises(ConfigError, match=r"'parity'.*'seven'.*expected parity=even or parity=odd"):
        kind.parse("seven")
    with pytest.raises(ConfigError, match=r"'parity'.*field='attributes'.*digit"):
        Parity.from_dataset({"field": "attributes"}, tiny_dataset)
    with pytest.raises(ConfigError, match="invalid options"):
        Parity.from_dataset({"bogus": 1}, tiny_dataset)


def test_head_on_backbone_latents(tiny_backbone, tiny_dataset):
    kind = Parity.from_dataset({}, tiny_dataset)
    images, labels = tiny_dataset.images[:8], {"digit": tiny_dataset.labels["digit"][:8]}
    z = tiny_backbone.encode(images)
    head = torch.nn.Linear(z.shape[1], kind.head_dim)
    out = head(z)
    loss = kind.loss(out, kind.targets(labels))
    loss.backward()
    assert loss.ndim == 0 and head.weight.grad is not None
    assert set(kind.metrics(out, kind.targets(labels))) == {"accuracy"}
    assert kind.input_module()(kind.parse("odd").unsqueeze(0)).shape == (1, kind.input_dim)


def test_registered_for_one_test(flowcond_register, flowcond_plugins):
    class MyParity(Parity):
        """The kind under test: shadows the installed 'parity' (if any) for this test only."""

    flowcond_register(MyParity)
    assert flowcond_plugins.condition_kinds()["parity"].obj is MyParity


def test_the_kind_keeps_the_condition_contract(tiny_dataset):
    from flowcond.testing import check_condition_kind

    check_condition_kind(Parity, dataset=tiny_dataset)  # shapes, dtypes, round-trips, loss, ...


@pytest.mark.skipif(not _installed(), reason="flowcond-parity not installed (pip install -e .)")
def test_listed_by_flowcond_plugins(flowcond_cli):
    result = flowcond_cli("plugins")
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["parity"]["distribution"] == "flowcond-parity"
    assert listed["parity"]["conditions"] == ["parity"]


def test_importing_the_plugin_does_not_import_torch():
    """Every flowcond command imports every plugin: keep the module cheap (torch in methods)."""
    import subprocess
    import sys

    code = "import sys, flowcond_parity; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
