"""Headers are validated with bounds before any model is built (issue 10, "Headers trusted before
sizes are checked"): sizes are checked against the tensors present, nesting depth is limited, and
every malformed header is a one-line FileFormatError naming the file and the field."""

from __future__ import annotations

import itertools
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from flowcond import registry
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.conditions import ConditionKind
from flowcond.errors import ConfigError, FileFormatError
from flowcond.flow import backbone as backbone_module
from flowcond.flow.backbone import Backbone, _build_flow
from flowcond.flow.config import BackboneConfig
from flowcond.flow.header import expected_weights
from flowcond.io import safefile
from flowcond.paper.baselines.cglow import CGlow, CGlowConfig
from flowcond.paper.baselines.prestored import PreStored
from flowcond.paper.config import EvaluatorConfig
from flowcond.paper.evaluator import Evaluator, EvaluatorNet
from flowcond.testing import tiny_image_dataset

TINY = dict(channels=1, height=8, width=8, levels=1, steps=2, hidden=8)
PLUGINS = ["ids", "attributes", "codes"]


def rewrite(path: Path, edit: Callable[[dict[str, Any]], Any], out: Path | None = None) -> Path:
    """Copy of ``path`` whose flowcond header is ``edit(header)`` (or the header edited in
    place); the tensor bytes are kept as they are."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n])
    header = json.loads(meta["__metadata__"]["flowcond"])
    new = edit(header)
    meta["__metadata__"]["flowcond"] = json.dumps(header if new is None else new)
    raw = json.dumps(meta).encode()
    out = out or path.with_name("edited-" + path.name)
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return out


def _backbone(seed: int = 0) -> Backbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bb = Backbone(BackboneConfig(**TINY, seed=seed))
        bb.initialize(torch.rand(16, 1, 8, 8))
    return bb.freeze()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Any]:
    """A tiny backbone file and a heads file (ids, attributes, codes) attached to it."""
    tmp = tmp_path_factory.mktemp("headers")
    bb = _backbone()
    bb_path = tmp / "bb.safetensors"
    bb.save(bb_path, dataset={"name": "tiny", "split": "train"}, test_bits_per_dim=3.5)
    ds = tiny_image_dataset()
    kinds = {n: registry.get_condition_kind(n).from_dataset(None, ds) for n in PLUGINS}
    heads = Heads(bb, kinds, AttachConfig(plugins=PLUGINS, hidden=8, trunk_hidden=8, noise_dim=4))
    heads_path = tmp / "heads.safetensors"
    heads.save(heads_path, backbone_path=bb_path.name)
    return {"bb": bb, "bb_path": bb_path, "heads_path": heads_path, "tmp": tmp}


def _no_build(monkeypatch) -> None:
    """Building a flow fails the test: a bad header must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built from a header that does not fit its file")

    monkeypatch.setattr(backbone_module, "_build_flow", refuse)


def _set(header: dict[str, Any], path: str, value: Any) -> None:
    if path == "*":  # several fields at once: value is {path: value}
        for k, v in value.items():
            _set(header, k, v)
        return
    *parents, last = path.split(".")
    node = header
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


_DELETE = object()


# ---------------------------------------------------------------- backbone sizes
def test_backbone_with_a_million_steps_is_refused_before_building(files, monkeypatch):
    path = rewrite(files["bb_path"], lambda h: _set(h, "config.steps", 10**6))
    _no_build(monkeypatch)
    t0 = time.perf_counter()
    with pytest.raises(FileFormatError, match=r"config\.steps") as e:
        Backbone.load(path)
    assert time.perf_counter() - t0 < 2
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_backbone_with_a_billion_hidden_channels_is_refused_before_allocating(files, monkeypatch):
    path = rewrite(files["bb_path"], lambda h: _set(h, "config.hidden", 10**9))
    _no_build(monkeypatch)
    with pytest.raises(FileFormatError, match=r"config\.hidden"):
        Backbone.load(path)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("steps", 500, "missing tensor"),
        ("hidden", 16000, r"needs F32 \[16000"),
        ("levels", 2, "weights do not match the config"),
        ("channels", 3, "weights do not match the config"),
        ("lu", False, "missing tensor"),
        ("scale_map", "sigmoid", "missing tensor"),
    ],
)
def test_backbone_config_in_bounds_is_checked_against_the_tensors_present(
    files, monkeypatch, field, value, match
):
    path = rewrite(files["bb_path"], lambda h: _set(h, f"config.{field}", value))
    _no_build(monkeypatch)
    t0 = time.perf_counter()
    with pytest.raises(FileFormatError, match=match):
        Backbone.read_config(path)
    with pytest.raises(FileFormatError, match=match):
        Backbone.load(path)
    assert time.perf_counter() - t0 < 3


