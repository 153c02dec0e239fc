"""The built-in ``continuous`` kind, ``field.column`` labels, per-kind loss weights, ``explore``
over any kind with a value range, and ``flowcond datasets`` — on the tiny dataset and backbone."""

from __future__ import annotations

import json

import pytest
import torch

from flowcond import hookimpl, registry
from flowcond.caglow.attach import AttachConfig
from flowcond.caglow.config import Lambdas
from flowcond.caglow.heads import Heads
from flowcond.caglow.losses import loss_weights
from flowcond.conditions import label_columns
from flowcond.errors import ConfigError
from flowcond.io.images import _wrap, grid_image
from flowcond.io.safefile import read_header
from flowcond.testing import tiny_image_dataset


def _kind(field: str | None = "measures", **options):
    return registry.get_condition_kind("continuous").from_dataset(
        {"field": field, **options}, tiny_image_dataset()
    )


# ------------------------------------------------------------- the kind alone
def test_field_column_selects_columns_by_name_or_index_and_keeps_the_order():
    ds = tiny_image_dataset()
    f, cols = label_columns("p", ds, "continuous", "measures.contrast,brightness")
    assert f.name == "measures" and cols == [1, 0]
    assert label_columns("p", ds, "continuous", "measures.1")[1] == [1]
    assert label_columns("p", ds, "continuous", "measures")[1] == [0, 1]
    assert label_columns("p", ds, "continuous", None)[1] == [0, 1]  # the first continuous field
    with pytest.raises(ConfigError, match="no column 'nope'; its columns: brightness, contrast"):
        label_columns("p", ds, "continuous", "measures.nope")
    with pytest.raises(ConfigError, match="names a column twice"):
        label_columns("p", ds, "continuous", "measures.contrast,1")
    with pytest.raises(ConfigError, match="not a continuous label field"):
        label_columns("p", ds, "continuous", "digit.x")


def test_ids_refuses_a_field_column_naming_it():
    with pytest.raises(ConfigError, match="whole field, not FIELD.COLUMN"):
        registry.get_condition_kind("ids").from_dataset({"field": "digit.0"}, tiny_image_dataset())


def test_state_holds_the_training_statistics_and_rebuilds_the_kind():
    ds = tiny_image_dataset()
    kind = _kind("measures.contrast")
    values = ds.labels["measures"][:, 1].double()
    state = kind.state()
    assert state["names"] == ["contrast"] and state["columns"] == [1]
    assert state["mean"][0] == pytest.approx(float(values.mean()))
    assert state["std"][0] == pytest.approx(float(values.std()))
    assert (state["low"][0], state["high"][0]) == pytest.approx((float(values.min()), float(values.max())))
    again = type(kind)(kind.options, json.loads(json.dumps(state)))
    assert torch.equal(again.parse("0.3"), kind.parse("0.3"))
    with pytest.raises(ConfigError, match="std must be > 0"):
        type(kind)(kind.options, {**state, "std": [0.0]})


def test_standardized_input_and_mse_head_on_standardized_targets():
    kind = _kind()
    targets = kind.targets(tiny_image_dataset().labels)
    assert targets.shape == (32, 2)
    x = kind.input_module()(targets)
    assert x.mean(0).abs().max() < 1e-5 and (x.std(0) - 1).abs().max() < 1e-4
    assert kind.loss(x, targets).item() == pytest.approx(0.0, abs=1e-10)
    assert kind.loss(torch.zeros_like(x), targets).item() == pytest.approx(float(x.pow(2).mean()))
    assert torch.allclose(kind.predict(x), targets, atol=1e-6)  # back to the field's units
    m = kind.metrics(x, targets)
    assert m["correlation/brightness"] == pytest.approx(1.0) and m["mae/contrast"] < 1e-6


def test_non_finite_labels_become_the_mean():
    kind = _kind()
    labels = {"measures": torch.tensor([[float("nan"), 0.3], [0.5, float("inf")]])}
    t = kind.targets(labels)
    assert torch.isfinite(t).all()
    assert t[0, 0].item() == pytest.approx(kind.state()["mean"][0])


