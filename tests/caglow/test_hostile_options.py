"""Hostile options and values: non-finite numbers never pass silently, edge values are one-line
errors before any work, images with non-finite pixels are never written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from flowcond import Backbone, BackboneConfig
from flowcond.caglow.attach import AttachConfig, attach
from flowcond.caglow.config import Lambdas
from flowcond.caglow.heads import Heads
from flowcond.datasets import load_dataset
from flowcond.errors import ConfigError, FlowcondError
from flowcond.flow.config import MAX_TEMPERATURE, TrainConfig
from flowcond.paper.config import EvaluateConfig, EvaluatorTrainConfig

INF = float("inf")
SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "backbones" / "glow_mnist5k.safetensors"
NAN = float("nan")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny backbone file and a heads file attached to it for a few steps."""
    tmp = tmp_path_factory.mktemp("hostile")
    bb = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8))
    bb.initialize(load_dataset("digits", "train").images[:128])
    bb.freeze().save(
        tmp / "bb.safetensors", dataset={"name": "digits", "split": "train"}, test_bits_per_dim=0.0
    )
    config = AttachConfig(
        plugins=["ids", "codes"], steps=4, batch_size=16, checkpoint_every=4, cache_dir=str(tmp / "cache")
    )
    attach(tmp / "bb.safetensors", config, tmp / "h.safetensors", progress=False)
    return tmp / "bb.safetensors", tmp / "h.safetensors"


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error")]


def _one_line_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    (line,) = _errors(result)
    for needle in needles:
        assert needle in line, line
    return line


# ------------------------------------------------------------ temperatures
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e30", "0", "-1"])
def test_sample_temperature_must_be_finite_positive_and_bounded(files, tmp_path, flowcond_cli, value):
    out = tmp_path / "s.npz"
    r = flowcond_cli("sample", str(files[1]), "--n", "4", "--temperature", value, "--out", str(out))
    _one_line_error(r, 2, "--temperature", f"at most {MAX_TEMPERATURE:g}")
    assert not out.exists()


def test_interpolate_temperature_nan_is_refused(files, tmp_path, flowcond_cli):
    out = tmp_path / "i.png"
    r = flowcond_cli(
        "interpolate",
        str(files[1]),
        "--from",
        "ids=1",
        "--to",
        "ids=2",
        "--temperature",
        "nan",
        "--out",
        str(out),
    )
    _one_line_error(r, 2, "--temperature")
    assert not out.exists()


def test_library_sampling_refuses_non_finite_temperatures(files):
    heads = Heads.load(files[1])
    for t in (NAN, INF, -1.0, 1e30):
        with pytest.raises(ConfigError, match="temperature"):
            heads.sample(["ids=3"], n=2, temperature=t)
        with pytest.raises(ConfigError, match="temperature"):
            heads.backbone.sample(2, t)


# ---------------------------------------------------------------- counts
@pytest.mark.parametrize("n", ["0", "-5"])
def test_sample_n_below_one_is_a_click_error(files, tmp_path, flowcond_cli, n):
    r = flowcond_cli("sample", str(files[1]), "--n", n, "--out", str(tmp_path / "s.png"))
    _one_line_error(r, 2, "--n", "x>=1")


