"""The image check (``attach --image-check``) and checked sampling."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from flowcond import Backbone, BackboneConfig, registry
from flowcond.caglow.attach import AttachConfig, attach
from flowcond.caglow.conformance import check_condition_kind
from flowcond.caglow.heads import Heads
from flowcond.caglow.image_check import ROUNDS, ImageCheck, checked_images
from flowcond.cli import cli
from flowcond.datasets import load_dataset
from flowcond.errors import PluginError
from flowcond.testing import tiny_image_dataset


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    bb = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8, seed=0))
    bb.initialize(load_dataset("digits", "train").images[:128])
    path = tmp_path_factory.mktemp("bb") / "tiny.safetensors"
    bb.freeze().save(path, dataset={"name": "digits", "split": "train"}, test_bits_per_dim=0.0)
    return path


def _config(tmp_path, **kw) -> AttachConfig:
    base = dict(plugins=["ids", "codes"], steps=12, batch_size=32, cache_dir=str(tmp_path / "cache"))
    return AttachConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def checked_heads(backbone_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads")
    out = tmp / "digits.heads.safetensors"
    _, summary = attach(backbone_file, _config(tmp, image_check=300), out, progress=False)
    return out, summary


def test_attach_stores_a_trained_image_check_that_reads_the_test_images(checked_heads):
    path, summary = checked_heads
    heads = Heads.load(path)
    assert isinstance(heads.image_check, ImageCheck)
    assert list(heads.image_check.heads) == ["ids"]  # supervised kinds only
    report = summary["image_check"]
    assert report["steps"] == 300 and report["seconds"] > 0
    # 8x8 digits, 10 classes: far above chance (0.1) on the held-out test images
    assert report["test"]["ids"]["accuracy"] > 0.6
    # agreeing asks more than the most probable class: a probability of at least 0.8
    assert 0 < report["test"]["ids"]["agrees"] <= report["test"]["ids"]["accuracy"]
    assert heads.metadata["summary"]["image_check"] == report


def _brightness_rule(heads: Heads, threshold: float) -> None:
    """Make the heads' check accept exactly the images brighter than ``threshold``."""
    heads.image_check.agreement = lambda kinds, x, targets, names: x.mean(dim=(1, 2, 3)) > threshold


def _median_brightness(heads: Heads) -> float:
    images, _ = heads.sample(["ids=3"], n=64, temperature=0.8, seed=9, check=False)
    return float(images.mean(dim=(1, 2, 3)).median())


def test_checked_sampling_redraws_the_images_the_check_rejects(checked_heads):
    heads = Heads.load(checked_heads[0])
    threshold = _median_brightness(heads)
    _brightness_rule(heads, threshold)
    n = 40
    g = torch.Generator().manual_seed(0)
    targets = heads.sample_targets(n, {"ids": torch.tensor(3)}, g)
    state = g.get_state()
    plain = heads.decode(heads.generate(targets, 0.8, g))
    g.set_state(state)
    images, out_targets, report = checked_images(heads, targets, 0.8, g, ["ids"])
    bright = images.mean(dim=(1, 2, 3)) > threshold
    first = plain.mean(dim=(1, 2, 3)) > threshold
    assert not first.all()  # some of the plain draws are rejected ...
    assert bright.all() and report["disagreeing"] == 0  # ... and all were drawn again until accepted
    assert report["redrawn"] >= int((~first).sum())
    assert report["agreeing_first"] == pytest.approx(float(first.float().mean()))
    # the accepted first draws are kept as they were; the conditions stay (no prior given)
    assert torch.equal(images[first], plain[first])
    assert all(torch.equal(out_targets[k], targets[k]) for k in targets)
    assert report["checked"] == ["ids"] and report["samples"] == n


def test_checked_sampling_redraws_conditions_not_given_only_with_a_prior(checked_heads):
    heads = Heads.load(checked_heads[0])
    threshold = _median_brightness(heads)
    _brightness_rule(heads, threshold)
    g = torch.Generator().manual_seed(1)
    targets = heads.sample_targets(40, {"ids": torch.tensor(5)}, g)
    state = g.get_state()
    plain = heads.decode(heads.generate(targets, 0.8, g))
    g.set_state(state)
    _, out, _ = checked_images(heads, targets, 0.8, g, ["ids"], prior="joint")
    rejected = plain.mean(dim=(1, 2, 3)) <= threshold
    assert torch.equal(out["ids"], targets["ids"])  # the given condition never changes
    changed = (out["codes"] != targets["codes"]).any(dim=1)
    assert torch.equal(changed, rejected)  # codes drawn again for the rejected samples only


def test_samples_that_never_agree_are_kept_and_said(checked_heads, capsys):
    heads = Heads.load(checked_heads[0])
    heads.image_check.agreement = lambda kinds, x, targets, names: torch.zeros(len(x), dtype=torch.bool)
    images, targets = heads.sample(["ids=2"], n=6, temperature=0.8, seed=4)
    assert images.shape[0] == 6 and torch.isfinite(images).all()
    err = capsys.readouterr().err
    assert f"6 of 6 images still disagree with ids after {ROUNDS} redraws" in err


