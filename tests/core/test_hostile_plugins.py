"""Plugins of uneven quality: one that exits, hangs, or takes a command that is not its own is
reported in one warning line and the command still runs; the FLOWCOND_* switches do what
docs/writing-plugins.md says (issue 10, "Plugins")."""

from __future__ import annotations

import json
import signal
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from flowcond import registry
from flowcond.errors import PluginError
from flowcond.registry import guards
from flowcond.testing import make_distribution

ROOT = Path(__file__).resolve().parents[2]
needs_alarm = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no SIGALRM here")

COMMANDS = """
import click
from flowcond import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command({name!r})
    def command():
        click.echo({says!r})
"""


def folder(tmp_path: Path, files: dict[str, str], name: str = "local") -> str:
    """A --plugins-dir folder with ``files`` ({"x.py": source})."""
    path = tmp_path / name
    path.mkdir()
    for file, source in files.items():
        (path / file).write_text(textwrap.dedent(source))
    return str(path)


def installed(tmp_path: Path, monkeypatch, source: str, entry: str, dist: str = "flowcond-hostile") -> None:
    """'Install' a distribution whose entry point ``entry`` is a module with ``source``."""
    module = f"hostile_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "site"
    make_distribution(root, dist, {entry: module}, {f"{module}.py": textwrap.dedent(source)})
    monkeypatch.syspath_prepend(str(root))


def warnings(result) -> list[str]:
    """The warning lines of a CLI run; there is no traceback."""
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


# --------------------------------------------------------------------------- 1. exits
def test_plugins_dir_plugin_exiting_on_import_is_reported(flowcond_cli, tmp_path):
    plugins = folder(tmp_path, {"quits.py": "import sys\nsys.exit(3)\n"})
    result = flowcond_cli("--plugins-dir", plugins, "plugins", "--all")
    assert result.exit_code == 0, result.output
    assert "ids" in {p["name"] for p in json.loads(result.stdout)}
    [line] = warnings(result)
    assert line == "warning: plugin 'local/quits' failed: SystemExit: 3"  # named as when it loads


def test_the_command_exits_with_its_own_code(flowcond_cli, tmp_path):
    plugins = folder(tmp_path, {"quits.py": "raise SystemExit(3)\n"})
    result = flowcond_cli("--plugins-dir", plugins, "info", str(tmp_path / "missing.safetensors"))
    assert result.exit_code == 1 and "no such file" in result.stderr
    assert len(warnings(result)) == 1


def test_installed_plugin_exiting_on_import_is_reported(flowcond_plugins, tmp_path, monkeypatch):
    installed(tmp_path, monkeypatch, "import sys\nsys.exit('bye')\n", entry="quits")
    flowcond_plugins.reload()
    assert [str(e) for e in flowcond_plugins.errors] == [
        "plugin 'quits' (from flowcond-hostile) failed: SystemExit: bye"
    ]
    assert {"ids", "codes"} <= set(flowcond_plugins.condition_kinds())


def test_hooks_exiting_or_raising_base_exceptions_are_reported(flowcond_cli, tmp_path):
    source = """
        import sys
        from flowcond import hookimpl

        class Odd(BaseException):
            pass

        @hookimpl
        def register_conditions(register):
            sys.exit(4)

        @hookimpl
        def register_commands(cli):
            raise Odd("not an Exception")
    """
    result = flowcond_cli("--plugins-dir", folder(tmp_path, {"exits.py": source}), "plugins")
    assert result.exit_code == 0, result.output
    commands, conditions = sorted(warnings(result))
    assert commands.startswith("warning: plugin 'local/exits' failed: register_commands raised ")
    assert commands.endswith("Odd: not an Exception")
    assert conditions == "warning: plugin 'local/exits' failed: register_conditions raised SystemExit: 4"


def test_keyboard_interrupt_still_stops_loading(flowcond_plugins, tmp_path):
    plugins = folder(tmp_path, {"interrupted.py": "raise KeyboardInterrupt\n"})
    with pytest.raises(KeyboardInterrupt):
        flowcond_plugins.load_plugins_dir(plugins)


