"""The PluginRegistry class (state it owns, snapshot/restore, historic hooks) and the CLI built
from the config models (defaults, --lambda, --supervision)."""

from __future__ import annotations

import json

import click
import pytest
from flowcond_plugins.codes import Codes

from flowcond import hookimpl, registry
from flowcond.caglow.config import AttachConfig, Lambdas
from flowcond.errors import PluginError
from flowcond.registry import PluginRegistry
from flowcond.registry.guards import command_owners


class Hello:
    """A plugin adding the command ``hello``."""

    @hookimpl
    def register_commands(self, cli):
        @cli.command()
        def hello():
            """Say hello."""
            click.echo("hello from a plugin")


class Kind:
    @hookimpl
    def register_conditions(self, register):
        register(Codes)


class Data:
    @hookimpl
    def register_datasets(self, register):
        register("base", lambda split, **kw: None, "the images")
        register("base-labelled", lambda split, **kw: None, "the images, more labels", extends="base")


# --------------------------------------------------------------------------- the class
def test_registries_are_independent_and_own_their_state():
    a, b = PluginRegistry(), PluginRegistry()
    a.clear(autoload=False)
    b.clear(autoload=False)
    assert a.loaded and a.names() == [] and a.condition_kinds() == {}
    a.register(Kind(), "kind")
    assert a.names() == ["kind"] and list(a.condition_kinds()) == ["codes"]
    assert b.names() == [] and b.condition_kinds() == {}
    a.unregister("kind")
    assert a.names() == []
    with pytest.raises(PluginError, match="no plugin named 'kind'"):
        a.unregister("kind")


def test_snapshot_and_restore():
    reg = PluginRegistry()
    reg.clear(autoload=False)
    reg.register(Kind(), "kind")
    saved = reg.snapshot()
    reg.register(Data(), "data")
    reg.load_errors.append("something")
    reg.clear(autoload=True)
    assert reg.names() == [] and not reg.loaded
    reg.restore(saved)
    assert reg.names() == ["kind"] and reg.loaded and reg.load_errors == []


def test_reload_loads_the_entry_points_again(monkeypatch):
    reg = PluginRegistry()
    monkeypatch.setenv("FLOWCOND_LOAD_PLUGINS", "codes")
    reg.reload()
    assert reg.names() == ["codes"] and reg.is_builtin(reg.pm.get_plugin("codes"))
    assert reg.distribution_of(reg.pm.get_plugin("codes")) == "flowcond"


def test_dataset_extends_is_registered():
    reg = PluginRegistry()
    reg.clear(autoload=False)
    reg.register(Data(), "data")
    sets = reg.datasets()
    assert sets["base"].extends is None and sets["base-labelled"].extends == "base"
    assert sets["base-labelled"].description == "the images, more labels"


def test_builtin_morpho_dataset_extends_mnist5k(flowcond_plugins):
    assert registry.datasets()["mnist5k-morpho"].extends == "mnist5k"


def test_bad_extends_is_reported():
    class Bad:
        @hookimpl
        def register_datasets(self, register):
            register("x", lambda split, **kw: None, extends=3)

    reg = PluginRegistry()
    reg.clear(autoload=False)
    reg.register(Bad(), "bad")
    assert reg.datasets() == {}
    assert "dataset 'x': extends must be a dataset name" in str(reg.load_errors[0])


# --------------------------------------------------------------------------- historic hooks
def test_register_commands_is_historic():
    reg = PluginRegistry()
    reg.clear(autoload=False)
    group = click.Group("g")
    reg.call_historic("register_commands", cli=group)
    assert group.commands == {}
    reg.register(Hello(), "hello")  # registered after the call: gets it too
    assert list(group.commands) == ["hello"]
    later = click.Group("later")
    reg.call_historic("register_commands", cli=later)
    assert list(later.commands) == ["hello"]
    with pytest.raises(PluginError, match="register_conditions is not a historic hook"):
        reg.call_historic("register_conditions", register=print)


def test_a_plugin_registered_after_the_cli_exists_adds_its_command(flowcond_plugins, flowcond_cli):
    from flowcond.cli import cli

    assert "hello" not in cli.commands
    flowcond_plugins.register(Hello(), "hello-plugin")
    assert "hello" in cli.commands and command_owners(cli)["hello"] == "hello-plugin"
    result = flowcond_cli("hello")
    assert result.exit_code == 0 and result.stdout == "hello from a plugin\n"


