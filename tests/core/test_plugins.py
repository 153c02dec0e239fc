"""Plugin discovery and control, the `flowcond plugins` command, the test kit, the docs."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import textwrap
import uuid
from pathlib import Path

import click
import pytest
import torch
from flowcond_plugins.codes import Codes

import flowcond
from flowcond import hookimpl, registry
from flowcond.conditions import ConditionKind
from flowcond.datasets import load_dataset
from flowcond.errors import PluginError
from flowcond.testing import PluginSandbox, make_distribution

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_KINDS = {"ids", "attributes", "codes", "continuous"}

KIND_SOURCE = """
from flowcond import hookimpl
from flowcond_plugins.codes import Codes

class {cls}(Codes):
    "A test kind."
    name = {name!r}

@hookimpl
def register_conditions(register):
    register({cls})
"""


def fake_dist(tmp_path, monkeypatch, source: str, dist: str = "flowcond-fake", entry: str = "fake") -> str:
    """'Install' a distribution whose entry point ``entry`` is a module with ``source``."""
    module = f"fake_{uuid.uuid4().hex[:8]}"
    make_distribution(tmp_path, dist, {entry: module}, {f"{module}.py": textwrap.dedent(source)})
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


# --------------------------------------------------------------------------- discovery
def test_builtins_are_ordinary_entry_point_plugins(flowcond_plugins):
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="flowcond")}
    for name in ("ids", "attributes", "codes", "datasets"):
        assert eps[name].value == f"flowcond_plugins.{name}"
        plugin = flowcond_plugins.pm.get_plugin(name)
        assert plugin is not None and registry.is_builtin(plugin)
        assert registry.distribution_of(plugin) == "flowcond"
    kinds = flowcond_plugins.condition_kinds()
    assert BUILTIN_KINDS <= set(kinds)
    assert kinds["ids"].plugin == "ids" and kinds["ids"].obj.name == "ids"
    assert "mnist5k" in flowcond_plugins.datasets()
    assert flowcond.hookimpl is hookimpl


def test_unknown_condition_kind_lists_installed(flowcond_plugins):
    with pytest.raises(PluginError, match=r"unknown condition plugin 'nope'; installed: .*attributes, codes"):
        registry.get_condition_kind("nope")


def test_import_error_is_reported_and_others_keep_working(
    flowcond_plugins, flowcond_cli, tmp_path, monkeypatch
):
    fake_dist(tmp_path, monkeypatch, "import no_such_module_xyz\n", dist="flowcond-broken", entry="broken")
    flowcond_plugins.reload()
    [err] = [e for e in flowcond_plugins.errors if e.plugin == "broken"]
    assert err.distribution == "flowcond-broken" and "No module named 'no_such_module_xyz'" in err.error
    assert BUILTIN_KINDS <= set(flowcond_plugins.condition_kinds())
    result = flowcond_cli("plugins", "--all")
    assert result.exit_code == 0, result.output
    assert {p["name"] for p in json.loads(result.stdout)} >= BUILTIN_KINDS
    assert "warning: plugin 'broken' (from flowcond-broken) failed: ModuleNotFoundError" in result.stderr


def test_hook_raising_is_reported_and_others_keep_working(
    flowcond_plugins, flowcond_cli, tmp_path, monkeypatch
):
    source = """
        from flowcond import hookimpl
        from flowcond_plugins.codes import Codes

        class Half(Codes):
            name = "half"

        @hookimpl
        def register_conditions(register):
            register(Half)
            raise RuntimeError("boom")

        @hookimpl
        def register_commands(cli):
            raise ValueError("no commands today")
    """
    fake_dist(tmp_path, monkeypatch, source, dist="flowcond-raising", entry="raising")
    flowcond_plugins.reload()  # the historic register_commands reaches it: must survive it raising
    kinds = flowcond_plugins.condition_kinds()
    assert "half" not in kinds, "a raising hook's partial registrations are dropped"
    assert BUILTIN_KINDS <= set(kinds)
    messages = [str(e) for e in flowcond_plugins.errors]
    assert (
        "plugin 'raising' (from flowcond-raising) failed: "
        "register_conditions raised RuntimeError: boom" in messages
    )
    assert any("register_commands raised ValueError: no commands today" in m for m in messages)
    result = flowcond_cli("plugins")
    assert result.exit_code == 0 and "register_conditions raised RuntimeError: boom" in result.stderr
    [listed] = [p for p in json.loads(result.stdout) if p["name"] == "raising"]
    assert listed["hooks"] == ["register_commands", "register_conditions"] and listed["conditions"] == []


def test_strict_mode_reraises(flowcond_plugins, tmp_path, monkeypatch):
    fake_dist(tmp_path, monkeypatch, "raise ImportError('broken on purpose')\n", entry="broken")
    monkeypatch.setenv("FLOWCOND_STRICT_PLUGINS", "1")
    with pytest.raises(ImportError, match="broken on purpose"):
        flowcond_plugins.reload()


def test_strict_mode_reraises_hook_errors(flowcond_plugins, monkeypatch):
    class Raising:
        @hookimpl
        def register_conditions(self, register):
            raise RuntimeError("hook failed")

    flowcond_plugins.register(Raising(), "raising")
    assert "codes" in flowcond_plugins.condition_kinds()
    monkeypatch.setenv("FLOWCOND_STRICT_PLUGINS", "1")
    with pytest.raises(RuntimeError, match="hook failed"):
        flowcond_plugins.condition_kinds()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ids,codes", {"ids", "codes"}),
        (" ids ", {"ids"}),
        ("", set()),
        ("flowcond", {"ids", "attributes", "codes", "continuous", "datasets", "morpho"}),
    ],
)
def test_load_plugins_env_limits_what_loads(flowcond_plugins, monkeypatch, value, expected):
    monkeypatch.setenv("FLOWCOND_LOAD_PLUGINS", value)
    flowcond_plugins.reload()
    assert set(flowcond_plugins.names()) == expected
    assert set(flowcond_plugins.condition_kinds()) == expected & BUILTIN_KINDS


def test_duplicate_condition_names_name_both_plugins(flowcond_plugins, flowcond_register, flowcond_cli):
    class OtherIds(Codes):
        name = "ids"

    flowcond_register(OtherIds, name="my-ids", shadow=False)
    assert "ids" not in flowcond_plugins.condition_kinds() and "codes" in flowcond_plugins.condition_kinds()
    with pytest.raises(
        PluginError,
        match=r"condition kind 'ids' is registered by plugin 'ids' of distribution flowcond .* and "
        r"plugin 'my-ids'; choose one by its qualified name flowcond:ids or my-ids:ids",
    ):
        registry.get_condition_kind("ids")
    assert registry.get_condition_kind("my-ids:ids") is OtherIds
    assert registry.get_condition_kind("flowcond:ids").__module__ == "flowcond_plugins.ids"
    result = flowcond_cli("plugins")  # still lists, so the user can find the culprit
    assert result.exit_code == 0 and "my-ids" in result.stdout


def test_duplicate_dataset_names(flowcond_plugins):
    class Dup:
        @hookimpl
        def register_datasets(self, register):
            register("mnist5k", lambda **kw: None)

    flowcond_plugins.register(Dup(), "dup")
    with pytest.raises(
        PluginError,
        match=r"dataset 'mnist5k' is registered by plugin 'datasets' of distribution flowcond .* "
        r"and plugin 'dup'; choose one by its qualified name dup:mnist5k or flowcond:mnist5k",
    ):
        load_dataset("mnist5k")
    assert load_dataset("flowcond:mnist5k", "test").provider["distribution"] == "flowcond"


def test_invalid_registrations_are_reported(flowcond_plugins):
    class Abstract(ConditionKind):
        name = "abstract"

    class NoName(Codes):
        name = None

    class Bad:
        def __init__(self, what):
            self.what = what

        @hookimpl
        def register_conditions(self, register):
            register(self.what)

    for i, what in enumerate((Abstract, NoName, "codes")):
        flowcond_plugins.register(Bad(what), f"bad{i}")
    assert BUILTIN_KINDS <= set(flowcond_plugins.condition_kinds())
    errors = "\n".join(str(e) for e in flowcond_plugins.errors)
    assert "plugin 'bad0'" in errors and "'abstract' does not implement from_dataset" in errors
    assert "plugin 'bad1'" in errors and "needs a class attribute `name`" in errors
    assert "plugin 'bad2'" in errors and "registered 'codes', not a ConditionKind subclass" in errors


def test_typo_in_hook_name_and_missing_decorator(flowcond_plugins):
    class Typo:
        @hookimpl
        def register_condition(self, register):
            pass

    class Undecorated:
        def register_conditions(self, register):
            pass

    with pytest.raises(
        PluginError,
        match=r"unknown hook\(s\) register_condition; flowcond's hooks are register_commands",
    ):
        flowcond_plugins.register(Typo(), "typo")
    with pytest.raises(PluginError, match=r"register_conditions is not decorated with @flowcond.hookimpl"):
        flowcond_plugins.register(Undecorated(), "undecorated")
    assert "typo" not in flowcond_plugins.names()


def test_register_hooks_datasets_and_commands(flowcond_plugins, flowcond_cli, tiny_dataset):
    class Mine:
        @hookimpl
        def register_datasets(self, register):
            register("tiny", lambda split, root=None, download=False: tiny_dataset, "32 random images")

        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def hello():
                """Say hello."""
                click.echo("hello from a plugin")

    flowcond_plugins.register(Mine(), "mine")  # its command is added: register_commands is historic
    assert load_dataset("tiny", "train") is tiny_dataset
    result = flowcond_cli("hello")
    assert result.exit_code == 0 and result.stdout == "hello from a plugin\n"
    [listed] = [p for p in json.loads(flowcond_cli("plugins").stdout) if p["name"] == "mine"]
    assert listed["datasets"] == ["tiny"] and listed["hooks"] == [
        "register_commands",
        "register_datasets",
    ]


# --------------------------------------------------------------------------- plugins command
def test_plugins_command_lists_builtins_only_with_all(flowcond_cli):
    default = json.loads(flowcond_cli("plugins").stdout)
    assert not any(p["distribution"] == "flowcond" for p in default)
    result = flowcond_cli("plugins", "--all")
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["ids"] == {
        "name": "ids",
        "distribution": "flowcond",
        "version": flowcond.__version__,
        "module": "flowcond_plugins.ids",
        "hooks": ["register_conditions"],
        "conditions": ["ids"],
        "datasets": [],
    }
    assert listed["attributes"]["conditions"] == ["attributes"]
    assert listed["codes"]["conditions"] == ["codes"]
    assert "mnist5k" in listed["datasets"]["datasets"] and listed["datasets"]["conditions"] == []


class _Codes2:
    """A second plugin registering the condition kind name ``codes``."""

    @hookimpl
    def register_conditions(self, register):
        register(Codes)


def test_plugins_command_lists_an_ambiguous_name_by_the_name_a_command_takes(flowcond_plugins, flowcond_cli):
    flowcond_plugins.register(_Codes2(), "codes-again", shadow=False)
    listed = {p["name"]: p for p in json.loads(flowcond_cli("plugins", "--all").stdout)}
    # neither provider keeps "codes": each is listed by its qualified name, which commands accept
    assert listed["codes"]["conditions"] == ["flowcond:codes"]
    assert listed["codes-again"]["conditions"] == ["codes-again:codes"]
    assert registry.find_condition_kind("codes-again:codes").plugin == "codes-again"
    assert listed["ids"]["conditions"] == ["ids"]  # unambiguous names stay plain


def test_plugins_dir(flowcond_plugins, flowcond_cli, tmp_path):
    folder = tmp_path / "myplugins"
    folder.mkdir()
    (folder / "wavy.py").write_text(
        KIND_SOURCE.format(cls="Wavy", name="wavy")
        + textwrap.dedent("""
        __version__ = "1.2"

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def wave():
                print("~~~")
    """)
    )
    (folder / "broken.py").write_text("raise RuntimeError('broken local plugin')\n")
    (folder / "notes.txt").write_text("not a plugin")
    result = flowcond_cli("--plugins-dir", str(folder), "plugins")
    assert result.exit_code == 0, result.output
    [listed] = [p for p in json.loads(result.stdout) if p["distribution"] is None]
    assert (
        listed["name"] == "myplugins/wavy" and listed["version"] == "1.2" and listed["distribution"] is None
    )
    assert listed["conditions"] == ["wavy"] and listed["path"] == str(folder / "wavy.py")
    assert "plugin 'myplugins/broken' failed: RuntimeError: broken local plugin" in result.stderr
    assert "wavy" in flowcond_plugins.condition_kinds()
    again = flowcond_cli("--plugins-dir", str(folder), "wave")  # loading twice is harmless
    assert again.exit_code == 0 and again.stdout == "~~~\n"
    assert flowcond_plugins.names().count("myplugins/wavy") == 1


def test_plugins_dir_errors(flowcond_plugins, flowcond_cli, tmp_path, monkeypatch):
    result = flowcond_cli("--plugins-dir", str(tmp_path / "missing"), "plugins")
    assert result.exit_code == 2 and "not a directory" in result.stderr
    (tmp_path / "bad.py").write_text("import nope_nope\n")
    monkeypatch.setenv("FLOWCOND_STRICT_PLUGINS", "1")
    with pytest.raises(ModuleNotFoundError):
        registry.load_plugins_dir(tmp_path)


def test_same_file_name_in_two_folders(flowcond_plugins, tmp_path):
    for sub, kind in (("a", "alpha"), ("b", "beta")):
        (tmp_path / sub / "plugins").mkdir(parents=True)
        (tmp_path / sub / "plugins" / "p.py").write_text(KIND_SOURCE.format(cls="K", name=kind))
    first = registry.load_plugins_dir(tmp_path / "a" / "plugins")
    second = registry.load_plugins_dir(tmp_path / "b" / "plugins")
    assert first == ["plugins/p"] and second == [str((tmp_path / "b" / "plugins" / "p.py").resolve())]
    assert {"alpha", "beta"} <= set(flowcond_plugins.condition_kinds())


# --------------------------------------------------------------------------- test kit
def test_sandbox_restores_state():
    before = registry.pm.list_name_plugin()
    sandbox = PluginSandbox(autoload=False)
    assert sandbox.names() == [] and sandbox.condition_kinds() == {}
    sandbox.register(Codes, name="temp")
    assert set(sandbox.condition_kinds()) == {"codes"}
    sandbox.close()
    assert registry.pm.list_name_plugin() == before


def test_no_plugins_fixture(flowcond_no_plugins, flowcond_register):
    assert flowcond_no_plugins.datasets() == {}
    flowcond_register(Codes)
    assert list(flowcond_no_plugins.condition_kinds()) == ["codes"]


def test_tiny_backbone_fixture(tiny_backbone, tiny_dataset):
    x = tiny_dataset.images[:4]
    z = tiny_backbone.encode(x)
    assert z.shape == (4, 64) and not any(p.requires_grad for p in tiny_backbone.parameters())
    assert torch.allclose(tiny_backbone.decode(z), tiny_backbone.quantize(x) / 255, atol=1e-2)


# --------------------------------------------------------------------------- third-party example
def test_example_parity_plugin_is_discovered_and_usable(flowcond_plugins):
    if "parity" not in {ep.name for ep in importlib.metadata.entry_points(group="flowcond")}:
        pytest.skip("example plugin not installed: pip install -e examples/plugins/flowcond-parity")
    plugin = flowcond_plugins.pm.get_plugin("parity")
    assert registry.distribution_of(plugin) == "flowcond-parity" and not registry.is_builtin(plugin)
    kind = registry.get_condition_kind("parity").from_dataset({}, load_dataset("mnist5k", "test"))
    assert kind.supervised and kind.state()["field"] == "digit"
    assert kind.targets({"digit": torch.tensor([3, 4])}).tolist() == [[1.0], [0.0]]
    assert kind.loss(torch.zeros(2, kind.head_dim), kind.parse("odd").expand(2, 1)).item() > 0


# --------------------------------------------------------------------------- docs
def _hook_names_from_source() -> list[str]:
    tree = ast.parse((ROOT / "flowcond" / "hookspecs.py").read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d).split("(")[0] == "hookspec" for d in node.decorator_list)
    ]


def test_every_hook_is_documented_and_tested():
    hooks = _hook_names_from_source()
    assert hooks == registry.hook_names() or sorted(hooks) == registry.hook_names()
    doc = (ROOT / "docs" / "writing-plugins.md").read_text()
    headings = [line for line in doc.splitlines() if line.startswith("#")]
    tests = [p for p in (ROOT / "tests").rglob("test_*.py")] + list(
        ROOT.glob("examples/plugins/*/tests/test_*.py")
    )
    test_text = "\n".join(p.read_text() for p in tests)
    for hook in hooks:
        assert any(re.search(rf"\b{hook}\b", h) for h in headings), (
            f"hook {hook} has no heading in writing-plugins.md"
        )
        assert re.search(rf"def {hook}\(", test_text), f"no test implements hook {hook}"


def test_condition_interface_is_documented():
    doc = (ROOT / "docs" / "writing-plugins.md").read_text()
    public = [n for n in vars(ConditionKind) if not n.startswith("_")] + ["Options", "name"]
    missing = [n for n in public if f"`{n}" not in doc]
    assert not missing, f"ConditionKind members not in docs/writing-plugins.md: {missing}"
