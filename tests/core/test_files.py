"""Backbone files: save/load round trip, content hash, and every bad file refused in one line."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from flowcond.errors import FileFormatError
from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig
from flowcond.io import safefile

TINY = dict(channels=1, height=8, width=8, levels=2, steps=2, hidden=8)


@pytest.fixture(autouse=True)
def _never_unpickle(monkeypatch):
    """Any attempt to unpickle while reading a file fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("flowcond tried to unpickle a file")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def _trained_model() -> Backbone:
    model = Backbone(BackboneConfig(**TINY))
    g = torch.Generator().manual_seed(0)
    model.initialize(torch.rand(32, 1, 8, 8, generator=g))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture
def saved(tmp_path) -> tuple[Backbone, Path]:
    model = _trained_model()
    path = tmp_path / "bb.safetensors"
    model.save(path, dataset={"name": "digits"}, test_bits_per_dim=3.25)
    return model, path


def _data_start(path: Path) -> int:
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + n


# ---------------------------------------------------------------- round trip
def test_save_load_round_trip(saved):
    model, path = saved
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loaded = Backbone.load(path)
    assert loaded.config == model.config
    assert loaded.content_hash == model.content_hash
    assert loaded.metadata["dataset"] == {"name": "digits"}
    assert loaded.metadata["test_bits_per_dim"] == 3.25
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    assert loaded.initialized  # ActNorm does not re-initialize from the next batch
    with torch.no_grad():
        model.eval()
        assert torch.equal(loaded.encode(x), model.encode(x))
        z = loaded.encode(x)
        assert (loaded.decode(z) - loaded.quantize(x) / 255).abs().max() <= 1e-4
    state = {k: v for k, v in model.flow.state_dict().items()}
    for k, v in loaded.flow.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_content_hash_is_stable(saved, tmp_path):
    model, path = saved
    header = safefile.read_header(path, "backbone")
    assert header["content_hash"] == model.content_hash
    assert header["kind"] == "backbone" and header["format_version"] == safefile.FORMAT_VERSION
    # same weights -> same hash, whatever the metadata or the memory format
    again = tmp_path / "again.safetensors"
    digest = model.save(again, note="other metadata")
    assert digest == model.content_hash == Backbone.load(again).content_hash
    model.to(memory_format=torch.channels_last)
    assert model.content_hash == digest
    # a different backbone has a different hash
    other = Backbone(BackboneConfig(**{**TINY, "seed": 1}))
    assert other.content_hash != digest
    # hash depends on names, dtypes, shapes and bytes
    t = {"a": torch.zeros(4)}
    assert safefile.content_hash(t) != safefile.content_hash({"b": torch.zeros(4)})
    assert safefile.content_hash(t) != safefile.content_hash({"a": torch.zeros(4, dtype=torch.float64)})
    # (the flattened shape is hashed, as in every file written so far; full shapes are checked
    # by load_state_dict against the config)
    assert safefile.content_hash(t) != safefile.content_hash({"a": torch.zeros(5)})
    assert safefile.content_hash(t) == "b3e7267a31fc8dc259c3bb8fbbf975ab35877fdd2fddd90b41a5d68fb35a0092"


