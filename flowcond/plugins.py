"""Plugin discovery: entry points of the group ``flowcond`` (built-ins included) and plugin folders.

Each entry point is loaded on its own. One that fails to import, or raises in a hook, is recorded
in :data:`load_errors` with its distribution name and the error, and the others keep working.
``FLOWCOND_STRICT_PLUGINS=1`` re-raises instead; ``FLOWCOND_LOAD_PLUGINS=a,b`` loads only the
named entry points (an empty value loads none).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

GROUP = "flowcond"

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)


@dataclass
class LoadError:
    """A plugin that could not be loaded or whose hook raised."""

    plugin: str
    distribution: str | None
    error: str

    def __str__(self) -> str:
        dist = f" (from {self.distribution})" if self.distribution else ""
        return f"plugin {self.plugin!r}{dist} failed: {self.error}"


load_errors: list[LoadError] = []
_dists: dict[str, importlib.metadata.Distribution] = {}
_loaded = False


def strict() -> bool:
    return os.environ.get("FLOWCOND_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


def _record(plugin: str, distribution: str | None, exc: BaseException) -> None:
    if strict():
        raise exc
    msg = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
    load_errors.append(LoadError(plugin, distribution, msg))


def load_entry_point_plugins() -> None:
    """Load every ``flowcond`` entry point once (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    wanted = os.environ.get("FLOWCOND_LOAD_PLUGINS")
    allow = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=GROUP):
        if allow is not None and ep.name not in allow:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        dist = ep.dist.name if ep.dist is not None else None
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as e:  # a broken plugin must not take the CLI down
            _record(ep.name, dist, e)
            continue
        if ep.dist is not None:
            _dists[ep.name] = ep.dist


def load_plugins_dir(path: str | os.PathLike) -> list[str]:
    """Register every ``*.py`` file in ``path`` as a plugin (named after the file). Returns names."""
    folder = Path(path)
    if not folder.is_dir():
        raise PluginError(f"--plugins-dir {folder}: not a directory")
    names = []
    for file in sorted(folder.glob("*.py")):
        name = f"{folder.name}/{file.stem}"
        if pm.get_plugin(name) is not None:
            names.append(name)
            continue
        modname = f"flowcond_local_plugins.{file.stem}"
        try:
            spec = importlib.util.spec_from_file_location(modname, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module
            spec.loader.exec_module(module)
            pm.register(module, name=name)
        except Exception as e:
            sys.modules.pop(modname, None)
            _record(str(file), None, e)
            continue
        names.append(name)
    return names


def call_hook(hook_name: str, **kwargs: Any) -> None:
    """Call a hook on every plugin separately so that one raising plugin is reported, not fatal."""
    load_entry_point_plugins()
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as e:
            if strict():
                raise
            dist = distribution_of(impl.plugin)
            load_errors.append(
                LoadError(impl.plugin_name, dist, f"{hook_name} raised {type(e).__name__}: {e}")
            )


def distribution_of(plugin: object) -> str | None:
    """Name of the installed distribution that provides ``plugin`` (None for local plugins)."""
    dist = _dists.get(pm.get_name(plugin) or "")
    return dist.metadata["Name"] if dist is not None else None


def plugin_version(plugin: object) -> str | None:
    """Version of the distribution providing ``plugin``, else its ``__version__`` attribute."""
    dist = _dists.get(pm.get_name(plugin) or "")
    return dist.version if dist is not None else getattr(plugin, "__version__", None)


# ----------------------------------------------------------------------- registries
@dataclass
class Registered:
    """Something a plugin registered: its name, the object, and which plugin registered it."""

    name: str
    obj: Any
    plugin: str
    description: str = ""


def _collect(hook_name: str, make_register: Callable[[list, str], Callable]) -> dict[str, Registered]:
    load_entry_point_plugins()
    items: list[Registered] = []
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        before = len(items)
        try:
            impl.function(register=make_register(items, impl.plugin_name))
        except Exception as e:
            if strict():
                raise
            del items[before:]
            load_errors.append(
                LoadError(impl.plugin_name, distribution_of(impl.plugin), f"{hook_name} raised {type(e).__name__}: {e}")
            )
    out: dict[str, Registered] = {}
    for item in items:
        if item.name in out:
            raise PluginError(
                f"{hook_name}: {item.name!r} is registered twice, by plugin {out[item.name].plugin!r} "
                f"and by plugin {item.plugin!r}; uninstall one or limit FLOWCOND_LOAD_PLUGINS"
            )
        out[item.name] = item
    return out


def condition_kinds() -> dict[str, Registered]:
    """Every registered condition kind, by name (``Registered.obj`` is the ConditionKind class)."""
    from .conditions import ConditionKind

    def make(items: list, plugin: str) -> Callable:
        def register(kind: type) -> None:
            if not (isinstance(kind, type) and issubclass(kind, ConditionKind)):
                raise PluginError(f"plugin {plugin!r} registered {kind!r}, not a ConditionKind subclass")
            items.append(Registered(kind.name, kind, plugin, (kind.__doc__ or "").strip().split("\n")[0]))

        return register

    return _collect("register_conditions", make)


def datasets() -> dict[str, Registered]:
    """Every registered dataset loader, by name (``Registered.obj`` is the loader callable)."""

    def make(items: list, plugin: str) -> Callable:
        def register(name: str, loader: Callable, description: str = "") -> None:
            items.append(Registered(name, loader, plugin, description))

        return register

    return _collect("register_datasets", make)


def get_condition_kind(name: str) -> type:
    kinds = condition_kinds()
    if name not in kinds:
        known = ", ".join(sorted(kinds)) or "none"
        raise PluginError(f"unknown condition plugin {name!r}; installed: {known} (see `flowcond plugins`)")
    return kinds[name].obj
