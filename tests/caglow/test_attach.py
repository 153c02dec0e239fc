"""Attach (CAGlow stage 2): losses, heads files, parsing, sampling, resume, CLI — on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from flowcond import Backbone, BackboneConfig
from flowcond.caglow.attach import AttachConfig, attach, checkpoint_path
from flowcond.caglow.heads import Heads
from flowcond.caglow.losses import (
    encoder_losses,
    feature_matching,
    mode_seeking,
    supervision_losses,
)
from flowcond.cli import cli
from flowcond.datasets import load_dataset
from flowcond.errors import ConfigError, FileFormatError, FlowcondError, PluginError
from flowcond.io import safefile
from flowcond.testing import tiny_image_dataset


def _tiny_backbone(seed: int = 0) -> Backbone:
    bb = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8, seed=seed))
    bb.initialize(load_dataset("digits", "train").images[:128])
    return bb.freeze()


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bb") / "tiny.safetensors"
    _tiny_backbone().save(path, dataset={"name": "digits", "split": "train"}, test_bits_per_dim=0.0)
    return path


def _config(tmp_path, **kw) -> AttachConfig:
    base = dict(
        plugins=["ids", "codes"],
        steps=12,
        batch_size=16,
        checkpoint_every=6,
        cache_dir=str(tmp_path / "cache"),
    )
    return AttachConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def heads_file(backbone_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heads")
    out = tmp / "digits.heads.safetensors"
    attach(backbone_file, _config(tmp), out, progress=False)
    return out


def _zero_heads() -> tuple[Heads, dict]:
    """Heads on a tiny dataset whose supervision block outputs exactly zero."""
    from flowcond import registry

    bb = _tiny_backbone()
    ds = tiny_image_dataset()
    kinds = {n: registry.get_condition_kind(n).from_dataset(None, ds) for n in ("ids", "codes")}
    heads = Heads(bb, kinds, AttachConfig(plugins=["ids", "codes"]))
    for p in heads.supervision.parameters():
        torch.nn.init.zeros_(p)
    targets = {"ids": torch.tensor([1, 2, 3, 4]), "codes": torch.tensor([[0.5, -1.0]] * 4)}
    return heads, targets


def test_losses_have_their_closed_form_on_a_zero_supervision_block():
    heads, targets = _zero_heads()
    z = torch.randn(4, 64)
    ld = supervision_losses(heads, z, z + 1, targets)
    # logits 0 everywhere: BCE = ln 2 for real and for fake, CE over 10 classes = ln 10
    assert ld["Di"].item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert ld["C"].item() == pytest.approx(math.log(10), rel=1e-6)
    assert ld["De"].item() == pytest.approx((0.25 + 1.0) / 2, rel=1e-6)  # MSE of a zero decoder
    le = encoder_losses(heads, z, z + 1, targets)
    assert le["E"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert le["FM"].item() == 0.0  # zero trunk: identical features


def test_feature_matching_is_zero_for_identical_latents_and_positive_otherwise():
    from flowcond import registry

    bb = _tiny_backbone()
    ds = tiny_image_dataset()
    kinds = {"ids": registry.get_condition_kind("ids").from_dataset(None, ds)}
    heads = Heads(bb, kinds, AttachConfig(plugins=["ids"]))
    z = torch.randn(8, 64)
    t = {"ids": torch.arange(8)}
    assert encoder_losses(heads, z, z.clone(), t)["FM"].item() == 0.0
    assert encoder_losses(heads, z, z + 0.5, t)["FM"].item() > 0.0


def test_attach_writes_a_small_heads_file_that_samples(heads_file, backbone_file):
    heads = Heads.load(heads_file)  # finds the backbone through the recorded relative path
    assert heads.metadata["backbone"]["content_hash"] == Backbone.load(backbone_file).content_hash
    assert [p["name"] for p in heads.metadata["plugins"]] == ["ids", "codes"]
    assert heads.metadata["summary"]["steps"] == 12
    images, targets = heads.sample(["ids=7"], n=5, temperature=0.8, seed=3)
    assert images.shape == (5, 1, 8, 8)
    assert targets["ids"].tolist() == [7] * 5 and targets["codes"].shape == (5, 2)
    # the images are the backbone's decode of E(c, eps) for the same draws
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = heads.generate(heads.sample_targets(5, {"ids": torch.tensor(7)}, g), 0.8, g)
        assert torch.isfinite(z).all()
        assert torch.equal(images, heads.backbone.decode(z))
    # and they depend on the condition
    assert not torch.equal(images, heads.sample(["ids=1"], n=5, temperature=0.8, seed=3)[0])


def test_sampling_is_deterministic_with_a_seed(heads_file):
    heads = Heads.load(heads_file)
    a, _ = heads.sample(["ids=3"], n=4, seed=1)
    b, _ = heads.sample(["ids=3"], n=4, seed=1)
    c, _ = heads.sample(["ids=3"], n=4, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_heads_refuse_another_backbone(heads_file, tmp_path):
    other = tmp_path / "other.safetensors"
    _tiny_backbone(seed=1).save(other, dataset={"name": "digits", "split": "train"})
    with pytest.raises(FileFormatError, match="attached to backbone"):
        Heads.load(heads_file, other)


def test_heads_refuse_a_missing_plugin(heads_file, flowcond_plugins):
    flowcond_plugins.unregister("codes")
    with pytest.raises(PluginError, match="needs condition plugin 'codes'"):
        Heads.load(heads_file)


def test_heads_refuse_a_truncated_file(heads_file, tmp_path):
    bad = tmp_path / "cut.heads.safetensors"
    data = heads_file.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        Heads.load(bad)


def test_parse_conditions_errors_name_the_plugin_and_form(heads_file):
    heads = Heads.load(heads_file)
    with pytest.raises(ConfigError, match=r"'ids'.*expected ids=3"):
        heads.parse_conditions(["ids=12"])
    with pytest.raises(ConfigError, match="not attached"):
        heads.parse_conditions(["attributes=smiling"])
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        heads.parse_conditions(["ids"])
    assert heads.parse_conditions(["ids=4", "codes=0.5,-1"])["codes"].tolist() == [0.5, -1.0]


def test_resume_continues_exactly(backbone_file, tmp_path):
    whole = tmp_path / "whole.heads.safetensors"
    attach(backbone_file, _config(tmp_path), whole, progress=False)
    part = tmp_path / "part.heads.safetensors"
    attach(backbone_file, _config(tmp_path, steps=6), part, progress=False)
    assert checkpoint_path(part).exists()
    heads, summary = attach(backbone_file, _config(tmp_path), part, resume=True, progress=False)
    assert summary["steps"] == 12
    a = Heads.load(whole).state_dict()
    b = Heads.load(part).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_another_backbone_or_options(backbone_file, tmp_path):
    out = tmp_path / "r.heads.safetensors"
    attach(backbone_file, _config(tmp_path, steps=6), out, progress=False)
    with pytest.raises(
        ConfigError,
        match=r"attach options plugins=\['ids', 'codes'\], lr=0\.0002 \(now plugins=\['ids'\], lr=0\.001\)",
    ) as e:
        attach(backbone_file, _config(tmp_path, lr=1e-3, plugins=["ids"]), out, resume=True, progress=False)
    assert "\n" not in str(e.value) and str(checkpoint_path(out)) in str(e.value)
    other = tmp_path / "other.safetensors"
    _tiny_backbone(seed=1).save(other, dataset={"name": "digits", "split": "train"})
    with pytest.raises(ConfigError, match="written for backbone hash="):
        attach(other, _config(tmp_path), out, resume=True, progress=False)


def test_nan_during_attach_is_a_clear_error(backbone_file, tmp_path, monkeypatch):
    from flowcond.caglow import encoder

    monkeypatch.setattr(
        encoder.Encoder,
        "forward",
        lambda self, c, eps, eps_res=None: torch.full((c.shape[0], 64), float("nan")),
    )
    with pytest.raises(FlowcondError, match="diverged"):
        attach(
            backbone_file,
            _config(tmp_path, steps=30),
            tmp_path / "nan.heads.safetensors",
            progress=False,
        )


def test_unknown_plugin_and_bad_options_are_named(backbone_file, tmp_path):
    with pytest.raises(PluginError, match="unknown condition plugin 'nope'"):
        attach(
            backbone_file,
            _config(tmp_path, plugins=["nope"]),
            tmp_path / "x.safetensors",
            progress=False,
        )
    with pytest.raises(ConfigError, match="'codes'"):
        attach(
            backbone_file,
            _config(tmp_path, plugin_options={"codes": {"bogus": 1}}),
            tmp_path / "x.safetensors",
            progress=False,
        )


def test_cli_sample_png_and_npz(heads_file, tmp_path):
    runner = CliRunner()
    png = tmp_path / "sevens.png"
    r = runner.invoke(cli, ["sample", str(heads_file), "--condition", "ids=7", "--n", "9", "--out", str(png)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npz = tmp_path / "threes.npz"
    r = runner.invoke(
        cli, ["sample", str(heads_file), "--condition", "ids=3", "--n", "10", "--out", str(npz)]
    )
    assert r.exit_code == 0, r.output
    with np.load(npz) as d:
        assert d["images"].shape == (10, 1, 8, 8) and d["images"].dtype == np.float32
        assert d["ids"].tolist() == [3] * 10
        assert d["codes"].shape == (10, 2)
        images, codes = torch.from_numpy(d["images"]), torch.from_numpy(d["codes"])
    # what the library samples for --seed 0 (the default), rows of 3 sharing their codes
    from flowcond.caglow.generate import sample_rows

    want, targets, _ = sample_rows(Heads.load(heads_file), {"ids": torch.tensor(3)}, 10, 3, 0.8, 0)
    assert torch.equal(images, want.float()) and torch.equal(codes, targets["codes"])
    assert not torch.equal(images[0], images[1])  # one eps per image


def test_cli_bad_condition_is_one_line(heads_file, tmp_path):
    r = CliRunner().invoke(
        cli,
        ["sample", str(heads_file), "--condition", "ids=twelve", "--out", str(tmp_path / "x.png")],
    )
    assert r.exit_code != 0
    assert "Error: condition plugin 'ids'" in r.output and "Traceback" not in r.output


def test_cli_interpolate_explore_manipulate(heads_file, tmp_path):
    runner = CliRunner()
    for args in (
        ["interpolate", "--from", "ids=1", "--to", "ids=7", "--steps", "5"],
        ["explore", "--code", "1", "--steps", "5"],
        ["manipulate", "--condition", "ids=1", "--add", "ids=2", "--add", "codes=1,1"],
    ):
        out = tmp_path / f"{args[0]}.png"
        r = runner.invoke(cli, [args[0], str(heads_file), *args[1:], "--rows", "2", "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert out.stat().st_size > 0


def test_interpolation_endpoints_match_the_conditions(heads_file):
    from flowcond.caglow.generate import interpolate

    heads = Heads.load(heads_file)
    a = {"ids": torch.tensor(1)}
    b = {"ids": torch.tensor(7)}
    imgs = interpolate(heads, a, b, steps=4, rows=2, seed=0).view(2, 4, 1, 8, 8)
    same = interpolate(heads, a, a, steps=4, rows=2, seed=0).view(2, 4, 1, 8, 8)
    assert torch.allclose(imgs[:, 0], same[:, 0])  # column 0 is the start condition
    assert torch.allclose(same[:, 0], same[:, -1])  # no change when start == end
    assert not torch.allclose(imgs[:, 0], imgs[:, -1])


def test_mean_feature_matching_ignores_pairing_but_pairwise_does_not():
    f = torch.randn(16, 8)
    shuffled = f[torch.randperm(16)]
    assert feature_matching(shuffled, f, "mean").item() == pytest.approx(0.0, abs=1e-12)
    assert feature_matching(shuffled, f, "pairwise").item() > 0.0


def test_conditional_discriminator_sees_the_conditions(backbone_file, tmp_path):
    heads, _ = attach(
        backbone_file,
        _config(tmp_path, conditional_discriminator=True, lambdas={"MM": 1.0}),
        tmp_path / "cond.heads.safetensors",
        progress=False,
    )
    z = torch.randn(4, 64)
    codes = torch.zeros(4, 2)
    _, d1, _ = heads.supervise(z, {"ids": torch.tensor([1, 1, 1, 1]), "codes": codes})
    _, d2, _ = heads.supervise(z, {"ids": torch.tensor([2, 2, 2, 2]), "codes": codes})
    assert not torch.allclose(d1, d2)
    loaded = Heads.load(tmp_path / "cond.heads.safetensors")
    assert loaded.config.conditional_discriminator and loaded.supervision.projection is not None


def test_mode_seeking_is_larger_when_other_noise_gives_closer_latents():
    z = torch.randn(8, 64)
    noise_distance = torch.full((8,), 2.0)
    collapsed = mode_seeking(z, z + 0.01 * torch.randn(8, 64), noise_distance)
    spread = mode_seeking(z, z + torch.randn(8, 64), noise_distance)
    assert collapsed.item() > 50 * spread.item()
    # the ratio of the distances: twice the noise distance, twice the loss
    assert mode_seeking(z, z + 1, 2 * noise_distance).item() == pytest.approx(
        2 * mode_seeking(z, z + 1, noise_distance).item(), rel=1e-5
    )


def test_classifier_noise_changes_only_the_classification_loss():
    heads, targets = _zero_heads()
    for p in heads.supervision.parameters():  # a block that is not constant
        torch.nn.init.normal_(p, std=0.5)
    z, fake = torch.randn(4, 64), torch.randn(4, 64)
    clean = supervision_losses(heads, z, fake, targets)
    heads.config = heads.config.model_copy(update={"classifier_noise": 1.0})
    noisy = supervision_losses(heads, z, fake, targets, torch.Generator().manual_seed(0))
    again = supervision_losses(heads, z, fake, targets, torch.Generator().manual_seed(0))
    assert noisy["Di"].item() == clean["Di"].item() and noisy["De"].item() == clean["De"].item()
    assert noisy["C"].item() != clean["C"].item()
    assert noisy["C"].item() == again["C"].item()  # the noise comes from the given generator


def test_attach_with_the_noise_losses_and_classifier_noise_records_them(backbone_file, tmp_path):
    out = tmp_path / "ms.heads.safetensors"
    config = _config(tmp_path, classifier_noise=0.5, lambdas={"MS": 1.0})
    heads, summary = attach(backbone_file, config, out, progress=False)
    assert summary["steps"] == 12 and summary["skipped_steps"] == 0
    loaded = Heads.load(out)
    assert loaded.config.classifier_noise == 0.5 and loaded.config.lambdas.MS == 1.0
    plain, _ = attach(backbone_file, _config(tmp_path), tmp_path / "plain.heads.safetensors", progress=False)
    assert not torch.equal(heads.encoder.net[0].weight, plain.encoder.net[0].weight)


def test_attach_restores_torch_threads(backbone_file, tmp_path):
    before = torch.get_num_threads()
    attach(
        backbone_file, _config(tmp_path, steps=2, threads=1), tmp_path / "t.heads.safetensors", progress=False
    )
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------ resume binds what it resumes
def _checkpointed(backbone_file, tmp_path, steps: int = 6):
    out = tmp_path / "b.heads.safetensors"
    attach(backbone_file, _config(tmp_path, steps=steps), out, progress=False)
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lr": 0.01}, r"attach options lr=0\.0002 \(now lr=0\.01\)"),
        ({"seed": 3}, r"attach options seed=0 \(now seed=3\)"),
        ({"batch_size": 8}, r"attach options batch_size=16 \(now batch_size=8\)"),
        ({"lambdas": {"FM": 2.0}}, r"attach options lambdas=\{.*'FM': 1\.0.*\} \(now lambdas=\{.*'FM': 2\.0"),
        (
            {"plugin_options": {"codes": {"n": 3}}},
            r"attach options plugin_options=\{\} \(now plugin_options=",
        ),
        ({"steps": 4}, r"has already run 6 steps, more than --steps 4; resume with --steps 6 or more"),
    ],
)
def test_resume_refuses_changed_options_naming_them(backbone_file, tmp_path, change, message):
    out = _checkpointed(backbone_file, tmp_path)
    before = checkpoint_path(out).read_bytes()
    with pytest.raises(ConfigError, match=message) as e:
        attach(backbone_file, _config(tmp_path, **change), out, resume=True, progress=False)
    assert "\n" not in str(e.value) and str(checkpoint_path(out)) in str(e.value)
    assert checkpoint_path(out).read_bytes() == before


def test_resume_refuses_another_plugin_version_or_dataset(backbone_file, tmp_path, monkeypatch):
    from flowcond import registry
    from flowcond.caglow import attach as attach_module

    out = _checkpointed(backbone_file, tmp_path)
    with monkeypatch.context() as m:
        m.setattr(registry.default, "plugin_version", lambda mod: "9.9.9")
        with pytest.raises(
            ConfigError, match=r"written for plugins ids\.version=.* \(now ids\.version='9\.9\.9'"
        ):
            attach(backbone_file, _config(tmp_path), out, resume=True, progress=False)
    real = attach_module.load_dataset

    def shuffled_labels(name, split, **kw):
        ds = real(name, split, **kw)
        ds.labels["digit"] = ds.labels["digit"].roll(1)  # same classes, other images
        return ds

    monkeypatch.setattr(attach_module, "load_dataset", shuffled_labels)
    with pytest.raises(ConfigError, match=r"written for dataset labels='[0-9a-f]{16}' \(now labels='") as e:
        attach(backbone_file, _config(tmp_path), out, resume=True, progress=False)
    assert "\n" not in str(e.value)


def test_resume_of_a_checkpoint_that_records_nothing_is_refused(backbone_file, tmp_path):
    out = _checkpointed(backbone_file, tmp_path)
    ckpt = checkpoint_path(out)
    tensors, header = safefile.read(ckpt)
    for key in ("backbone_hash", "plugins", "data"):
        header.pop(key)
    safefile.write(ckpt, tensors, header)
    with pytest.raises(ConfigError, match="does not record its backbone_hash, plugins, data") as e:
        attach(backbone_file, _config(tmp_path), out, resume=True, progress=False)
    assert "\n" not in str(e.value)


def test_a_different_plugin_set_is_a_one_line_error_not_a_load_state_dict_traceback(backbone_file, tmp_path):
    out = _checkpointed(backbone_file, tmp_path)
    for plugins in (["ids"], ["codes", "ids"], ["ids", "codes", "attributes"]):
        with pytest.raises((ConfigError, PluginError)) as e:
            attach(backbone_file, _config(tmp_path, plugins=plugins), out, resume=True, progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"plugins=\['ids', 'codes'\] \(now plugins=\['codes', 'ids'\]\)"):
        attach(backbone_file, _config(tmp_path, plugins=["codes", "ids"]), out, resume=True, progress=False)


def test_raised_steps_continue_and_the_header_records_what_ran(backbone_file, tmp_path):
    out = _checkpointed(backbone_file, tmp_path, steps=6)
    _, summary = attach(backbone_file, _config(tmp_path, steps=12), out, resume=True, progress=False)
    assert summary["steps"] == 12
    assert summary["segments"] == [{"from": 0, "to": 6}, {"from": 6, "to": 12}]
    meta = Heads.load(out).metadata
    assert meta["attach_config"]["steps"] == 12 and meta["summary"]["steps"] == 12
    assert meta["summary"]["segments"] == summary["segments"]
    # resuming a finished run trains nothing more and says so
    _, again = attach(backbone_file, _config(tmp_path, steps=12), out, resume=True, progress=False)
    assert again["steps"] == 12 and again["segments"] == summary["segments"]


def test_attach_on_a_cache_with_huge_latents_rebuilds_it_instead_of_diverging(
    backbone_file, tmp_path, capsys
):
    import json

    from safetensors.torch import load_file, save_file

    first, _ = attach(
        backbone_file, _config(tmp_path, steps=4), tmp_path / "a.heads.safetensors", progress=False
    )
    manifest_path = next((tmp_path / "cache").rglob("digits-train/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    shard = manifest_path.parent / manifest["shards"][0]["file"]
    tensors = load_file(str(shard))
    tensors["z"][:] = 1e30
    header = safefile.read_header(shard)
    header["content_hash"] = manifest["shards"][0]["content_hash"] = safefile.content_hash(tensors)
    save_file(tensors, str(shard), metadata={"flowcond": json.dumps(header)})
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    second, _ = attach(
        backbone_file, _config(tmp_path, steps=4), tmp_path / "b.heads.safetensors", progress=False
    )
    err = capsys.readouterr().err
    assert f"{shard}: latents are non-finite or implausibly large" in err and "re-encoding" in err
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # trained on the same, correct data


def test_dataset_labels_out_of_range_are_a_one_line_error(backbone_file, tmp_path, flowcond_register):
    from flowcond import hookimpl

    class BadLabels:
        @hookimpl
        def register_datasets(self, register):
            def load(split, root=None, download=False):
                ds = load_dataset("digits", split)
                ds.labels["digit"][5] = 12
                ds.spec = {"name": "badlabels", "split": split}
                return ds

            register("badlabels", load, "digits with a label 12")

    flowcond_register(BadLabels(), "badlabels")
    with pytest.raises(
        ConfigError, match=r"dataset 'badlabels' \(train split\): labels of field 'digit'"
    ) as e:
        attach(
            backbone_file, _config(tmp_path, dataset="badlabels"), tmp_path / "x.safetensors", progress=False
        )
    assert "0..12 outside the 10 classes 0..9" in str(e.value) and "\n" not in str(e.value)
