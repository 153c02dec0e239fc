"""The built-in condition kinds (ids, attributes, codes) and the ConditionKind interface."""

from __future__ import annotations

import json

import pytest
import torch
from flowcond_plugins.attributes import Attributes
from flowcond_plugins.codes import Codes
from flowcond_plugins.ids import Ids
from torch import nn

from flowcond.conditions import ConditionKind, label_field
from flowcond.datasets import ImageDataset, load_dataset
from flowcond.errors import ConfigError
from flowcond.registry import get_condition_kind

G = torch.Generator


@pytest.fixture(scope="module")
def mnist5k():
    return load_dataset("mnist5k", "test")


def round_trip(kind: ConditionKind) -> ConditionKind:
    """Rebuild a kind from its JSON-serialized options and state, as a heads file would."""
    data = json.loads(json.dumps({"options": kind.options.model_dump(), "state": kind.state()}))
    rebuilt = type(kind)(data["options"], data["state"])
    assert rebuilt.state() == kind.state() and rebuilt.options == kind.options
    return rebuilt


def check_interface(kind: ConditionKind, labels: dict[str, torch.Tensor] | None = None) -> None:
    """Prior -> encoder input -> head output -> loss/predict/metrics, shapes and dtypes."""
    t = kind.sample_prior(6, G().manual_seed(0))
    assert t.shape == (6, *kind.target_shape) and t.dtype == kind.target_dtype
    enc = kind.input_module()(t)
    assert enc.shape == (6, kind.input_dim) and enc.dtype == torch.float32
    out = torch.randn(6, kind.head_dim, requires_grad=True)
    loss = kind.loss(out, t)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and out.grad is not None
    pred = kind.predict(out.detach())
    assert pred.shape == t.shape
    assert all(isinstance(v, float) for v in kind.metrics(out.detach(), t).values())
    if labels is not None:
        assert kind.targets(labels).shape == (len(next(iter(labels.values()))), *kind.target_shape)


# ----------------------------------------------------------------------------- ids
def test_ids_on_mnist5k(mnist5k):
    kind = get_condition_kind("ids").from_dataset({}, mnist5k)
    assert kind.state() == {"field": "digit", "classes": 10, "names": [str(i) for i in range(10)]}
    assert kind.supervised and kind.target_shape == () and kind.target_dtype == torch.long
    assert kind.input_dim == 10 and kind.head_dim == 10
    batch = {"digit": mnist5k.labels["digit"][:5]}
    assert torch.equal(kind.targets(batch), batch["digit"])
    check_interface(round_trip(kind), batch)
    one_hot = kind.input_module()(torch.tensor([3]))
    assert one_hot.tolist() == [[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]]


def test_ids_parse_format_and_accuracy(tiny_dataset):
    kind = Ids.from_dataset(None, tiny_dataset)
    assert kind.parse("7") == torch.tensor(7) and kind.parse(" 7 ").dtype == torch.long
    assert kind.format(torch.tensor(4)) == "4"
    logits = torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 4]), 10).float()
    assert kind.metrics(logits, torch.tensor([1, 2, 0, 4])) == {"accuracy": 0.75}
    assert kind.loss(logits * 50, torch.tensor([1, 2, 3, 4])) < 1e-6


def test_ids_class_names_and_errors():
    from flowcond.datasets import ImageDataset, LabelField

    ds = ImageDataset(
        torch.rand(4, 1, 8, 8),
        {"animal": torch.tensor([0, 1, 2, 1])},
        [LabelField("animal", "categorical", 3, ["cat", "dog", "Bird"])],
        {"name": "zoo"},
    )
    kind = Ids.from_dataset({"field": "animal"}, ds)
    assert kind.parse("dog") == 1 and kind.parse("bird") == 2 and kind.format(torch.tensor(2)) == "Bird"
    with pytest.raises(ConfigError, match=r"condition plugin 'ids'.*'cow'.*known: cat, dog.*expected ids=3"):
        kind.parse("cow")
    with pytest.raises(ConfigError, match=r"'ids'.*'10'.*out of range 0..2"):
        kind.parse("10")
    with pytest.raises(ConfigError, match=r"'ids'.*empty"):
        kind.parse("")
    with pytest.raises(ValueError, match="outside 0..2"):
        kind.targets({"animal": torch.tensor([3])})


