"""The ``flowcond`` command group. Commands live in ``cli_*.py`` modules, one topic each."""

from __future__ import annotations

import click

from flowcond import registry
from flowcond.errors import FlowcondError


class _Group(click.Group):
    """Prints flowcond errors as one line (no traceback) and reports broken plugins on stderr."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FlowcondError as e:
            raise click.ClickException(str(e)) from None
        finally:
            for err in registry.load_errors:
                click.echo(f"warning: {err}", err=True)
            registry.load_errors.clear()


def _load_plugins_dir(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> None:
    for folder in value:
        try:
            names = registry.load_plugins_dir(folder)
        except FlowcondError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
        # commands of folder plugins: the group is still parsing, so they can be added now
        registry.call_hook("register_commands", only=names, cli=ctx.command)


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


def _add_commands() -> None:
    from flowcond.cli import backbone, evaluate, evaluator, heads, plugins

    for module in (backbone, plugins, heads, evaluator, evaluate):
        for command in module.COMMANDS:
            cli.add_command(command)
    registry.call_hook("register_commands", cli=cli)


_add_commands()
