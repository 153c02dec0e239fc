"""The hooks a flowcond plugin can implement. Each is documented in docs/writing-plugins.md."""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("flowcond")
hookimpl = HookimplMarker("flowcond")


@hookspec
def register_conditions(register):
    """Register condition kinds: ``register(ConditionKindSubclass)``.

    Each kind gives an encoder input and a supervision head (see ``flowcond.conditions``).
    """


@hookspec
def register_datasets(register):
    """Register dataset loaders: ``register(name, loader, description="", extends=None)``.

    ``loader(split, root=None, download=False, **options) -> flowcond.datasets.ImageDataset``;
    ``extends`` names the registered dataset whose images this one shares (adding labels).
    """


@hookspec(historic=True)
def register_commands(cli):
    """Add click commands to the ``flowcond`` CLI group ``cli``.

    Historic: called once the group exists, and again for every plugin registered later
    (``--plugins-dir``, tests), so their commands appear too.
    """