def test_ids_embedding_for_many_classes():
    kind = Ids({"embedding_threshold": 100, "embedding_dim": 16}, {"field": "identity", "classes": 10177})
    assert kind.embedded and kind.input_dim == 16 and kind.head_dim == 10177
    module = kind.input_module()
    assert isinstance(module, nn.Embedding)
    assert module(torch.tensor([0, 10176])).shape == (2, 16)
    assert sum(p.numel() for p in module.parameters()) == 10177 * 16
    check_interface(round_trip(kind))
    with pytest.raises(ConfigError, match="has no class names"):
        kind.parse("alice")


def test_ids_option_errors(tiny_dataset):
    with pytest.raises(ConfigError, match=r"'ids': field='attributes' is not a categorical.*digit"):
        Ids.from_dataset({"field": "attributes"}, tiny_dataset)
    with pytest.raises(
        ConfigError, match=r"'ids': invalid options: colour: Extra inputs.*its options: field"
    ):
        Ids.from_dataset({"colour": "red"}, tiny_dataset)
    with pytest.raises(ConfigError, match=r"'ids': invalid options: embedding_threshold"):
        Ids.from_dataset({"embedding_threshold": 0}, tiny_dataset)


# ----------------------------------------------------------------------------- attributes
def test_attributes_targets_prior_state(tiny_dataset):
    kind = Attributes.from_dataset({}, tiny_dataset)
    freq = tiny_dataset.labels["attributes"].mean(0)
    assert kind.names == ["smiling", "eyeglasses", "male"]
    assert torch.allclose(kind.frequencies, freq, atol=1e-5)
    assert kind.target_shape == (3,) and kind.supervised
    batch = {"attributes": tiny_dataset.labels["attributes"][:4]}
    assert torch.equal(kind.targets(batch), batch["attributes"])
    kind = round_trip(kind)
    check_interface(kind, batch)
    prior = kind.sample_prior(4000, G().manual_seed(1))
    assert torch.allclose(prior.mean(0), freq, atol=0.04)


def test_attributes_subset_parse_edit_format(tiny_dataset):
    kind = Attributes.from_dataset({"names": "Male,smiling"}, tiny_dataset)
    assert kind.names == ["male", "smiling"] and kind.state()["columns"] == [2, 0]
    assert kind.targets({"attributes": torch.tensor([[1.0, 0.0, 0.0]])}).tolist() == [[0.0, 1.0]]
    full = Attributes.from_dataset(None, tiny_dataset)
    t = full.parse("smiling,eyeglasses")
    assert t.tolist() == [1.0, 1.0, 0.0] and full.format(t) == "smiling,eyeglasses"
    assert full.parse("none").tolist() == [0.0, 0.0, 0.0] and full.format(torch.zeros(3)) == "none"
    t2 = full.edit(t, "-smiling")
    t3 = full.edit(t2, "MALE")
    assert t.tolist() == [1.0, 1.0, 0.0], "edit must not modify its input"
    assert t2.tolist() == [0.0, 1.0, 0.0] and t3.tolist() == [0.0, 1.0, 1.0]


def test_attributes_metrics_and_loss(tiny_dataset):
    kind = Attributes.from_dataset({}, tiny_dataset)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    logits = torch.tensor([[5.0, -5.0, 5.0], [5.0, -5.0, 5.0]])
    m = kind.metrics(logits, targets)
    assert m["accuracy/smiling"] == 0.5 and m["accuracy/eyeglasses"] == 1.0 and m["accuracy/male"] == 1.0
    assert m["accuracy"] == pytest.approx(2.5 / 3)
    assert kind.loss(logits * 10, (logits > 0).float()) < 1e-6


def test_attributes_errors(tiny_dataset, mnist5k):
    kind = Attributes.from_dataset({}, tiny_dataset)
    with pytest.raises(
        ConfigError,
        match=r"'attributes'.*unknown attribute 'beard'.*known: smiling.*expected attributes=",
    ):
        kind.parse("smiling,beard")
    with pytest.raises(ConfigError, match=r"'attributes'.*no attribute named"):
        kind.edit(torch.zeros(3), "")
    with pytest.raises(
        ConfigError, match=r"'attributes': invalid options: names: unknown attribute\(s\) beard"
    ):
        Attributes.from_dataset({"names": ["beard"]}, tiny_dataset)
    with pytest.raises(
        ConfigError,
        match=r"'attributes' needs a binary label field; dataset 'mnist5k' has: digit \(categ",
    ):
        Attributes.from_dataset({}, mnist5k)
    with pytest.raises(ConfigError, match="names must list at least one"):
        Attributes.from_dataset({"names": []}, tiny_dataset)


