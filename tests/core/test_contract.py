"""Boundary checks on what condition kinds return (flowcond/contract.py) and the conformance check
``flowcond.testing.check_condition_kind``: one-line errors naming the plugin and the method."""

from __future__ import annotations

import pytest
import torch
from flowcond_plugins.codes import Codes

from flowcond import Backbone, BackboneConfig, contract, registry
from flowcond.caglow import boundary
from flowcond.caglow.attach import AttachConfig, attach
from flowcond.caglow.heads import Heads
from flowcond.conditions import ConditionKind, label_field
from flowcond.datasets import load_dataset
from flowcond.errors import ConfigError, PluginError
from flowcond.testing import check_condition_kind, tiny_image_dataset


class Digitness(ConditionKind):
    """A regression kind done right: the digit label as a number, target (1,), MSE head."""

    name = "digitness"
    value_help = "digitness=NUMBER"

    @classmethod
    def from_dataset(cls, options, dataset):
        return cls(options, {"field": label_field(cls.name, dataset, "categorical").name})

    @property
    def target_shape(self):
        return (1,)

    def targets(self, labels):
        return labels[self.state_dict_["field"]].float().reshape(-1, 1)

    def sample_prior(self, n, generator=None):
        return torch.rand(n, 1, generator=generator) * 9

    def parse(self, value):
        try:
            return torch.tensor([float(value)])
        except ValueError:
            raise self.parse_error(value, "not a number") from None

    @property
    def value_range(self):
        return (0.0, 9.0)

    @property
    def input_dim(self):
        return 1

    @property
    def head_dim(self):
        return 1

    def loss(self, head_out, targets):
        return torch.nn.functional.mse_loss(head_out, targets)

    def metrics(self, head_out, targets):
        return {"mse": float(((head_out - targets) ** 2).mean())}


class FlatTargets(Digitness):
    """targets() returns (B,) for target_shape (1,): MSE used to broadcast to (B, B) silently."""

    def targets(self, labels):
        return labels[self.state_dict_["field"]].float()


class ScalarParse(Digitness):
    """parse() returns a 0-d tensor for target_shape (1,)."""

    def parse(self, value):
        return torch.tensor(float(value))


class LongPrior(Digitness):
    def sample_prior(self, n, generator=None):
        return torch.randint(0, 9, (n, 1), generator=generator)


class PerSampleLoss(Digitness):
    def loss(self, head_out, targets):
        return (head_out - targets) ** 2


class NanLoss(Digitness):
    def loss(self, head_out, targets):
        return (head_out * float("nan")).mean()


class WideInput(Digitness):
    def input_module(self):
        return torch.nn.Linear(1, 3)


class BadRoundTrip(Digitness):
    def format(self, target):
        return f"{float(target[0]) + 1:g}"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (FlatTargets, "condition plugin 'digitness': targets() returned shape (8,), expected (8, 1) "),
        (ScalarParse, "condition plugin 'digitness': parse() returned shape (), expected (1,)"),
        (LongPrior, "condition plugin 'digitness': sample_prior(8) returned dtype int64, expected float32"),
        (PerSampleLoss, "condition plugin 'digitness': loss() returned shape (8, 1), expected a 0-d scalar"),
        (NanLoss, "condition plugin 'digitness': loss() returned nan, expected a finite number"),
        (WideInput, "condition plugin 'digitness': input_module() returned shape (8, 3), expected (8, 1)"),
        (BadRoundTrip, "condition plugin 'digitness': parse(format(t)) is not t"),
    ],
)
def test_check_condition_kind_names_the_plugin_and_the_method(kind, message):
    with pytest.raises(PluginError) as info:
        check_condition_kind(kind)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_a_correct_kind_passes_and_is_returned():
    kind = check_condition_kind(Digitness, dataset=tiny_image_dataset())
    assert isinstance(kind, Digitness) and kind.state() == {"field": "digit"}


