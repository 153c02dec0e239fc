"""``flowcond plugins``: list installed plugins and what they register."""

from __future__ import annotations

import json

import click

from flowcond import registry


@click.command("plugins")
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins (from flowcond itself).")
def plugins_command(show_all: bool) -> None:
    """List installed plugins as JSON: version, hooks, condition kinds and datasets they register.

    Plugins that failed to load are reported on stderr.
    """
    click.echo(json.dumps(registry.describe_plugins(include_builtins=show_all), indent=2))


COMMANDS: list = [plugins_command]
