"""Plugin identity ``provider:kind``: duplicate names break only the commands that use them, the
plain name never depends on entry-point order, and FLOWCOND_LOAD_PLUGINS / qualified names choose."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from flowcond import Backbone, BackboneConfig, registry
from flowcond.datasets import load_dataset
from flowcond.errors import PluginError
from flowcond.io import safefile
from flowcond.testing import make_distribution

WAVY = """
from flowcond import hookimpl
from flowcond_plugins.codes import Codes

class Wavy(Codes):
    "Wavy codes from {dist}."
    name = "wavy"

@hookimpl
def register_conditions(register):
    register(Wavy)
"""


def install(root: Path, monkeypatch, dist: str, entry: str = "wavy", version: str = "0.1.0") -> str:
    """'Install' ``dist`` whose entry point ``entry`` registers the kind ``wavy``; its module name."""
    module = f"wavy_{uuid.uuid4().hex[:8]}"
    files = {f"{module}.py": textwrap.dedent(WAVY.format(dist=dist))}
    make_distribution(root / dist, dist, {entry: module}, files, version)
    monkeypatch.syspath_prepend(str(root / dist))
    return module


@pytest.mark.parametrize(
    "order", [("flowcond-wavy-a", "flowcond-wavy-b"), ("flowcond-wavy-b", "flowcond-wavy-a")]
)
def test_a_duplicate_kind_fails_only_where_it_is_used_whatever_the_order(
    flowcond_plugins, tmp_path, monkeypatch, order
):
    for dist in order:
        install(tmp_path, monkeypatch, dist)
    flowcond_plugins.reload()
    kinds = flowcond_plugins.condition_kinds()
    assert "wavy" not in kinds and {"ids", "codes"} <= set(kinds)  # unrelated kinds work
    with pytest.raises(PluginError) as info:
        registry.get_condition_kind("wavy")
    text = str(info.value)
    assert text.startswith(
        "condition kind 'wavy' is registered by plugin 'wavy' of distribution flowcond-wavy-"
    )
    assert "choose one by its qualified name flowcond-wavy-a:wavy or flowcond-wavy-b:wavy" in text
    assert (
        "FLOWCOND_LOAD_PLUGINS (distribution or entry-point names, e.g. flowcond-wavy-a, flowcond-wavy-b)"
        in text
    )
    assert "\n" not in text
    for dist in order:
        assert registry.get_condition_kind(f"{dist}:wavy").__doc__ == f"Wavy codes from {dist}."
    # FLOWCOND_LOAD_PLUGINS by distribution name, or by distribution:entry point, keeps one
    for selection in ("flowcond,flowcond-wavy-b", "flowcond, flowcond_wavy_b:wavy"):
        monkeypatch.setenv("FLOWCOND_LOAD_PLUGINS", selection)
        flowcond_plugins.reload()
        assert registry.get_condition_kind("wavy").__doc__ == "Wavy codes from flowcond-wavy-b."
        assert not flowcond_plugins.errors


def test_attach_of_another_kind_works_with_a_duplicate_installed(
    flowcond_plugins, flowcond_cli, tmp_path, monkeypatch
):
    install(tmp_path, monkeypatch, "flowcond-wavy-a")
    install(tmp_path, monkeypatch, "flowcond-wavy-b")
    flowcond_plugins.reload()
    bb = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=1, hidden=8))
    bb.initialize(load_dataset("digits", "train").images[:64])
    bb.freeze().save(
        tmp_path / "bb.safetensors", dataset={"name": "digits", "split": "train"}, test_bits_per_dim=0
    )
    common = ["--backbone", str(tmp_path / "bb.safetensors"), "--steps", "2", "--batch-size", "8", "--quiet"]
    common += ["--cache-dir", str(tmp_path / "cache")]
    ok = flowcond_cli("attach", *common, "--plugin", "ids", "--out", str(tmp_path / "ids.safetensors"))
    assert ok.exit_code == 0, ok.output
    bad = flowcond_cli("attach", *common, "--plugin", "wavy", "--out", str(tmp_path / "w.safetensors"))
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "Error: condition kind 'wavy' is registered by" in bad.stderr
    qualified = flowcond_cli(
        "attach",
        *common,
        "--plugin",
        "flowcond-wavy-a:wavy",
        "--option",
        "wavy.n=3",
        "--out",
        str(tmp_path / "w.safetensors"),
    )
    assert qualified.exit_code == 0, qualified.output  # the heads file: plain name and distribution
    header = safefile.read_header(tmp_path / "w.safetensors", "heads")
    [entry] = header["plugins"]
    assert (entry["name"], entry["distribution"], entry["version"]) == ("wavy", "flowcond-wavy-a", "0.1.0")
    assert entry["options"]["n"] == 3


def test_an_entry_point_and_a_plugins_dir_file_with_the_same_kind(flowcond_plugins, tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "flowcond-wavy-a")
    flowcond_plugins.reload()
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "wavy.py").write_text(textwrap.dedent(WAVY.format(dist="a folder")))
    assert flowcond_plugins.load_plugins_dir(folder) == ["mine/wavy"]
    with pytest.raises(
        PluginError, match=r"mine/wavy:wavy, .*, or leave out what loads .mine/wavy. \(--plugins-dir\)$"
    ):
        registry.get_condition_kind("wavy")
    assert registry.get_condition_kind("mine/wavy:wavy").__doc__ == "Wavy codes from a folder."
    with pytest.raises(
        PluginError, match=r"unknown condition plugin 'nope:wavy'; installed: .*flowcond-wavy-a:wavy"
    ):
        registry.get_condition_kind("nope:wavy")


def test_two_distributions_with_the_same_entry_point_name_are_told_apart(
    flowcond_plugins, tmp_path, monkeypatch
):
    install(tmp_path, monkeypatch, "flowcond-wavy-a", entry="shared")
    install(tmp_path, monkeypatch, "flowcond-wavy-b", entry="shared")
    flowcond_plugins.reload()
    assert {"shared", "flowcond-wavy-a:shared"} <= set(flowcond_plugins.names()) or {
        "shared",
        "flowcond-wavy-b:shared",
    } <= set(flowcond_plugins.names())
    for dist in ("flowcond-wavy-a", "flowcond-wavy-b"):
        assert registry.get_condition_kind(f"{dist}:wavy").__doc__ == f"Wavy codes from {dist}."


def test_a_kind_registered_in_a_test_shadows_the_installed_one(flowcond_register):
    from flowcond_plugins.ids import Ids

    class MyIds(Ids):
        """My own ids, under test."""

    flowcond_register(MyIds)  # shadow=True: the test's kind keeps the plain name
    assert registry.get_condition_kind("ids") is MyIds
    assert registry.get_condition_kind("flowcond:ids") is Ids
    assert registry.get_condition_kind("test-ids:ids") is MyIds


def test_a_dataset_registered_in_a_test(flowcond_register_dataset):
    from flowcond.testing import tiny_image_dataset

    def load_tiny(split, root=None, download=False):
        return tiny_image_dataset(16 if split == "test" else 32)

    flowcond_register_dataset("tiny", load_tiny, "32 random images")
    dataset = load_dataset("tiny", "test")
    assert len(dataset) == 16 and dataset.provider["plugin"] == "test-dataset-tiny"
    flowcond_register_dataset("digits", load_tiny)  # shadows the built-in for this test
    assert len(load_dataset("digits")) == 32 and len(load_dataset("flowcond:digits")) == 1437


def test_the_dataset_registration_is_undone_after_the_test():
    assert "tiny" not in registry.datasets() and len(load_dataset("digits")) == 1437
