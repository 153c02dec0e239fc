"""What plugins register (:class:`Registered`), the registry's saved state (:class:`Snapshot`),
and the ``register`` callables handed to ``register_conditions`` and ``register_datasets``."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowcond.conditions import check_kind
from flowcond.datasets import check_loader
from flowcond.errors import LoadError


@dataclass
class Registered:
    """Something a plugin registered: its name, the object, and which plugin registered it.

    Its identity is ``provider:name`` (:attr:`qualified`): ``provider`` is the distribution of
    an installed plugin (``flowcond``, ``flowcond-parity``), else the plugin's own name (a
    ``--plugins-dir`` file ``folder/stem``, a plugin registered in a test)."""

    name: str
    obj: Any
    plugin: str
    description: str = ""
    #: for datasets: the registered dataset whose images this one shares, adding labels
    #: (``register("mnist5k-morpho", loader, "...", extends="mnist5k")``)
    extends: str | None = None
    #: the installed distribution of the registering plugin (None: a folder or test plugin)
    distribution: str | None = None
    #: that distribution's version, else the plugin module's ``__version__``
    version: str | None = None
    #: registered for one test with ``shadow=True``: keeps the plain name over installed ones
    shadow: bool = False

    @property
    def provider(self) -> str:
        """The distribution providing it, else the registering plugin's name."""
        return self.distribution or self.plugin

    @property
    def qualified(self) -> str:
        """``provider:name``, e.g. ``flowcond:ids``: always names this registration alone."""
        return f"{self.provider}:{self.name}"


@dataclass(frozen=True)
class Snapshot:
    """The state of a :class:`PluginRegistry`, for :meth:`PluginRegistry.restore`."""

    plugins: tuple[tuple[str, object], ...]
    loaded: bool
    distributions: dict[str, importlib.metadata.Distribution]
    dir_files: dict[str, str]
    load_errors: tuple[LoadError, ...]
    history: tuple[tuple[str, dict[str, Any]], ...]


def condition_register(items: list, plugin: str) -> Callable:
    def register(kind: type) -> None:
        name = check_kind(kind, plugin)
        items.append(Registered(name, kind, plugin, (kind.__doc__ or "").strip().split("\n")[0]))

    return register


def dataset_register(items: list, plugin: str) -> Callable:
    def register(name: str, loader: Callable, description: str = "", extends: str | None = None) -> None:
        check_loader(name, loader, extends, plugin)
        items.append(Registered(name, loader, plugin, description, extends))

    return register