def test_backbone_config_bounds_are_generous_for_real_use():
    BackboneConfig(channels=3, height=64, width=64, levels=3, steps=32, hidden=512)  # CelebA
    BackboneConfig(channels=3, height=256, width=256, levels=6, steps=48, hidden=512)
    for absurd in (
        dict(steps=10**6),
        dict(hidden=10**9),
        dict(channels=10**4),
        dict(height=2**20, width=32),
        dict(levels=40),
    ):
        with pytest.raises(ValidationError):
            BackboneConfig(**absurd)


@pytest.mark.parametrize(
    ("channels", "levels", "steps", "hidden", "coupling", "scale_map", "lu"),
    list(
        itertools.product(
            [1, 3], [1, 2], [1, 2], [5], ["affine", "additive"], ["softclamp", "sigmoid"], [True, False]
        )
    ),
)
def test_expected_weights_are_those_of_the_built_flow(
    channels, levels, steps, hidden, coupling, scale_map, lu
):
    cfg = BackboneConfig(
        channels=channels,
        height=16,
        width=16,
        levels=levels,
        steps=steps,
        hidden=hidden,
        coupling=coupling,
        scale_map=scale_map,
        lu=lu,
    )
    assert expected_weights(cfg) == safefile.specs_of(_build_flow(cfg))


def test_cglow_expected_weights_are_those_of_the_built_model():
    cfg = BackboneConfig(**TINY)
    for cglow in (CGlowConfig(), CGlowConfig.from_dataset(tiny_image_dataset())):
        assert CGlow.expected_weights(cfg, cglow) == safefile.specs_of(CGlow(cfg, cglow))


# ---------------------------------------------------------------- backbone metadata
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("dataset", "mnist"),
        ("dataset", {"name": 5}),
        ("training", "fast"),
        ("training", {"seconds": "ten"}),
        ("test_bits_per_dim", "low"),
        ("history", {"epoch": 1}),
        ("content_hash", "abc"),
        ("config", "big"),
        ("config.seed", 2**70),
    ],
)
def test_backbone_metadata_of_the_wrong_type_is_refused(files, field, value):
    path = rewrite(files["bb_path"], lambda h: _set(h, field, value))
    with pytest.raises(FileFormatError, match=field.split(".")[-1]) as e:
        Backbone.load(path)
    assert str(path) in str(e.value)


def test_backbone_whose_dataset_is_a_string_does_not_break_attach(files, tmp_path):
    from flowcond.caglow.attach import attach

    path = rewrite(files["bb_path"], lambda h: _set(h, "dataset", "tiny"))
    config = AttachConfig(plugins=["codes"], steps=1, batch_size=4, cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileFormatError, match="dataset"):
        attach(path, config, tmp_path / "h.safetensors", progress=False)


# ---------------------------------------------------------------- nesting depth
def _nested(header: dict[str, Any], depth: int) -> str:
    header["deep"] = "@@"
    return json.dumps(header).replace('"@@"', "[" * depth + "]" * depth)


def test_deeply_nested_header_json_is_a_file_format_error(files, flowcond_cli):
    data = files["bb_path"].read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n])
    meta["__metadata__"]["flowcond"] = _nested(json.loads(meta["__metadata__"]["flowcond"]), 100_000)
    raw = json.dumps(meta).encode()
    path = files["tmp"] / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(FileFormatError, match="nested deeper than"):
        safefile.read_header(path)
    with pytest.raises(FileFormatError, match="nested deeper than"):
        Backbone.load(path)
    result = flowcond_cli("info", str(path))
    assert result.exit_code == 1
    assert "nested deeper than" in result.output and "Traceback" not in result.output


