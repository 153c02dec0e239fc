"""What plugins register (:class:`Registered`), the registry's saved state (:class:`Snapshot`),
and the ``register`` callables handed to ``register_conditions`` and ``register_datasets``."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowcond.conditions import check_kind
from flowcond.datasets import check_loader
from flowcond.errors import LoadError, PluginError


@dataclass
class Registered:
    """Something a plugin registered: its name, the object, and which plugin registered it."""

    name: str
    obj: Any
    plugin: str
    description: str = ""
    #: for datasets: the registered dataset whose images this one shares, adding labels
    #: (``register("mnist5k-morpho", loader, "...", extends="mnist5k")``)
    extends: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """The state of a :class:`PluginRegistry`, for :meth:`PluginRegistry.restore`."""

    plugins: tuple[tuple[str, object], ...]
    loaded: bool
    distributions: dict[str, importlib.metadata.Distribution]
    dir_files: dict[str, str]
    load_errors: tuple[LoadError, ...]
    history: tuple[tuple[str, dict[str, Any]], ...]


def unique(hook_name: str, items: list[Registered], what: str) -> dict[str, Registered]:
    out: dict[str, Registered] = {}
    for item in items:
        if item.name in out:
            raise PluginError(
                f"{what} {item.name!r} is registered twice, by plugin {out[item.name].plugin!r} "
                f"and by plugin {item.plugin!r} ({hook_name}); uninstall one, or choose plugins "
                f"with FLOWCOND_LOAD_PLUGINS"
            )
        out[item.name] = item
    return out


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