def test_parse_range_checks_and_relative_edits():
    kind = _kind()
    lo, hi = kind.bounds(0)
    inside = (lo + hi) / 2
    t = kind.parse(f"brightness:{inside}")
    median = kind.state()["quantiles"][1][50]  # a column not named takes the training median
    assert t[0].item() == pytest.approx(inside) and t[1].item() == pytest.approx(median)
    assert kind.parse(f"{inside},{median}").tolist() == pytest.approx(t.tolist())
    assert torch.allclose(kind.parse(kind.format(t)), t, atol=1e-3)  # format reads back
    with pytest.raises(ConfigError, match=r"brightness 7 is outside .* plus margin 0.1\)"):
        kind.parse("brightness:7")
    for bad, why in [
        ("1", "1 number"),
        ("x:1", "unknown column 'x'"),
        ("a,b", "not a number"),
        ("", "empty"),
    ]:
        with pytest.raises(ConfigError, match=why) as e:
            kind.parse(bad)
        assert "\n" not in str(e.value) and "condition plugin 'continuous'" in str(e.value)
    edited = kind.edit(t, "brightness:+0.01")
    assert edited[0].item() == pytest.approx(inside + 0.01) and edited[1] == t[1]
    assert kind.edit(t, "brightness:-0.01")[0].item() == pytest.approx(inside - 0.01)
    assert kind.edit(t, f"brightness:={lo + 1e-3}")[0].item() == pytest.approx(lo + 1e-3)
    with pytest.raises(ConfigError, match="outside"):
        kind.edit(t, "brightness:+5")
    single = _kind("measures.brightness")
    assert single.edit(single.parse(f"{inside}"), "+0.01").item() == pytest.approx(inside + 0.01)


def test_the_prior_follows_the_empirical_quantiles():
    kind = _kind("measures.brightness", quantiles=11)
    draws = kind.sample_prior(20_000, torch.Generator().manual_seed(0))[:, 0]
    q = kind.state()["quantiles"][0]
    assert draws.min() >= q[0] - 1e-6 and draws.max() <= q[-1] + 1e-6
    assert draws.median().item() == pytest.approx(q[5], abs=0.02 * (q[-1] - q[0]))
    low, high = kind.value_range  # one column: one (low, high)
    assert q[0] <= low < high <= q[-1]
    assert isinstance(_kind().value_range, list) and _kind().component_names == ["brightness", "contrast"]


# --------------------------------------------------------------- loss weights
class _Heavy:
    """A kind that declares a default loss weight."""

    @hookimpl
    def register_conditions(self, register):
        from flowcond_plugins.continuous import Continuous

        class Heavy(Continuous):
            name = "heavy"
            loss_weight = 3.0

        register(Heavy)


def test_lambda_per_kind_overrides_the_plugin_default(flowcond_register):
    flowcond_register(_Heavy(), "heavy-test")
    ds = tiny_image_dataset()
    kinds = {n: registry.get_condition_kind(n).from_dataset(None, ds) for n in ("ids", "heavy", "codes")}
    assert loss_weights(Lambdas(), kinds) == {"ids": 1.0, "heavy": 3.0, "codes": 1.0}
    lam = Lambdas(**{"C.ids": 2.0, "De.codes": 0.5})
    assert loss_weights(lam, kinds) == {"ids": 2.0, "heavy": 3.0, "codes": 0.5}
    with pytest.raises(
        ConfigError, match="--lambda C.codes: the loss of 'codes' is part of De: use De.codes"
    ):
        loss_weights(Lambdas(**{"C.codes": 1.0}), kinds)
    with pytest.raises(ConfigError, match="--lambda C.nope: no condition 'nope' is attached"):
        loss_weights(Lambdas(**{"C.nope": 1.0}), kinds)
    with pytest.raises(ValueError, match="expected C.NAME or De.NAME"):
        Lambdas(**{"E.ids": 1.0})