def test_strict_mode_turns_an_exit_into_a_plugin_error(flowcond_plugins, tmp_path, monkeypatch):
    plugins = folder(tmp_path, {"quits.py": "raise SystemExit(3)\n"})
    monkeypatch.setenv("FLOWCOND_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"plugin 'local/quits' failed: SystemExit: 3"):
        flowcond_plugins.load_plugins_dir(plugins)


# --------------------------------------------------------------------------- 2. command names
def test_a_plugin_cannot_replace_a_builtin_command(flowcond_cli, tmp_path):
    # one register_commands hook adding two commands, one of them named like a built-in
    source = COMMANDS.format(name="sample", says="hijacked") + COMMANDS.split("(cli):")[1].format(
        name="mine", says="mine"
    )
    plugins = folder(tmp_path, {"evil.py": source})
    result = flowcond_cli("--plugins-dir", plugins, "sample", "--help")
    assert result.exit_code == 0 and "Generate images" in result.stdout and "hijacked" not in result.output
    assert warnings(result) == [
        "warning: plugin 'local/evil': register_commands tried to replace the built-in command "
        "'sample': refused, 'sample' is unchanged"
    ]
    assert flowcond_cli("mine").stdout == "mine\n"  # its other command is added


def test_a_plugin_cannot_replace_another_plugins_command(flowcond_cli, tmp_path):
    plugins = folder(
        tmp_path,
        {
            "a_first.py": COMMANDS.format(name="hi", says="first"),
            "b_second.py": COMMANDS.format(name="hi", says="second"),
        },
    )
    result = flowcond_cli("--plugins-dir", plugins, "hi")
    assert result.exit_code == 0 and result.stdout == "first\n"
    assert warnings(result) == [
        "warning: plugin 'local/b_second': register_commands tried to replace the command 'hi' of "
        "plugin 'local/a_first': refused, 'hi' is unchanged"
    ]


def test_a_plugin_cannot_remove_a_command_or_replace_one_on_import(flowcond_cli, tmp_path):
    source = """
        from flowcond import hookimpl
        from flowcond.cli import cli

        cli.commands["info"] = cli.commands["plugins"]  # at import time

        @hookimpl
        def register_commands(cli):
            del cli.commands["attach"]
    """
    result = flowcond_cli("--plugins-dir", folder(tmp_path, {"remover.py": source}), "attach", "--help")
    assert result.exit_code == 0 and "--backbone" in result.stdout
    assert warnings(result) == [
        "warning: plugin 'local/remover': its import tried to replace the built-in command 'info': "
        "refused, 'info' is unchanged",
        "warning: plugin 'local/remover': register_commands tried to remove the built-in command "
        "'attach': refused, 'attach' is unchanged",
    ]
    from flowcond.cli import cli

    assert cli.commands["info"].name == "info" and cli.commands["attach"].name == "attach"


def test_a_plugin_reloaded_keeps_its_own_command(flowcond_plugins, flowcond_cli, tmp_path, monkeypatch):
    installed(tmp_path, monkeypatch, COMMANDS.format(name="hello-again", says="hi"), entry="greeter")
    flowcond_plugins.reload()
    flowcond_plugins.reload()  # register_commands runs again: its own command may be replaced
    assert flowcond_plugins.errors == []
    assert flowcond_cli("hello-again").stdout == "hi\n"


def test_strict_mode_raises_on_a_refused_command(flowcond_plugins, tmp_path, monkeypatch):
    plugins = folder(tmp_path, {"evil.py": COMMANDS.format(name="attach", says="hijacked")})
    monkeypatch.setenv("FLOWCOND_STRICT_PLUGINS", "yes")
    with pytest.raises(PluginError, match="tried to replace the built-in command 'attach'"):
        flowcond_plugins.load_plugins_dir(plugins)
    from flowcond.cli import cli

    assert cli.commands["attach"].callback.__module__ == "flowcond.cli.attach"


# --------------------------------------------------------------------------- 3. hangs
SPIN = """
while True:  # catching Exception does not stop the time limit
    try:
        pass
    except Exception:
        pass
"""


@needs_alarm
def test_a_plugin_import_that_loops_forever_is_cut_short(flowcond_cli, tmp_path):
    before = signal.getsignal(signal.SIGALRM)
    plugins = folder(tmp_path, {"spin.py": SPIN})
    start = time.monotonic()
    result = flowcond_cli("--plugins-dir", plugins, "plugins", env={"FLOWCOND_PLUGIN_TIMEOUT": "0.3"})
    assert time.monotonic() - start < 10
    assert result.exit_code == 0, result.output
    assert warnings(result) == [
        "warning: plugin 'local/spin' failed: did not finish importing within 0.3 s (FLOWCOND_PLUGIN_TIMEOUT)"
    ]
    assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@needs_alarm
def test_an_installed_plugin_or_a_hook_that_hangs_is_cut_short(flowcond_plugins, tmp_path, monkeypatch):
    installed(tmp_path, monkeypatch, "import time\ntime.sleep(60)\n", entry="sleeper")
    monkeypatch.setenv("FLOWCOND_PLUGIN_TIMEOUT", "0.2")
    flowcond_plugins.reload()
    hook = "from flowcond import hookimpl\n\n@hookimpl\ndef register_datasets(register):\n" + textwrap.indent(
        SPIN, "    "
    )
    flowcond_plugins.load_plugins_dir(folder(tmp_path, {"spinning_hook.py": hook}))
    assert "mnist5k" in flowcond_plugins.datasets()
    assert [str(e) for e in flowcond_plugins.errors] == [
        "plugin 'sleeper' (from flowcond-hostile) failed: did not finish importing within 0.2 s "
        "(FLOWCOND_PLUGIN_TIMEOUT)",
        "plugin 'local/spinning_hook' failed: did not finish register_datasets within 0.2 s "
        "(FLOWCOND_PLUGIN_TIMEOUT)",
    ]


@needs_alarm
def test_the_time_limit_leaves_other_threads_and_timers_alone():
    seen = []

    def in_thread():
        with guards.time_limit(0.05, "importing"):
            time.sleep(0.15)
        seen.append("done")

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == ["done"]  # no limit outside the main thread (no signal there)
    previous = signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100)
        with guards.time_limit(0.05, "importing"):
            time.sleep(0.15)  # someone else's timer runs: left alone, no limit of ours
        assert 99 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    ("value", "seconds", "warned"),
    [
        ("", 30.0, False),
        ("0.5", 0.5, False),
        ("0", 0.0, False),
        ("abc", 30.0, True),
        ("-1", 30.0, True),
        ("inf", 30.0, True),
    ],
)
def test_plugin_timeout_setting(monkeypatch, value, seconds, warned):
    monkeypatch.setenv("FLOWCOND_PLUGIN_TIMEOUT", value)
    got, warning = guards.plugin_timeout()
    assert got == seconds and (warning is not None) == warned
    if warned:
        assert warning.startswith(f"FLOWCOND_PLUGIN_TIMEOUT={value!r} is not a number of seconds")