def test_sandbox_removes_commands_added_during_the_test(flowcond_plugins):
    from flowcond.cli import cli

    assert "hello" not in cli.commands  # the previous test's command is gone
    assert "hello" not in command_owners(cli)  # and whose it was


def test_a_raising_historic_hook_is_recorded_not_fatal():
    class Raising:
        @hookimpl
        def register_commands(self, cli):
            raise RuntimeError("no")

        @hookimpl
        def register_conditions(self, register):
            register(Codes)

    reg = PluginRegistry()
    reg.clear(autoload=False)
    reg.call_historic("register_commands", cli=click.Group("g"))
    reg.register(Raising(), "raising")
    assert [str(e) for e in reg.load_errors] == [
        "plugin 'raising' failed: register_commands raised RuntimeError: no"
    ]
    assert list(reg.condition_kinds()) == ["codes"]  # its other hooks still work


# --------------------------------------------------------------------------- CLI options from models
def _help(flowcond_cli, command: str) -> str:
    result = flowcond_cli(command, "--help")
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())


def test_lambda_help_lists_every_loss_weight(flowcond_cli):
    text = _help(flowcond_cli, "attach")
    for name, field in Lambdas.model_fields.items():
        if name == "kinds":  # the per-kind weights, C.KIND=W / De.KIND=W
            continue
        assert f"{name} ({field.description}, default {field.default:g})" in text, name
    assert "MM (" in text
    assert "C.KIND or De.KIND weighs one condition" in text


def test_option_defaults_come_from_the_models(flowcond_cli):
    from flowcond.flow.config import BackboneConfig, TrainConfig
    from flowcond.paper.config import EvaluateConfig, EvaluatorTrainConfig

    checks = {
        "attach": (AttachConfig, ["steps", "batch_size", "lr", "encoder", "threads", "seed"]),
        "train-backbone": (TrainConfig, ["dataset", "epochs", "batch_size", "lr", "warmup", "clip"]),
        "evaluate": (EvaluateConfig, ["out", "attach_steps", "codes", "temperature", "alpha"]),
        "train-evaluator": (EvaluatorTrainConfig, ["epochs", "batch_size", "lr", "shift"]),
    }
    from flowcond.cli import cli

    for command, (model, fields) in checks.items():
        params = {p.name: p for p in cli.commands[command].params}
        for name in fields:
            assert params[name].default == model.model_fields[name].default, (command, name)
    params = {p.name: p for p in cli.commands["train-backbone"].params}
    for name in ("levels", "steps", "hidden", "n_bits", "coupling", "scale_map", "scale_clamp", "lu"):
        assert params[name].default == BackboneConfig.model_fields[name].default, name
    assert "[default: 3000]" in _help(flowcond_cli, "attach")


@pytest.mark.parametrize(
    ("args", "encoder", "supervision"),
    [
        ([], "auto", "auto"),
        (["--encoder", "conv"], "conv", "conv"),  # --supervision defaults to the value of --encoder
        (["--encoder", "conv", "--supervision", "mlp"], "conv", "mlp"),
        (["--supervision", "conv"], "auto", "conv"),
    ],
)
def test_supervision_option(flowcond_cli, monkeypatch, args, encoder, supervision):
    import flowcond.caglow.attach as attach_module

    seen = {}

    def fake_attach(backbone, config, out, resume=False, progress=True, device=None):
        seen["config"] = config
        return None, {"total_seconds": 0.0, "encode_seconds": 0.0, "metrics": {"acc": 1}}

    monkeypatch.setattr(attach_module, "attach", fake_attach)
    result = flowcond_cli(
        "attach", "--backbone", "b.safetensors", "--plugin", "codes", "--out", "h.safetensors", *args
    )
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.encoder, config.supervision) == (encoder, supervision)
    assert json.loads(result.stdout.splitlines()[1].split(": ", 1)[1]) == 1


def test_invalid_options_are_one_line(flowcond_cli):
    result = flowcond_cli("attach", "--backbone", "b", "--plugin", "codes", "--out", "h", "--lambda", "MM=-1")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: invalid attach configuration: MM: Input should be greater than or equal to 0"
    ]