def test_the_weight_scales_the_kind_loss_in_C(tiny_backbone):
    from flowcond.caglow.losses import kind_losses

    ds = tiny_image_dataset()
    kinds = {n: registry.get_condition_kind(n).from_dataset(None, ds) for n in ("ids", "continuous")}
    labels = {f: v[:8] for f, v in ds.labels.items()}
    targets = {n: k.targets(labels) for n, k in kinds.items()}
    outs = {"ids": torch.zeros(8, 10), "continuous": torch.zeros(8, 2)}
    ce = kinds["ids"].loss(outs["ids"], targets["ids"]).item()
    mse = kinds["continuous"].loss(outs["continuous"], targets["continuous"]).item()
    one = Heads(tiny_backbone, kinds, AttachConfig(plugins=list(kinds)))
    two = Heads(tiny_backbone, kinds, AttachConfig(plugins=list(kinds), lambdas={"C.continuous": 2.0}))
    assert kind_losses(one, outs, targets, True).item() == pytest.approx(ce + mse)
    assert kind_losses(two, outs, targets, True).item() == pytest.approx(ce + 2 * mse)


# ------------------------------------------------------- end to end, the CLI
class _TinyData:
    @hookimpl
    def register_datasets(self, register):
        def load(split: str, root: str | None = None, download: bool = False):
            return tiny_image_dataset(64, 0 if split == "train" else 1)

        register("tiny-measured", load, "tiny images with measures")


@pytest.fixture
def tiny_measured(flowcond_register, tiny_backbone, tmp_path):
    flowcond_register(_TinyData(), "tiny-measured-data")
    path = tmp_path / "bb.safetensors"
    tiny_backbone.save(path, dataset={"name": "tiny-measured", "split": "train"}, test_bits_per_dim=0.0)
    return path


def test_attach_sample_explore_manipulate_from_the_cli(tiny_measured, flowcond_cli, tmp_path):
    heads = tmp_path / "m.heads.safetensors"
    r = flowcond_cli(
        "attach",
        "--backbone",
        str(tiny_measured),
        "--plugin",
        "ids",
        "--plugin",
        "continuous",
        "--option",
        "continuous.field=measures.contrast,brightness",
        "--lambda",
        "C.continuous=2",
        "--steps",
        "8",
        "--batch-size",
        "16",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        "--out",
        str(heads),
    )
    assert r.exit_code == 0, r.output
    assert "continuous/real" in r.stdout and "correlation/contrast" in r.stdout
    header = read_header(heads)
    assert header["loss_weights"] == {"ids": 1.0, "continuous": 2.0}
    assert header["attach_config"]["lambdas"]["kinds"] == {"C.continuous": 2.0}
    kind = Heads.load(heads).kinds["continuous"]
    mid = sum(kind.value_range[0]) / 2

    r = flowcond_cli(
        "sample",
        str(heads),
        "--condition",
        f"continuous=contrast:{mid}",
        "--n",
        "4",
        "--out",
        str(tmp_path / "s.npz"),
    )
    assert r.exit_code == 0, r.output
    import numpy as np

    got = np.load(tmp_path / "s.npz")["continuous"]
    assert got.shape == (4, 2) and np.allclose(got[:, 0], mid)

    r = flowcond_cli(
        "explore",
        str(heads),
        "--condition",
        "continuous.brightness",
        "--condition",
        "ids=3",
        "--steps",
        "3",
        "--rows",
        "2",
        "--out",
        str(tmp_path / "e.png"),
    )
    assert r.exit_code == 0, r.output
    low, high = kind.value_range[1]
    assert f"continuous.brightness from {low:.4g} to {high:.4g}" in r.stdout
    r = flowcond_cli(
        "explore",
        str(heads),
        "--plugin",
        "continuous",
        "--code",
        "1",
        "--range",
        f"{low},9",
        "--out",
        str(tmp_path / "e2.png"),
    )
    assert r.exit_code == 1 and "explore continuous.brightness: the sweep end 9 is refused" in r.stderr
    assert "outside" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = flowcond_cli("explore", str(heads), "--condition", "ids", "--out", str(tmp_path / "e3.png"))
    assert r.exit_code == 1 and "--condition ids: condition plugin 'ids' has no value range" in r.stderr
    assert "plugins with one: continuous" in r.stderr

    r = flowcond_cli(
        "manipulate",
        str(heads),
        "--condition",
        "ids=1",
        "--add",
        "continuous=contrast:+0.01",
        "--add",
        "continuous=brightness:-0.01",
        "--rows",
        "2",
        "--out",
        str(tmp_path / "m.png"),
    )
    assert r.exit_code == 0, r.output
    assert "+continuous=contrast:+0.01 | +continuous=brightness:-0.01" in r.stdout

    r = flowcond_cli("sample", str(heads), "--condition", "continuous", "--out", str(tmp_path / "x.png"))
    assert r.exit_code == 1 and "condition plugin 'continuous' expects continuous=2.5" in r.stderr
    assert "ids=3" not in r.stderr  # the one kind at fault, not every kind's help