def test_sample_n_too_large_is_refused_with_the_memory_it_needs(files, tmp_path, flowcond_cli, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(Heads, "generate", no_generation)
    r = flowcond_cli("sample", str(files[1]), "--n", "10000000", "--out", str(tmp_path / "s.npz"))
    _one_line_error(r, 1, "--n 10000000", "GiB of memory", "at most 1,000,000 images")


def test_a_png_grid_too_large_is_refused(files, tmp_path, flowcond_cli, monkeypatch):
    from flowcond.caglow import generate

    monkeypatch.setattr(generate, "available_memory", lambda: 2**50)  # only the pixels limit
    monkeypatch.setattr(Heads, "generate", lambda *a, **k: pytest.fail("generation started"))
    r = flowcond_cli("sample", str(files[1]), "--n", "900000", "--out", str(tmp_path / "s.png"))
    _one_line_error(r, 1, "a PNG grid of 900000 images", "pixels")


@pytest.mark.parametrize(
    "args",
    [
        ("interpolate", "--from", "ids=1", "--to", "ids=2", "--steps", "0"),
        ("interpolate", "--from", "ids=1", "--to", "ids=2", "--rows", "0"),
        ("explore", "--steps", "0"),
        ("explore", "--rows", "0"),
        ("manipulate", "--add", "ids=3", "--rows", "0"),
        ("explore", "--code", "-1"),
    ],
)
def test_steps_and_rows_below_one_are_click_errors(files, tmp_path, flowcond_cli, args):
    r = flowcond_cli(args[0], str(files[1]), *args[1:], "--out", str(tmp_path / "g.png"))
    _one_line_error(r, 2, "Invalid value")
    assert not (tmp_path / "g.png").exists()


def test_library_generation_refuses_zero_counts(files):
    from flowcond.caglow import generate

    heads = Heads.load(files[1])
    with pytest.raises(ConfigError, match="steps=0"):
        generate.interpolate(heads, {}, {}, steps=0)
    with pytest.raises(ConfigError, match="rows=0"):
        generate.manipulate(heads, {}, ["ids=1"], rows=0)
    with pytest.raises(ConfigError, match="n=0"):
        heads.sample(None, n=0)


def test_explore_a_plugin_without_value_range_names_the_plugin(files, tmp_path, flowcond_cli):
    r = flowcond_cli("explore", str(files[1]), "--plugin", "ids", "--out", str(tmp_path / "e.png"))
    _one_line_error(r, 1, "--plugin ids", "no value range", "codes")
    r = flowcond_cli("explore", str(files[1]), "--plugin", "nope", "--out", str(tmp_path / "e.png"))
    _one_line_error(r, 1, "--plugin nope", "not attached")


@pytest.mark.parametrize("seed", [str(2**70), str(2**63), "-1"])
def test_seed_out_of_range_is_a_click_error(files, tmp_path, flowcond_cli, seed):
    r = flowcond_cli("sample", str(files[1]), "--seed", seed, "--out", str(tmp_path / "s.png"))
    _one_line_error(r, 2, "--seed", str(2**63 - 1))


def test_library_seed_out_of_range_is_a_config_error(files):
    with pytest.raises(ConfigError, match="seed"):
        Heads.load(files[1]).sample(None, n=2, seed=2**70)
    with pytest.raises(ValidationError):
        AttachConfig(plugins=["ids"], seed=2**70)
    with pytest.raises(ValidationError):
        TrainConfig(seed=-1)


# ------------------------------------------------------- non-finite options
@pytest.mark.parametrize(
    "option", [("--lr", "inf"), ("--lr", "nan"), ("--lambda", "FM=Infinity"), ("--lambda", "E=NaN")]
)
def test_attach_non_finite_options_are_refused(files, tmp_path, flowcond_cli, monkeypatch, option):
    import flowcond.caglow.attach as attach_module

    monkeypatch.setattr(attach_module, "attach", lambda *a, **k: pytest.fail("attach ran"))
    out = tmp_path / "h.safetensors"
    r = flowcond_cli("attach", "--backbone", str(files[0]), "--plugin", "ids", *option, "--out", str(out))
    _one_line_error(r, 1, "invalid attach configuration", "finite number")
    assert not out.exists()


def test_train_backbone_lr_inf_is_refused(tmp_path, flowcond_cli, monkeypatch):
    import flowcond.flow.train as train_module

    monkeypatch.setattr(train_module, "train_backbone", lambda *a, **k: pytest.fail("training ran"))
    r = flowcond_cli(
        "train-backbone", "--dataset", "digits", "--lr", "inf", "--out", str(tmp_path / "b.safetensors")
    )
    _one_line_error(r, 1, "invalid configuration", "lr", "finite number")


@pytest.mark.parametrize(
    "make",
    [
        lambda v: TrainConfig(lr=v),
        lambda v: TrainConfig(clip=v),
        lambda v: Lambdas(FM=v),
        lambda v: AttachConfig(plugins=["ids"], lr=v),
        lambda v: EvaluatorTrainConfig(lr=v),
        lambda v: EvaluateConfig(backbone="b", evaluator="e", temperature=v),
        lambda v: EvaluateConfig(backbone="b", evaluator="e", alpha=v),
        lambda v: BackboneConfig(scale_clamp=v),
    ],
)
def test_configs_reject_nan_and_infinity(make):
    for value in (NAN, INF, -INF):
        with pytest.raises(ValidationError):
            make(value)


# ------------------------------------------------- encode / decode / writes
def test_encode_of_images_with_nan_is_an_error(files):
    bb = Backbone.load(files[0])
    x = torch.rand(3, 1, 8, 8)
    x[1, 0, 2, 2] = NAN
    with pytest.raises(FlowcondError, match="1 of 3 images to encode hold non-finite"):
        bb.encode(x)


@pytest.mark.parametrize("value", [NAN, INF])
def test_decode_of_non_finite_latents_says_how_many_of_how_many(files, value):
    bb = Backbone.load(files[0])
    z = torch.randn(4, bb.latent_dim) * 0.5
    z[2, 5] = value
    with pytest.raises(FlowcondError, match=r"1 of 4 latents to decode hold non-finite"):
        bb.decode(z)
    with pytest.raises(FlowcondError, match=r"1 of 4 latents to decode hold non-finite"):
        bb.decode_in_batches(z, batch_size=3)
    assert torch.isfinite(bb.decode(z[:2])).all()


def test_decode_of_huge_latents_that_overflow_is_an_error():
    bb = Backbone.load(SHIPPED)  # read only
    z = torch.randn(2, bb.latent_dim) * 0.5
    z[1, 5] = 1e30  # finite, but the 3 x 10 Glow overflows to NaN pixels
    with pytest.raises(FlowcondError, match=r"decoding overflowed .* for 1 of 2 latents"):
        bb.decode_in_batches(z, batch_size=1)  # what Heads.decode runs


def test_non_finite_images_are_never_written(files, tmp_path, flowcond_cli, monkeypatch):
    from flowcond.caglow import generate
    from flowcond.io.images import save_grid

    bad = torch.rand(4, 1, 8, 8)
    bad[0, 0, 0, 0] = NAN
    with pytest.raises(FlowcondError, match="1 of 4 generated images"):
        save_grid(bad, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()

    real = generate.sample_rows

    def nan_rows(*args, **kwargs):
        images, targets, labels = real(*args, **kwargs)
        images[1:] = NAN
        return images, targets, labels

    monkeypatch.setattr(generate, "sample_rows", nan_rows)
    for name in ("s.npz", "s.png"):
        r = flowcond_cli("sample", str(files[1]), "--n", "4", "--out", str(tmp_path / name))
        _one_line_error(r, 1, "3 of 4 generated images", "nothing was written")
        assert not (tmp_path / name).exists()
    assert math.isfinite(MAX_TEMPERATURE)