# ----------------------------------------------------------------------------- codes
@pytest.mark.parametrize("distribution", ["uniform", "binomial"])
def test_codes(distribution, mnist5k):
    kind = get_condition_kind("codes").from_dataset({"n": 3, "distribution": distribution}, mnist5k)
    assert not kind.supervised and kind.state() == {}
    assert kind.target_shape == (3,) and kind.input_dim == kind.head_dim == 3
    assert kind.value_range == ((-1.0, 1.0) if distribution == "uniform" else (0.0, 1.0))
    kind = round_trip(kind)
    check_interface(kind)
    prior = kind.sample_prior(2000, G().manual_seed(0))
    if distribution == "uniform":
        assert prior.min() >= -1 and prior.max() <= 1 and abs(prior.mean()) < 0.05
        assert kind.parse("0.5,-1,1").tolist() == [0.5, -1.0, 1.0]
        assert set(kind.metrics(torch.zeros(2, 3), torch.zeros(2, 3))) == {"mse"}
    else:
        assert set(prior.unique().tolist()) == {0.0, 1.0}
        assert kind.parse("1,0,1").tolist() == [1.0, 0.0, 1.0]
        assert set(kind.metrics(torch.zeros(2, 3), torch.zeros(2, 3))) == {"accuracy"}
    with pytest.raises(NotImplementedError, match="'codes' has no targets"):
        kind.targets({"digit": torch.tensor([1])})


def test_codes_default_parse_edit_and_errors():
    kind = Codes.from_dataset(None)
    assert kind.options.n == 2 and kind.options.distribution == "uniform"
    assert kind.parse("0.5,-1").tolist() == [0.5, -1.0]
    assert kind.edit(torch.tensor([0.5, -1.0]), "1:0.25").tolist() == [0.5, 0.25]
    assert kind.edit(torch.tensor([0.5, -1.0]), "0,0").tolist() == [0.0, 0.0]
    assert kind.format(torch.tensor([0.5, -1.0])) == "0.5,-1"
    with pytest.raises(
        ConfigError, match=r"'codes'.*'0.5'.*1 number\(s\) for 2 code\(s\).*expected codes=0.5,-1"
    ):
        kind.parse("0.5")
    with pytest.raises(ConfigError, match=r"'codes'.*2 is outside \[-1, 1\]"):
        kind.parse("2,0")
    with pytest.raises(ConfigError, match=r"'codes'.*'a' is not a number"):
        kind.parse("a,0")
    with pytest.raises(ConfigError, match=r"'codes'.*code index 5 outside 0..1"):
        kind.edit(torch.zeros(2), "5:0")
    with pytest.raises(ConfigError, match=r"'codes'.*0.5 is not 0 or 1"):
        Codes({"distribution": "binomial"}).parse("0.5,1")
    with pytest.raises(ConfigError, match=r"'codes': invalid options: distribution"):
        Codes({"distribution": "gaussian"})


# ----------------------------------------------------------------------------- interface
def test_label_field_helper(tiny_dataset):
    assert label_field("x", tiny_dataset, "categorical").name == "digit"
    assert label_field("x", tiny_dataset, "binary", "attributes").size == 3
    assert label_field("x", tiny_dataset, "continuous").name == "measures"
    digits_only = ImageDataset(
        tiny_dataset.images,
        {"digit": tiny_dataset.labels["digit"]},
        [tiny_dataset.schema["digit"]],
        {"name": "tiny"},
    )
    with pytest.raises(
        ConfigError, match=r"plugin 'x' needs a continuous label field; dataset 'tiny' has: digit"
    ):
        label_field("x", digits_only, "continuous")


def test_every_kind_usable_with_mnist5k_or_binary_dataset(mnist5k, tiny_dataset):
    """Each built-in kind through the registry, on the dataset it fits."""
    for name, ds in (
        ("ids", mnist5k),
        ("attributes", tiny_dataset),
        ("codes", mnist5k),
        ("continuous", tiny_dataset),
    ):
        kind = get_condition_kind(name).from_dataset({}, ds)
        _, labels = ds[0]
        batch = {k: v.unsqueeze(0) for k, v in labels.items()}
        check_interface(kind, batch if kind.supervised else None)