def test_deeply_nested_safetensors_header_is_a_file_format_error(files, flowcond_cli):
    data = files["bb_path"].read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    raw = _nested(json.loads(data[8 : 8 + n]), 50_000).encode()
    path = files["tmp"] / "deep-outer.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(FileFormatError, match="nested deeper than"):
        safefile.read_header(path)
    result = flowcond_cli("info", str(path))
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_json_depth_skips_strings_and_stops_early():
    assert safefile.json_depth('{"a": [1, {"b": "[[[[{{{"}]}') == 3
    assert safefile.json_depth('"\\"[[["') == 0
    assert safefile.json_depth("[" * 10**6 + "]" * 10**6) == safefile.MAX_JSON_DEPTH + 1
    assert safefile.json_depth("[{" * 40 + "}]" * 40) == safefile.MAX_JSON_DEPTH + 1
    with pytest.raises(FileFormatError, match="x.json: corrupted thing"):
        safefile.loads("1" * 10_000, "x.json", "thing")  # an integer too long to convert


# ---------------------------------------------------------------- heads headers
MALFORMED_HEADS = [
    ("backbone", "bb.safetensors", "backbone"),
    ("backbone", {}, r"backbone\.content_hash"),
    ("backbone.path", 5, r"backbone\.path"),
    ("plugins", [{}], r"plugins\.0\.name"),
    ("plugins", "ids", "plugins"),
    ("plugins", [], "plugins"),
    ("plugins.0", "ids", r"plugins\.0"),
    ("plugins.0.state", _DELETE, r"plugins\.0\.state"),
    ("plugins.0.state", [], r"plugins\.0\.state"),
    ("plugins.0.name", 5, r"plugins\.0\.name"),
    ("plugins.0.options", "big", r"plugins\.0\.options"),
    ("plugins.0.state.classes", "ten", "classes"),
    ("plugins.0.state.classes", -1, "classes"),
    ("plugins.0.state.classes", 10**9, "classes"),
    ("plugins.0.state.classes", True, "classes"),
    ("plugins.0.state.field", _DELETE, "field"),
    ("plugins.0.state.names", [1, 2], "names"),
    ("plugins.0.options.embedding_dim", "wide", "embedding_dim"),
    ("plugins.1.state.frequencies", [2.0, 0.5, 0.5], "frequencies"),
    ("plugins.1.state.columns", [0], "columns"),
    ("plugins.2.name", "ids", "listed twice"),
    ("attach_config", "fast", "attach_config"),
    ("attach_config", _DELETE, "attach_config"),
    ("attach_config.hidden", "wide", r"attach_config\.hidden"),
    ("attach_config.encoder", "transformer", r"attach_config\.encoder"),
]


@pytest.mark.parametrize(
    ("field", "value", "match"), MALFORMED_HEADS, ids=[f"{f}={v!r}"[:40] for f, v, _ in MALFORMED_HEADS]
)
def test_malformed_heads_header_is_a_file_format_error_naming_the_field(files, field, value, match):
    path = rewrite(files["heads_path"], lambda h: _set(h, field, value))
    with pytest.raises(FileFormatError, match=match) as e:
        Heads.load(path, files["bb"])
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("plugins.0.state.classes", 5000),
        ("plugins.0.options.embedding_threshold", 1),
        ("*", {"plugins.0.options.embedding_threshold": 1, "plugins.0.options.embedding_dim": 10**9}),
        ("plugins.2.options.n", 1000),
        ("attach_config.hidden", 10**9),
        ("attach_config.noise_dim", 10**9),
        ("attach_config.encoder", "conv"),
    ],
)
def test_heads_sizes_are_checked_against_the_tensors_present(files, field, value):
    path = rewrite(files["heads_path"], lambda h: _set(h, field, value))
    t0 = time.perf_counter()
    with pytest.raises(FileFormatError, match="weights do not match the header|do not build heads"):
        Heads.load(path, files["bb"])
    assert time.perf_counter() - t0 < 3


def test_heads_header_classes_huge_never_builds_the_heads(files, monkeypatch):
    path = rewrite(files["heads_path"], lambda h: _set(h, "plugins.0.state.classes", 10**9))
    built = []
    monkeypatch.setattr(Heads, "__init__", lambda *a, **k: built.append(1))
    with pytest.raises(FileFormatError, match="classes"):
        Heads.load(path, files["bb"])
    assert not built