def test_without_a_check_sampling_is_unchanged(checked_heads, backbone_file, tmp_path):
    heads = Heads.load(checked_heads[0])
    heads.image_check = None
    a, _ = heads.sample(["ids=7"], n=8, temperature=0.8, seed=3)
    b, _ = heads.sample(["ids=7"], n=8, temperature=0.8, seed=3, check=False)
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = heads.generate(heads.sample_targets(8, {"ids": torch.tensor(7)}, g), 0.8, g)
    assert torch.equal(a, heads.decode(z))
    # heads attached without --image-check have none, and their file holds no check weights
    out = tmp_path / "plain.heads.safetensors"
    attach(backbone_file, _config(tmp_path), out, progress=False)
    plain = Heads.load(out)
    assert plain.image_check is None
    assert not any(k.startswith("image_check.") for k in plain.state_dict())


def test_kinds_say_whether_an_image_agrees():
    ds = tiny_image_dataset()
    ids = registry.get_condition_kind("ids").from_dataset(None, ds)
    logits = torch.zeros(3, ids.head_dim)
    logits[0, 0] = logits[1, 2] = 5.0  # read as 0 with p = 0.94, as 2
    logits[2, 4] = 2.0  # the most probable class is 4, but only with p = 0.45
    assert ids.agrees(logits, torch.tensor([0, 1, 4])).tolist() == [True, False, False]
    assert ids.agrees(logits, torch.tensor([0, 2, 3])).tolist() == [True, True, False]
    # float targets: the default cannot say (attributes thresholded from measures, codes)
    for name in ("attributes", "codes"):
        kind = registry.get_condition_kind(name).from_dataset(None, ds)
        assert kind.agrees(torch.zeros(2, kind.head_dim), torch.zeros(2, kind.head_dim)) is None


def test_conformance_refuses_an_agrees_of_the_wrong_shape():
    base = registry.get_condition_kind("ids")

    class BadAgrees(base):
        name = "bad_agrees"

        def agrees(self, head_out, targets):
            return torch.ones(len(targets), 2, dtype=torch.bool)

    with pytest.raises(PluginError, match=r"agrees\(\) must return None or a bool tensor of shape"):
        check_condition_kind(BadAgrees)


def test_cli_attach_with_image_check_and_sample_without(backbone_file, tmp_path):
    out = tmp_path / "cli.heads.safetensors"
    runner = CliRunner()
    args = ["attach", "--backbone", str(backbone_file), "--plugin", "ids", "--steps", "4"]
    args += ["--batch-size", "16", "--image-check", "5", "--quiet", "--out", str(out)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "image check (test images)" in r.output
    for flag in ("--check", "--no-check"):
        png = tmp_path / f"s{flag}.png"
        r = runner.invoke(
            cli, ["sample", str(out), "--condition", "ids=1", "--n", "4", flag, "--out", str(png)]
        )
        assert r.exit_code == 0, r.output
        assert png.is_file()


def test_non_finite_steps_of_the_image_check_are_skipped_then_refused(monkeypatch):
    from flowcond.caglow.image_check import train_image_check
    from flowcond.errors import FlowcondError

    ds = load_dataset("digits", "train")
    kind = registry.get_condition_kind("ids").from_dataset(None, ds)
    monkeypatch.setattr(type(kind), "loss", lambda self, out, targets: out.sum() * float("nan"))
    check = ImageCheck((1, 8, 8), {"ids": kind.head_dim})
    before = {k: v.clone() for k, v in check.named_parameters()}
    g = torch.Generator().manual_seed(0)
    with pytest.raises(FlowcondError, match="image check diverged: 11 non-finite steps"):
        train_image_check(check, {"ids": kind}, ds, torch.arange(len(ds)), 20, 8, g, progress=False)
    # no skipped step touched the weights (batch norm's running statistics did see the batches)
    assert all(torch.equal(v, dict(check.named_parameters())[k]) for k, v in before.items())
    assert all(torch.isfinite(b).all() for b in check.buffers())


def test_the_check_reads_in_eval_mode_and_keeps_the_callers_mode(checked_heads):
    heads = Heads.load(checked_heads[0])
    check = heads.image_check
    x = load_dataset("digits", "test").images[:64].float()
    targets = {"ids": load_dataset("digits", "test").labels["digit"][:64]}
    check.eval()
    expected = check.agreement(heads.kinds, x, targets, ["ids"])
    running = check.conv[1].running_mean.clone()
    check.train()  # e.g. heads sampled while still training: batch norm and dropout would change it
    for _ in range(3):
        assert torch.equal(check.agreement(heads.kinds, x, targets, ["ids"]), expected)
    assert check.training  # the caller's mode is given back
    assert torch.equal(check.conv[1].running_mean, running)  # reading does not update statistics
