"""The joint prior of un-given conditions: the heads file's training label table, sampling rows
that match the given conditions, the fallback for unseen combinations, and the independent prior
still selectable."""

from __future__ import annotations

import pytest
import torch

from flowcond import registry
from flowcond.caglow import generate
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.caglow.label_table import LabelTable
from flowcond.datasets import ImageDataset, LabelField
from flowcond.errors import ConfigError


def _dataset(n: int = 400) -> ImageDataset:
    """Classes 0..3; attribute 0 is on exactly for odd classes, attribute 1 for class 3 only
    (never together with class 0), attribute 2 at random (half the time)."""
    g = torch.Generator().manual_seed(0)
    digit = torch.arange(n) % 4
    attrs = torch.stack(
        [(digit % 2 == 1).float(), (digit == 3).float(), (torch.rand(n, generator=g) < 0.5).float()], 1
    )
    return ImageDataset(
        torch.rand(n, 1, 8, 8, generator=g),
        {"digit": digit, "attributes": attrs},
        [LabelField("digit", "categorical", 4), LabelField("attributes", "binary", 3, ["odd", "three", "r"])],
        {"name": "joint", "split": "train"},
    )


def _heads(tiny_backbone, plugins=("ids", "attributes", "codes")) -> Heads:
    ds = _dataset()
    kinds = {n: registry.get_condition_kind(n).from_dataset(None, ds) for n in plugins}
    heads = Heads(tiny_backbone, kinds, AttachConfig(plugins=list(plugins)))
    heads.label_table = LabelTable.from_labels(kinds, ds.labels)
    return heads.eval()


def test_the_requested_class_fixes_attribute_frequencies_to_the_within_class_ones(tiny_backbone):
    heads, ds = _heads(tiny_backbone), _dataset()
    g = torch.Generator().manual_seed(1)
    for k in range(4):
        t = heads.sample_targets(2000, {"ids": torch.tensor(k)}, g)
        freq = t["attributes"].mean(0)
        assert freq[0] == float(k % 2) and freq[1] == float(k == 3)  # exactly the class's
        within = ds.labels["attributes"][ds.labels["digit"] == k].mean(0)
        assert freq[2] == pytest.approx(float(within[2]), abs=0.04)
        assert (t["ids"] == k).all() and t["attributes"].dtype == torch.float32
        assert t["codes"].shape == (2000, heads.kinds["codes"].target_shape[0])  # codes: own prior
    # the independent prior ignores the class: attribute 0 at its overall frequency (1/2)
    ind = heads.sample_targets(2000, {"ids": torch.tensor(0)}, g, prior="independent")
    assert ind["attributes"][:, 0].mean() == pytest.approx(0.5, abs=0.05)
    # per-row given conditions (as evaluate asks): each row matches its own class
    ids = torch.arange(4).repeat_interleave(50)
    rows = heads.sample_targets(200, {"ids": ids}, g)
    assert torch.equal(rows["attributes"][:, 0], (ids % 2 == 1).float())


def test_given_attributes_draw_the_class_from_the_matching_rows(tiny_backbone):
    heads = _heads(tiny_backbone)
    t = heads.sample_targets(300, {"attributes": torch.tensor([1.0, 1.0, 0.0])}, torch.Generator())
    assert (t["ids"] == 3).all()  # only class 3 has "three"


def test_an_unseen_combination_falls_back_to_the_independent_prior_and_says_so(tiny_backbone, capsys):
    heads = _heads(tiny_backbone)
    given = {"ids": torch.tensor(0), "attributes": torch.tensor([0.0, 1.0, 0.0])}  # no class-0 "three"
    t = heads.sample_targets(10, given, torch.Generator().manual_seed(0))
    assert (t["ids"] == 0).all() and (t["attributes"][:, 1] == 1).all()  # the given ones, as given
    heads2 = _heads(tiny_backbone, ("ids", "attributes"))
    heads2.label_table = LabelTable(
        {"ids": torch.tensor([1, 1], dtype=torch.uint8), "attributes": torch.zeros(2, 3, dtype=torch.uint8)}
    )
    t = heads2.sample_targets(6, {"ids": torch.tensor(2)}, torch.Generator().manual_seed(0))
    assert (t["ids"] == 2).all() and t["attributes"].shape == (6, 3)
    assert "6 of 6 sample(s) ask for conditions no training image has" in capsys.readouterr().err