def test_relative_backbone_path_is_resolved_against_the_heads_folder_first(files, tmp_path, monkeypatch):
    folder, elsewhere = tmp_path / "models", tmp_path / "cwd"
    folder.mkdir()
    elsewhere.mkdir()
    (folder / "bb.safetensors").write_bytes(files["bb_path"].read_bytes())
    (folder / "heads.safetensors").write_bytes(files["heads_path"].read_bytes())
    _backbone(seed=1).save(elsewhere / "bb.safetensors")  # same relative name, another backbone
    monkeypatch.chdir(elsewhere)
    heads = Heads.load(folder / "heads.safetensors")
    assert heads.backbone.content_hash == files["bb"].content_hash
    (folder / "bb.safetensors").unlink()  # then the current directory
    with pytest.raises(FileFormatError, match="was attached to backbone"):
        Heads.load(folder / "heads.safetensors")


def test_kind_state_is_validated_when_rebuilt():
    ids = registry.get_condition_kind("ids")
    with pytest.raises(ConfigError, match="'ids': invalid state: classes"):
        ids(None, {"field": "digit", "classes": "ten"})
    with pytest.raises(ConfigError, match="invalid state: must be an object"):
        ids(None, ["digit"])
    assert ids(None, {"field": "digit", "classes": 3, "extra": 1}).state() == {
        "field": "digit",
        "classes": 3,
        "extra": 1,
    }

    class Free(ConditionKind):  # a kind without a State model keeps any object as it is
        name = "free"

    assert Free.parse_state({"x": [1]}) == {"x": [1]}


# ---------------------------------------------------------------- evaluator, CGlow, pre-stored
@pytest.fixture(scope="module")
def paper_files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("paper")
    ecfg = EvaluatorConfig(channels=1, height=8, width=8, n_outputs=10, widths=[4, 8], feature_dim=8)
    Evaluator(EvaluatorNet(ecfg), ecfg, "digit", [str(i) for i in range(10)]).save(tmp / "e.safetensors")
    CGlow(BackboneConfig(**TINY), CGlowConfig.from_dataset(tiny_image_dataset())).save(tmp / "c.safetensors")
    z = torch.randn(32, 64)
    ds = tiny_image_dataset()
    PreStored.fit(z, ds.labels["digit"], ds.labels["attributes"], None, ["s", "e", "m"], 10).save(
        tmp / "p.safetensors"
    )
    return {
        "evaluator": tmp / "e.safetensors",
        "cglow": tmp / "c.safetensors",
        "prestored": tmp / "p.safetensors",
    }


PAPER_CASES = [
    ("evaluator", Evaluator.load, "config", "small", "config"),
    ("evaluator", Evaluator.load, "config.feature_dim", 10**9, "weights do not match"),
    ("evaluator", Evaluator.load, "config.widths", [10**9] * 100_000, "100000 blocks"),
    ("evaluator", Evaluator.load, "class_names", list(range(10)), "class_names"),
    ("cglow", CGlow.load, "config.steps", 10**6, r"config\.steps"),
    ("cglow", CGlow.load, "cglow.n_classes", 10**9, r"cglow\.class_names: 10 for 1000000000"),
    ("cglow", CGlow.load, "*", {"cglow.n_classes": 10**9, "cglow.class_names": []}, "weights do not match"),
    ("cglow", CGlow.load, "cglow", "x", "cglow"),
    ("cglow", CGlow.load, "cglow.attribute_frequencies", [0.5], "attribute_frequencies"),
    ("prestored", PreStored.load, "class_names", "abc", "class_names"),
    ("prestored", PreStored.load, "class_names", ["a"], "class_names"),
    ("prestored", PreStored.load, "backbone_hash", 5, "backbone_hash"),
]


@pytest.mark.parametrize(
    ("kind", "load", "field", "value", "match"), PAPER_CASES, ids=[f"{c[0]}-{c[2]}" for c in PAPER_CASES]
)
def test_malformed_evaluator_cglow_prestored_headers(paper_files, kind, load, field, value, match):
    path = rewrite(paper_files[kind], lambda h: _set(h, field, value))
    t0 = time.perf_counter()
    with pytest.raises(FileFormatError, match=match) as e:
        load(path)
    assert str(path) in str(e.value)
    assert time.perf_counter() - t0 < 3


def test_paper_files_still_load(paper_files):
    assert Evaluator.load(paper_files["evaluator"]).label == "digit"
    assert CGlow.load(paper_files["cglow"]).cglow.n_classes == 10
    assert PreStored.load(paper_files["prestored"]).n_attributes == 3