def test_files_from_before_scale_map_load_as_sigmoid(tmp_path):
    """Backbone files written before ``scale_map`` existed used Glow's sigmoid scale."""
    cfg = BackboneConfig(**TINY, scale_map="sigmoid")
    model = Backbone(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    model.initialize(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = tmp_path / "new.safetensors"
    model.save(path)
    header = safefile.read_header(path)
    legacy_config = {k: v for k, v in header["config"].items() if k not in ("scale_map", "scale_clamp")}
    old = tmp_path / "old.safetensors"
    safefile.write(old, safefile.read(path)[0], {**header, "config": legacy_config})
    loaded = Backbone.load(old)
    assert loaded.config.scale_map == "sigmoid"
    assert loaded.content_hash == model.content_hash
    with torch.no_grad():
        model.eval()
        assert torch.equal(loaded.encode(x), model.encode(x))
    assert BackboneConfig.from_header(legacy_config) == cfg
    assert BackboneConfig().scale_map == "softclamp"  # the default for new backbones


def test_load_unfrozen(saved):
    _, path = saved
    model = Backbone.load(path, frozen=False)
    assert all(p.requires_grad for p in model.parameters())


def test_metadata_cannot_override_header_fields(tmp_path):
    model = _trained_model()
    path = tmp_path / "m.safetensors"
    model.save(path, kind="heads", format_version=99, content_hash="x", config={})
    assert Backbone.load(path).content_hash == model.content_hash


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    safefile.write(path, {"a": torch.ones(2)}, {"kind": "test"})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safefile, "save_file", boom)
    with pytest.raises(OSError):
        safefile.write(path, {"a": torch.zeros(2)}, {"kind": "test"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left


# ----------------------------------------------------------------- bad files
def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, a fragment the error message must contain)."""
    data = good.read_bytes()
    start = _data_start(good)
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, content: bytes, expect: str) -> None:
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(content)
        out[name] = (p, expect)

    out["missing"] = (tmp_path / "nope.safetensors", "no such file")
    put("empty", b"", "not a safetensors file")
    put("cut_in_header", data[: start // 2], "truncated")
    put("cut_in_data", data[: start + (len(data) - start) // 2], "truncated")
    flipped = bytearray(data)
    for i in range(start + 40, start + 48):
        flipped[i] ^= 0xFF
    put("corrupted_weights", bytes(flipped), "content hash mismatch")
    header_bytes = bytearray(data)
    header_bytes[10:14] = b"\x00\xff\x00\xff"
    put("corrupted_header", bytes(header_bytes), "not a safetensors file")

    pickled = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.zeros(3)}, pickled)  # zip container holding a pickle
    out["torch_save"] = (pickled, "pickle")
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    out["torch_save_legacy"] = (legacy, "pickle")
    raw_pickle = tmp_path / "raw.safetensors"
    raw_pickle.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    out["raw_pickle"] = (raw_pickle, "not a safetensors file")

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    out["plain_safetensors"] = (plain, "without a flowcond header")
    other_meta = tmp_path / "other_meta.safetensors"
    save_file({"w": torch.zeros(3)}, str(other_meta), metadata={"format": "pt"})
    out["other_metadata"] = (other_meta, "without a flowcond header")

    header = safefile.read_header(good)
    tensors = safefile.read(good)[0]

    def craft(name: str, hdr: object, expect: str) -> None:
        p = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(p), metadata={"flowcond": hdr if isinstance(hdr, str) else json.dumps(hdr)})
        out[name] = (p, expect)

    craft("format_version_2", {**header, "format_version": 2}, "format version 2 is not supported")
    craft(
        "no_format_version",
        {k: v for k, v in header.items() if k != "format_version"},
        "format version None is not supported",
    )
    craft("heads_kind", {**header, "kind": "heads"}, "is a 'heads' file, expected a 'backbone' file")
    craft("checkpoint_kind", {**header, "kind": "backbone-checkpoint"}, "expected a 'backbone' file")
    craft(
        "invalid_config",
        {**header, "config": {**header["config"], "height": 30}},
        "invalid backbone config in header",
    )
    craft(
        "extra_config_field",
        {**header, "config": {**header["config"], "depth": 3}},
        "invalid backbone config in header",
    )
    craft("config_not_a_dict", {**header, "config": [1, 2]}, "invalid backbone config in header")
    craft("no_config", {k: v for k, v in header.items() if k != "config"}, "no config")
    craft("no_hash", {k: v for k, v in header.items() if k != "content_hash"}, "no content hash")
    craft(
        "wrong_shape_config",
        {**header, "config": {**header["config"], "hidden": 16}},
        "weights do not match the config",
    )
    craft("header_not_json", "{not json", "corrupted flowcond header")
    craft("header_list", "[1, 2]", "corrupted flowcond header")
    return out


def test_bad_files_are_refused_in_one_line(tmp_path, saved):
    _, good = saved
    for name, (path, expect) in _bad_files(tmp_path, good).items():
        with pytest.raises(FileFormatError) as e:
            Backbone.load(path)
        msg = str(e.value)
        assert "\n" not in msg, (name, msg)
        assert msg.startswith(f"{path}: "), (name, msg)
        assert expect in msg, (name, msg)
        assert e.value.path == str(path)


def test_weights_that_do_not_fit_the_config(tmp_path, saved):
    _, good = saved
    header = safefile.read_header(good)
    tensors = safefile.read(good)[0]
    bigger = Backbone(BackboneConfig(**{**TINY, "hidden": 16})).weights()
    path = tmp_path / "mismatch.safetensors"
    safefile.write(path, bigger, {**header, "content_hash": safefile.content_hash(bigger)})
    with pytest.raises(FileFormatError, match="weights do not match the config") as e:
        Backbone.load(path)
    assert "\n" not in str(e.value)
    missing = dict(tensors)
    missing.pop(sorted(missing)[0])
    path2 = tmp_path / "missing_key.safetensors"
    safefile.write(path2, missing, {**header, "content_hash": safefile.content_hash(missing)})
    with pytest.raises(FileFormatError, match="weights do not match the config"):
        Backbone.load(path2)


def test_read_config_reads_no_weights(saved, monkeypatch):
    model, path = saved
    monkeypatch.setattr(safefile, "load_file", lambda *a, **k: pytest.fail("loaded tensors"))
    config, header = Backbone.read_config(path)
    assert config == model.config and header["content_hash"] == model.content_hash


# ------------------------------------------------------------------------ CLI
def _cli():
    from flowcond.cli import cli

    return cli


def test_cli_info_good_file(saved):
    model, path = saved
    result = CliRunner().invoke(_cli(), ["info", str(path)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["content_hash"] == model.content_hash
    assert info["config"] == model.config.model_dump()


def test_cli_info_refuses_bad_files_in_one_line(tmp_path, saved):
    _, good = saved
    cli = _cli()
    bad = _bad_files(tmp_path, good)
    for name in (
        "missing",
        "cut_in_header",
        "cut_in_data",
        "torch_save",
        "plain_safetensors",
        "format_version_2",
        "invalid_config",
        "header_not_json",
    ):
        path, expect = bad[name]
        result = CliRunner().invoke(cli, ["info", str(path)])
        assert result.exit_code != 0, name
        assert "Traceback" not in result.output, (name, result.output)
        errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
        assert errors == [errors[0]] and errors[0].startswith(f"Error: {path}: "), (name, errors)
        assert expect in errors[0], (name, errors)
        assert not isinstance(result.exception, FileFormatError)  # handled, not raised
