"""Heads files record which distribution provided each kind, and check it when loaded."""

from __future__ import annotations

import json
import struct
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from flowcond import registry
from flowcond.caglow.attach import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.errors import PluginError
from flowcond.io import safefile
from flowcond.testing import make_distribution, tiny_image_dataset

WAVY = """
from flowcond import hookimpl
from flowcond_plugins.codes import Codes

class Wavy(Codes):
    "Wavy codes."
    name = "wavy"

@hookimpl
def register_conditions(register):
    register(Wavy)
"""


def install(root: Path, monkeypatch, dist: str, version: str = "0.1.0", source: str = WAVY) -> Path:
    """'Install' ``dist`` (entry point ``wavy``) in its own folder on sys.path; the folder."""
    module = f"wavy_{uuid.uuid4().hex[:8]}"
    folder = root / f"{dist}-{version}"
    make_distribution(folder, dist, {"wavy": module}, {f"{module}.py": textwrap.dedent(source)}, version)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def uninstall(folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder)])


@pytest.fixture
def wavy_heads(flowcond_plugins, tiny_backbone, tmp_path, monkeypatch):
    """A heads file attached with kind ``wavy`` of flowcond-wavy 0.1.0 (installed, and its folder)."""
    folder = install(tmp_path, monkeypatch, "flowcond-wavy")
    flowcond_plugins.reload()
    kind = registry.get_condition_kind("wavy").from_dataset({}, tiny_image_dataset())
    path = tmp_path / "wavy.heads.safetensors"
    Heads(tiny_backbone, {"wavy": kind}, AttachConfig(plugins=["wavy"])).save(path)
    return path, folder


def test_the_heads_file_records_distribution_and_version(wavy_heads):
    path, _ = wavy_heads
    [entry] = safefile.read_header(path, "heads")["plugins"]
    assert (entry["name"], entry["plugin"], entry["distribution"], entry["version"]) == (
        "wavy",
        "wavy",
        "flowcond-wavy",
        "0.1.0",
    )


def test_same_distribution_loads_and_a_new_version_is_a_warning(
    wavy_heads, flowcond_plugins, tiny_backbone, tmp_path, monkeypatch
):
    path, folder = wavy_heads
    assert Heads.load(path, tiny_backbone).kinds["wavy"].name == "wavy" and not flowcond_plugins.errors
    uninstall(folder, monkeypatch)
    install(tmp_path, monkeypatch, "flowcond-wavy", "0.2.0")
    flowcond_plugins.reload()
    Heads.load(path, tiny_backbone)
    [warning] = [str(e) for e in flowcond_plugins.errors]
    assert warning == (
        f"plugin 'wavy' (from flowcond-wavy): {path} was attached with flowcond-wavy 0.1.0 (kind 'wavy'), "
        f"0.2.0 is installed: samples may differ"
    )


def test_another_distribution_with_the_same_kind_is_refused(
    wavy_heads, flowcond_plugins, tiny_backbone, tmp_path, monkeypatch
):
    path, folder = wavy_heads
    uninstall(folder, monkeypatch)
    install(tmp_path, monkeypatch, "flowcond-impostor", "9.0")
    flowcond_plugins.reload()
    with pytest.raises(PluginError) as info:
        Heads.load(path, tiny_backbone)
    assert str(info.value) == (
        f"{path}: condition plugin 'wavy' was attached with distribution flowcond-wavy 0.1.0, but the "
        f"installed 'wavy' comes from flowcond-impostor 9.0: refused (it may compute other targets); "
        f"pip install 'flowcond-wavy==0.1.0', or accept it with FLOWCOND_ACCEPT_PROVIDERS=wavy"
    )
    monkeypatch.setenv("FLOWCOND_ACCEPT_PROVIDERS", "wavy")  # the way out
    assert "wavy" in Heads.load(path, tiny_backbone).kinds
    assert "using flowcond-impostor (FLOWCOND_ACCEPT_PROVIDERS)" in str(flowcond_plugins.errors[-1])


def test_not_installed_says_what_to_pip_install(wavy_heads, flowcond_plugins, tiny_backbone, monkeypatch):
    path, folder = wavy_heads
    uninstall(folder, monkeypatch)
    flowcond_plugins.reload()
    with pytest.raises(PluginError) as info:
        Heads.load(path, tiny_backbone)
    assert str(info.value) == (
        f"{path}: needs condition plugin 'wavy' from distribution flowcond-wavy, which is not installed: "
        f"pip install 'flowcond-wavy==0.1.0'"
    )


def test_installed_but_broken_says_so_with_the_failure(
    wavy_heads, flowcond_plugins, tiny_backbone, tmp_path, monkeypatch
):
    path, folder = wavy_heads
    uninstall(folder, monkeypatch)
    install(tmp_path, monkeypatch, "flowcond-wavy", "0.1.0", "raise ImportError('needs libwave')\n")
    flowcond_plugins.reload()
    with pytest.raises(PluginError) as info:
        Heads.load(path, tiny_backbone)
    assert str(info.value) == (
        f"{path}: needs condition plugin 'wavy' from flowcond-wavy, which is installed but failed to "
        f"load: ImportError: needs libwave"
    )


def test_left_out_by_load_plugins_says_so(wavy_heads, flowcond_plugins, tiny_backbone, monkeypatch):
    path, _ = wavy_heads
    monkeypatch.setenv("FLOWCOND_LOAD_PLUGINS", "flowcond")
    flowcond_plugins.reload()
    with pytest.raises(
        PluginError, match=r"from flowcond-wavy 0.1.0, which FLOWCOND_LOAD_PLUGINS leaves out$"
    ):
        Heads.load(path, tiny_backbone)


def _without_distribution(path: Path) -> Path:
    """A copy of a heads file whose plugin entries have no ``distribution`` (an older flowcond)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n])
    header = json.loads(meta["__metadata__"]["flowcond"])
    for entry in header["plugins"]:
        del entry["distribution"]
    meta["__metadata__"]["flowcond"] = json.dumps(header)
    raw = json.dumps(meta).encode()
    out = path.with_name("old-" + path.name)
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return out


def test_old_heads_files_still_load_and_name_the_distribution_when_broken(
    wavy_heads, flowcond_plugins, tiny_backbone, tmp_path, monkeypatch
):
    path, folder = wavy_heads
    old = _without_distribution(path)
    assert "wavy" in Heads.load(old, tiny_backbone).kinds
    uninstall(folder, monkeypatch)
    install(tmp_path, monkeypatch, "flowcond-wavy", "0.1.0", "raise ImportError('needs libwave')\n")
    flowcond_plugins.reload()
    with pytest.raises(
        PluginError, match=r"from flowcond-wavy, which is installed but failed to load: ImportError"
    ):
        Heads.load(old, tiny_backbone)


def test_a_heads_file_picks_its_own_distribution_when_the_name_is_ambiguous(
    wavy_heads, flowcond_plugins, tiny_backbone, tmp_path, monkeypatch
):
    path, _ = wavy_heads
    install(tmp_path, monkeypatch, "flowcond-impostor", "9.0")
    flowcond_plugins.reload()
    with pytest.raises(PluginError, match="is registered by"):
        registry.get_condition_kind("wavy")  # ambiguous for a new attach...
    heads = Heads.load(path, tiny_backbone)  # ...but the heads file names its distribution
    assert registry.find_condition_kind("flowcond-wavy:wavy").obj is type(heads.kinds["wavy"])
    assert not flowcond_plugins.errors
