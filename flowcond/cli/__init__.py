"""The ``flowcond`` command group. Commands live in one module per command group:

- :mod:`flowcond.cli.backbone`: ``train-backbone``, ``info``
- :mod:`flowcond.cli.importing`: ``import-backbone``
- :mod:`flowcond.cli.attach`: ``attach``
- :mod:`flowcond.cli.generate`: ``sample``, ``interpolate``, ``explore``, ``manipulate``
- :mod:`flowcond.cli.paper`: ``evaluate``, ``train-evaluator``
- :mod:`flowcond.cli.plugins`: ``plugins``
- :mod:`flowcond.cli.datasets`: ``datasets``
- :mod:`flowcond.cli.demo`: ``demo`` (Gradio, the extra ``flowcond[demo]``)

Those modules import only click, pydantic and the torch-free config models; each command imports
what it runs (torch, normflows) inside its function, so ``flowcond --help``, ``flowcond
plugins``, ``flowcond info FILE`` and ``flowcond CMD --help`` never import torch. Option defaults
come from the config models (:mod:`flowcond.cli.options`).

Plugins add commands with the historic hook ``register_commands``: it is called once the group
exists, and for every plugin registered later (``--plugins-dir``, tests). A plugin may add
commands, not replace or remove a built-in one or another plugin's (the registry refuses it, with
a warning); a plugin that fails, exits or hangs while loading is reported and the command runs.
"""

from __future__ import annotations

import click

from flowcond import registry
from flowcond.cli import attach, backbone, datasets, demo, generate, importing, paper, plugins
from flowcond.errors import FlowcondError


class _Group(click.Group):
    """Prints flowcond errors as one line (no traceback) and reports broken plugins, refused
    plugin commands and FLOWCOND_* settings not understood on stderr, one warning a line."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except BaseException:  # --help, --version, a bad option: the warnings still show
            _warn()
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FlowcondError as e:
            raise click.ClickException(str(e)) from None
        finally:
            _warn()


def _warn() -> None:
    for err in registry.load_errors:
        click.echo(f"warning: {err}", err=True)
    registry.load_errors.clear()


def _load_plugins_dir(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    # the group is still parsing: the plugins' commands (historic register_commands) count
    for folder in value:
        try:
            registry.load_plugins_dir(folder)
        except FlowcondError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None


@click.group(cls=_Group)
@click.version_option(package_name="flowcond")
@click.option(
    "--plugins-dir",
    multiple=True,
    type=click.Path(),
    expose_value=False,
    is_eager=True,
    callback=_load_plugins_dir,
    help="Folder of *.py plugin files to load (repeatable).",
)
def cli() -> None:
    """flowcond: make a frozen, pretrained Glow controllable (CAGlow)."""


for _module in (backbone, importing, plugins, datasets, attach, generate, paper, demo):
    for _command in _module.COMMANDS:
        cli.add_command(_command)

registry.call_historic("register_commands", cli=cli)