def test_datasets_command_lists_fields_columns_sizes_and_shape(tiny_measured, flowcond_cli):
    r = flowcond_cli("datasets", "tiny-measured", "--json")
    assert r.exit_code == 0, r.output
    (d,) = json.loads(r.stdout)
    assert d["sizes"] == {"train": 64, "test": 64} and d["image_shape"] == [1, 8, 8]
    fields = {f["name"]: f for f in d["fields"]}
    assert fields["measures"]["kind"] == "continuous"
    assert fields["measures"]["columns"] == ["brightness", "contrast"]
    assert "continuous" in fields["measures"]["conditions"] and "ids" in fields["digit"]["conditions"]
    r = flowcond_cli("datasets", "tiny-measured")
    assert r.exit_code == 0 and "measures" in r.stdout and "brightness, contrast" in r.stdout
    r = flowcond_cli("datasets", "nope")
    assert r.exit_code == 1 and "unknown dataset(s) nope" in r.stderr


def test_column_labels_wrap_instead_of_being_cut():
    assert "".join(_wrap("+thickness=+0.75", 5)) == "+thickness=+0.75"
    x = torch.rand(2, 1, 8, 8)
    short = grid_image(x, 2, col_labels=["a", "b"])
    long = grid_image(x, 2, col_labels=["+thickness=+0.75", "b"])
    assert long.height > short.height and long.width == short.width


@pytest.mark.parametrize("field", [None, "measures", "measures.contrast", "measures.contrast,brightness"])
def test_the_kind_passes_the_conformance_check(field):
    from flowcond.testing import check_condition_kind

    kind = check_condition_kind(registry.get_condition_kind("continuous"), {"field": field})
    assert kind.label_kind == "continuous"


def test_attributes_take_field_columns_too():
    ds = tiny_image_dataset()
    kind = registry.get_condition_kind("attributes").from_dataset({"field": "attributes.male,smiling"}, ds)
    assert kind.names == ["male", "smiling"] and kind.state()["columns"] == [2, 0]
    with pytest.raises(ConfigError, match="leave out names"):
        registry.get_condition_kind("attributes").from_dataset(
            {"field": "attributes.male", "names": "smiling"}, ds
        )


def test_datasets_command_says_why_a_dataset_was_not_loaded(flowcond_cli):
    r = flowcond_cli("datasets", "mnist")
    assert r.exit_code == 0 and "not loaded: dataset 'mnist' reads from disk: pass --root" in r.stdout


def test_datasets_command_lists_an_ambiguous_name_by_each_provider(flowcond_plugins, flowcond_cli):
    from flowcond.testing import tiny_image_dataset

    def loader(split, root=None, download=False, **options):
        return tiny_image_dataset(n=8)

    flowcond_plugins.register_dataset("twice", loader, shadow=False)
    flowcond_plugins.registry.register(_Twice(loader), "other-twice")
    r = flowcond_cli("datasets", "--json")
    assert r.exit_code == 0, r.output
    listed = {d["name"] for d in json.loads(r.stdout)}
    assert "twice" not in listed and {"test-dataset-twice:twice", "other-twice:twice"} <= listed
    r = flowcond_cli("datasets", "twice")
    assert r.exit_code == 1 and "dataset 'twice' is registered by" in r.stderr
    r = flowcond_cli("datasets", "other-twice:twice", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["sizes"] == {"train": 8, "test": 8}


class _Twice:
    """A second provider of the dataset name ``twice``."""

    def __init__(self, loader):
        self.loader = loader

    @hookimpl
    def register_datasets(self, register):
        register("twice", self.loader)