# --------------------------------------------------------------------------- 4. switches
@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), ("TRUE", True), (" yes ", True), ("On", True)]
    + [("0", False), ("false", False), ("no", False), ("OFF", False), ("", False)],
)
def test_strict_switch_values(monkeypatch, value, on):
    monkeypatch.setenv("FLOWCOND_STRICT_PLUGINS", value)
    assert registry.strict() is on and guards.strict()[1] is None


@pytest.mark.parametrize("value", ["maybe", "2", "y"])
def test_strict_switch_not_understood_is_one_warning_and_off(flowcond_cli, tmp_path, value):
    plugins = folder(tmp_path, {"broken.py": "raise RuntimeError('x')\n"})
    result = flowcond_cli("--plugins-dir", plugins, "plugins", env={"FLOWCOND_STRICT_PLUGINS": value})
    assert result.exit_code == 0, result.output  # strict mode off: the broken plugin is a warning
    lines = warnings(result)
    assert len(lines) == 2 and "failed: RuntimeError: x" in lines[1]
    assert lines[0] == (
        f"warning: FLOWCOND_STRICT_PLUGINS={value!r} is not understood: use 1, true, yes or on to turn "
        "strict mode on, 0, false, no, off or empty to leave it off; strict mode stays off"
    )


def test_strict_no_means_off(flowcond_cli, tmp_path):
    plugins = folder(tmp_path, {"broken.py": "raise RuntimeError('x')\n"})
    result = flowcond_cli("--plugins-dir", plugins, "plugins", env={"FLOWCOND_STRICT_PLUGINS": "no"})
    assert result.exit_code == 0 and len(warnings(result)) == 1


def test_unknown_name_in_load_plugins_warns_and_lists_the_installed(
    flowcond_plugins, flowcond_cli, monkeypatch
):
    monkeypatch.setenv("FLOWCOND_LOAD_PLUGINS", "ids,parrity")
    flowcond_plugins.reload()
    assert flowcond_plugins.names() == ["ids"]  # the names it knows still load
    result = flowcond_cli("plugins", "--all")
    [line] = warnings(result)
    assert line.startswith(
        "warning: FLOWCOND_LOAD_PLUGINS names 'parrity': no installed plugin or distribution is called "
        "that; installed plugins: attributes, codes, continuous, datasets, ids, morpho"
    )
    assert "(distributions: flowcond" in line


def test_empty_load_plugins_loads_no_installed_plugin_but_plugins_dir_still_loads(
    flowcond_plugins, flowcond_cli, tmp_path, monkeypatch
):
    monkeypatch.setenv("FLOWCOND_LOAD_PLUGINS", "")
    flowcond_plugins.reload()
    assert flowcond_plugins.names() == [] and flowcond_plugins.errors == []
    plugins = folder(tmp_path, {"mine.py": COMMANDS.format(name="mine", says="mine")})
    result = flowcond_cli("--plugins-dir", plugins, "plugins", "--all")
    assert result.exit_code == 0 and warnings(result) == []
    assert [p["name"] for p in json.loads(result.stdout)] == ["local/mine"]
    doc = " ".join((ROOT / "docs" / "writing-plugins.md").read_text().split())
    assert "an empty value (or only commas and spaces) loads no installed plugin at all" in doc
    assert (
        "`--plugins-dir` folders are asked for on the command line, so their files load whatever it says"
        in doc
    )