def test_the_label_table_is_saved_compactly_and_loaded_back(tiny_backbone, tmp_path):
    heads = _heads(tiny_backbone)
    path = tmp_path / "h.safetensors"
    heads.save(path)
    back = Heads.load(path, tiny_backbone)
    table = back.label_table
    assert set(table.targets) == {"ids", "attributes"} and table.rows == 400
    assert table.targets["attributes"].dtype == torch.uint8 and table.targets["ids"].dtype == torch.uint8
    assert torch.equal(table.targets["attributes"].float(), heads.label_table.targets["attributes"].float())
    # sampling after loading is the same as before
    a = heads.sample_targets(50, {"ids": torch.tensor(1)}, torch.Generator().manual_seed(3))
    b = back.sample_targets(50, {"ids": torch.tensor(1)}, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_heads_without_a_table_sample_independently_with_a_note(tiny_backbone, capsys):
    heads = _heads(tiny_backbone)
    heads.label_table = None
    t = heads.sample_targets(5, {"ids": torch.tensor(1)}, torch.Generator())
    assert t["attributes"].shape == (5, 3)
    assert "no training label table" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--prior both: choose one of joint, independent"):
        heads.sample_targets(5, None, None, prior="both")


def test_generators_take_the_prior(tiny_backbone):
    heads = _heads(tiny_backbone)
    _, targets, _ = generate.sample_rows(heads, {"ids": torch.tensor(3)}, 8, 4, 0.5, 0, "joint")
    assert (targets["attributes"][:, 1] == 1).all()
    _, targets, _ = generate.sample_rows(heads, {"ids": torch.tensor(0)}, 8, 4, 0.5, 0, "joint")
    assert (targets["attributes"][:, 0] == 0).all()


def test_a_label_table_naming_an_unknown_plugin_is_refused(tiny_backbone, tmp_path):
    from flowcond.errors import FileFormatError

    heads = _heads(tiny_backbone)
    for bad, message in (
        ({"nope": torch.zeros(400, dtype=torch.uint8)}, "column 'nope' is not a supervised attached plugin"),
        (
            {"attributes": torch.zeros(400, 2, dtype=torch.uint8)},
            r"has rows of shape \(2,\), expected \(3,\)",
        ),
    ):
        heads.label_table = LabelTable(bad)
        path = tmp_path / "bad.safetensors"
        heads.save(path)
        before = path.read_bytes()
        with pytest.raises(FileFormatError, match=message):
            Heads.load(path, tiny_backbone)
        assert path.read_bytes() == before


def test_sample_command_draws_attributes_from_the_requested_class(tiny_backbone, tmp_path, flowcond_cli):
    import numpy as np

    bb_path = tmp_path / "bb.safetensors"
    tiny_backbone.save(bb_path, dataset={"name": "joint", "split": "train"})
    heads = _heads(tiny_backbone)
    heads.save(tmp_path / "h.safetensors", backbone_path="bb.safetensors")
    out = tmp_path / "s.npz"
    args = ("sample", str(tmp_path / "h.safetensors"), "--condition", "ids=3", "--n", "40", "--out", str(out))
    r = flowcond_cli(*args)
    assert r.exit_code == 0, r.output
    assert (np.load(out)["attributes"][:, 1] == 1).all()  # every class-3 image has "three"
    r = flowcond_cli(*args, "--prior", "independent", "--force")
    assert r.exit_code == 0, r.output
    assert (np.load(out)["attributes"][:, 1] == 0).any()  # its frequency is 1/4 overall