@pytest.mark.parametrize("name", sorted(registry.condition_kinds()))
def test_every_installed_kind_passes_the_conformance_check(name):
    """Every kind that builds on the tiny dataset with its default options; one that needs data of
    its own (a field the tiny dataset lacks, as the tutorial's ``ink``) runs the check in its own
    tests, on its data, and is skipped here with its one-line reason."""
    cls = registry.get_condition_kind(name)
    dataset = tiny_image_dataset()
    try:
        cls.from_dataset(None, dataset)
    except ConfigError as e:
        pytest.skip(f"{name} does not build on the tiny dataset: {e}")
    check_condition_kind(cls, dataset=dataset)


def test_the_checks_cover_unsupervised_kinds_too():
    class BadCodes(Codes):
        def sample_prior(self, n, generator=None):
            return super().sample_prior(n, generator)[:, :1]

    with pytest.raises(
        PluginError, match=r"'codes': sample_prior\(8\) returned shape \(8, 1\), expected \(8, 2\)"
    ):
        check_condition_kind(BadCodes)


def _tiny_backbone_file(tmp_path):
    bb = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=1, hidden=8))
    bb.initialize(load_dataset("digits", "train").images[:64])
    path = tmp_path / "bb.safetensors"
    bb.freeze().save(path, dataset={"name": "digits", "split": "train"}, test_bits_per_dim=0.0)
    return path


def test_attach_refuses_flat_targets_before_training(flowcond_register, tmp_path):
    flowcond_register(FlatTargets)
    config = AttachConfig(plugins=["digitness"], steps=3, batch_size=8, cache_dir=str(tmp_path / "c"))
    with pytest.raises(PluginError, match=r"targets\(\) returned shape \(8,\), expected \(8, 1\)"):
        attach(_tiny_backbone_file(tmp_path), config, tmp_path / "h.safetensors", progress=False)
    assert not (tmp_path / "h.safetensors").exists()


def test_attach_checks_once_not_every_step(flowcond_register, tmp_path, monkeypatch):
    flowcond_register(Digitness)
    calls = []
    original = contract.check_targets

    def counting(kind, targets, batch, method="targets()"):
        calls.append(method)
        return original(kind, targets, batch, method)

    monkeypatch.setattr(contract, "check_targets", counting)
    config = AttachConfig(plugins=["digitness"], steps=5, batch_size=8, cache_dir=str(tmp_path / "c"))
    attach(_tiny_backbone_file(tmp_path), config, tmp_path / "h.safetensors", progress=False)
    assert calls.count("targets()") == 1  # the first batch only; five steps ran


def test_sample_with_a_0d_parse_is_one_line_not_an_index_error(flowcond_register, flowcond_cli, tmp_path):
    flowcond_register(ScalarParse)
    bb_path = _tiny_backbone_file(tmp_path)
    bb = Backbone.load(bb_path)
    kind = ScalarParse.from_dataset({}, load_dataset("digits", "train"))
    heads = Heads(bb, {"digitness": kind}, AttachConfig(plugins=["digitness"]))
    heads.save(tmp_path / "h.safetensors", backbone_path=str(bb_path))
    result = flowcond_cli(
        "sample",
        str(tmp_path / "h.safetensors"),
        "--condition",
        "digitness=3",
        "--out",
        str(tmp_path / "s.png"),
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Error")]
    assert (
        line
        == "Error: condition plugin 'digitness': parse() returned shape (), expected (1,) (its target_shape)"
    )
    with pytest.raises(PluginError, match=r"parse\(\) returned shape \(\)"):
        heads.sample(["digitness=3"], n=2)


def test_first_batch_check_skips_exploding_latents(tiny_backbone):
    kind = Digitness.from_dataset({}, tiny_image_dataset())
    heads = Heads(tiny_backbone, {"digitness": kind}, AttachConfig(plugins=["digitness"]))
    z = torch.randn(16, tiny_backbone.latent_dim)
    z[0] *= 1e30  # its head output would overflow the MSE
    labels = {"digit": torch.arange(16) % 10}
    assert 0 not in boundary.plausible_rows(z, 8).tolist()
    boundary.check_first_batch(heads, z, labels)  # passes


def test_value_range_is_checked():
    class Backwards(Digitness):
        @property
        def value_range(self):
            return (9.0, 0.0)

    with pytest.raises(PluginError, match=r"'digitness': value_range is \(9.0, 0.0\), expected None, finite"):
        check_condition_kind(Backwards)
