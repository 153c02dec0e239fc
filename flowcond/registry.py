"""Plugin discovery: entry points of the group ``flowcond`` (built-ins included) and plugin folders.

Each entry point is loaded on its own. One that fails to import, implements a hook that does not
exist, or raises in a hook, is recorded in :data:`load_errors` with its distribution name and the
error, and the others keep working. ``FLOWCOND_STRICT_PLUGINS=1`` re-raises instead.
``FLOWCOND_LOAD_PLUGINS=a,b`` loads only the named entry points or distributions (an empty value
loads none, built-ins included).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from flowcond import hookspecs
from flowcond.errors import PluginError

GROUP = "flowcond"
#: distribution whose entry points are the built-in plugins
BUILTIN_DISTRIBUTION = "flowcond"

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


#: problems met while loading plugins or calling their hooks (the CLI prints them as warnings)
load_errors: list[LoadError] = []
_dists: dict[str, importlib.metadata.Distribution] = {}
_dir_files: dict[str, str] = {}  # resolved path of a --plugins-dir file -> plugin name
_loaded = False


def strict() -> bool:
    """Whether ``FLOWCOND_STRICT_PLUGINS`` asks for plugin errors to be raised."""
    return os.environ.get("FLOWCOND_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


def _one_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]


def _add_error(err: LoadError) -> None:
    if err not in load_errors:
        load_errors.append(err)


def _record(plugin: str, distribution: str | None, exc: BaseException) -> None:
    if strict():
        raise exc
    _add_error(LoadError(plugin, distribution, _one_line(exc)))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _register(plugin: object, name: str) -> None:
    """Register ``plugin``; refuse it if it implements a hook that does not exist."""
    for hook in hook_names():
        f = getattr(plugin, hook, None)
        if callable(f) and not hasattr(f, f"{GROUP}_impl"):
            raise PluginError(f"{hook} is not decorated with @flowcond.hookimpl")
    pm.register(plugin, name=name)
    unknown = sorted({hc.name for hc in (pm.get_hookcallers(plugin) or []) if hc.spec is None})
    if unknown:
        pm.unregister(plugin)
        known = ", ".join(sorted(hook_names()))
        raise PluginError(f"implements unknown hook(s) {', '.join(unknown)}; flowcond's hooks are {known}")


def hook_names() -> list[str]:
    """Names of every hook a plugin can implement (from :mod:`flowcond.hookspecs`)."""
    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, f"{GROUP}_spec"))


def load_entry_point_plugins() -> None:
    """Load every ``flowcond`` entry point once (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    wanted = os.environ.get("FLOWCOND_LOAD_PLUGINS")
    allow = None if wanted is None else {_normalize(n.strip()) for n in wanted.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else None
        if (
            allow is not None
            and _normalize(ep.name) not in allow
            and (dist is None or _normalize(dist) not in allow)
        ):
            continue
        try:
            module = ep.load()
            if pm.is_registered(module):
                continue
            name = ep.name
            if pm.get_plugin(name) is not None:  # two distributions use the same entry-point name
                name = f"{dist}:{ep.name}"
            _register(module, name)
        except Exception as e:  # a broken plugin must not take the CLI down
            _record(ep.name, dist, e)
            continue
        if ep.dist is not None:
            _dists[name] = ep.dist


def load_plugins_dir(path: str | os.PathLike) -> list[str]:
    """Register every ``*.py`` file in ``path`` as a plugin (named ``folder/stem``). Returns names.

    Loading the same file twice is a no-op; a file that fails to import is recorded in
    :data:`load_errors` (or raised in strict mode).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise PluginError(f"--plugins-dir {folder}: not a directory")
    names = []
    for file in sorted(folder.glob("*.py")):
        resolved = str(file.resolve())
        if resolved in _dir_files and pm.get_plugin(_dir_files[resolved]) is not None:
            names.append(_dir_files[resolved])
            continue
        name = f"{folder.name}/{file.stem}"
        if pm.get_plugin(name) is not None:  # same folder and file name elsewhere on disk
            name = resolved
        digest = hashlib.sha1(resolved.encode()).hexdigest()[:10]
        modname = f"flowcond_local_plugins.{file.stem}_{digest}"
        try:
            spec = importlib.util.spec_from_file_location(modname, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module
            spec.loader.exec_module(module)
            _register(module, name)
        except Exception as e:
            sys.modules.pop(modname, None)
            _record(str(file), None, e)
            continue
        _dir_files[resolved] = name
        names.append(name)
    return names


def _impls(hook_name: str, only: set[str] | None = None) -> list[Any]:
    hook = getattr(pm.hook, hook_name)
    return [
        impl
        for impl in hook.get_hookimpls()
        if not (impl.hookwrapper or impl.wrapper) and (only is None or impl.plugin_name in only)
    ]


def call_hook(hook_name: str, only: list[str] | None = None, **kwargs: Any) -> None:
    """Call a hook on every plugin (or those named in ``only``) separately, so that one raising
    plugin is reported in :data:`load_errors`, not fatal."""
    load_entry_point_plugins()
    for impl in _impls(hook_name, None if only is None else set(only)):
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as e:
            if strict():
                raise
            _add_error(
                LoadError(
                    impl.plugin_name,
                    distribution_of(impl.plugin),
                    f"{hook_name} raised {_one_line(e)}",
                )
            )


def distribution_of(plugin: object) -> str | None:
    """Name of the installed distribution that provides ``plugin`` (None for local plugins)."""
    dist = _dists.get(pm.get_name(plugin) or "")
    return dist.metadata["Name"] if dist is not None else None


def plugin_version(plugin: object) -> str | None:
    """Version of the distribution providing ``plugin``, else its ``__version__`` attribute."""
    dist = _dists.get(pm.get_name(plugin) or "")
    return dist.version if dist is not None else getattr(plugin, "__version__", None)


def is_builtin(plugin: object) -> bool:
    """Whether ``plugin`` comes from the ``flowcond`` distribution itself."""
    return distribution_of(plugin) == BUILTIN_DISTRIBUTION


# ----------------------------------------------------------------------- registries
@dataclass
class Registered:
    """Something a plugin registered: its name, the object, and which plugin registered it."""

    name: str
    obj: Any
    plugin: str
    description: str = ""
    #: for datasets: the registered dataset whose images this one shares, adding labels
    extends: str | None = None


def registrations(hook_name: str, make_register: Callable[[list, str], Callable]) -> list[Registered]:
    """Call ``hook_name(register=...)`` on each plugin; everything registered, duplicates included.

    A plugin whose hook raises contributes nothing and is recorded in :data:`load_errors`.
    """
    load_entry_point_plugins()
    items: list[Registered] = []
    for impl in _impls(hook_name):
        before = len(items)
        register = make_register(items, impl.plugin_name)
        try:
            impl.function(**{k: register for k in impl.argnames})
        except Exception as e:
            if strict():
                raise
            del items[before:]
            _add_error(
                LoadError(
                    impl.plugin_name,
                    distribution_of(impl.plugin),
                    f"{hook_name} raised {_one_line(e)}",
                )
            )
    return items


def _unique(hook_name: str, items: list[Registered], what: str) -> dict[str, Registered]:
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


def _condition_register(items: list, plugin: str) -> Callable:
    from flowcond.conditions import ConditionKind

    def register(kind: type) -> None:
        if not (isinstance(kind, type) and issubclass(kind, ConditionKind)):
            raise PluginError(f"plugin {plugin!r} registered {kind!r}, not a ConditionKind subclass")
        name = getattr(kind, "name", None)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name):
            raise PluginError(
                f"plugin {plugin!r}: condition kind {kind.__qualname__} needs a class attribute "
                f"`name` (letters, digits, '_' or '-'), got {name!r}"
            )
        if inspect.isabstract(kind):
            missing = ", ".join(sorted(kind.__abstractmethods__))
            raise PluginError(f"plugin {plugin!r}: condition kind {name!r} does not implement {missing}")
        items.append(Registered(name, kind, plugin, (kind.__doc__ or "").strip().split("\n")[0]))

    return register


def _dataset_register(items: list, plugin: str) -> Callable:
    def register(name: str, loader: Callable, description: str = "", extends: str | None = None) -> None:
        if not isinstance(name, str) or not name or not callable(loader):
            raise PluginError(f"plugin {plugin!r}: register(name, loader) needs a name and a callable")
        items.append(Registered(name, loader, plugin, description, extends))

    return register


def condition_kinds() -> dict[str, Registered]:
    """Every registered condition kind, by name (``Registered.obj`` is the ConditionKind class).

    Raises :class:`PluginError` naming both plugins if two register the same name.
    """
    return _unique(
        "register_conditions",
        registrations("register_conditions", _condition_register),
        "condition kind",
    )


def datasets() -> dict[str, Registered]:
    """Every registered dataset loader, by name (``Registered.obj`` is the loader callable)."""
    return _unique("register_datasets", registrations("register_datasets", _dataset_register), "dataset")


def get_condition_kind(name: str) -> type:
    """The ConditionKind class registered as ``name``; PluginError listing the installed ones."""
    kinds = condition_kinds()
    if name not in kinds:
        known = ", ".join(sorted(kinds)) or "none"
        raise PluginError(f"unknown condition plugin {name!r}; installed: {known} (see `flowcond plugins`)")
    return kinds[name].obj


def describe_plugins(include_builtins: bool = False) -> list[dict[str, Any]]:
    """What ``flowcond plugins`` prints: each plugin's name, distribution, version, hooks and the
    condition kinds and datasets it registers."""
    load_entry_point_plugins()
    kinds = registrations("register_conditions", _condition_register)
    sets = registrations("register_datasets", _dataset_register)
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None or (is_builtin(plugin) and not include_builtins):
            continue
        entry: dict[str, Any] = {
            "name": name,
            "distribution": distribution_of(plugin),
            "version": plugin_version(plugin),
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            "hooks": sorted(hc.name for hc in (pm.get_hookcallers(plugin) or [])),
            "conditions": [k.name for k in kinds if k.plugin == name],
            "datasets": [d.name for d in sets if d.plugin == name],
        }
        if name in _dir_files.values():
            entry["path"] = getattr(plugin, "__file__", None)
        out.append(entry)
    return sorted(out, key=lambda e: e["name"])
