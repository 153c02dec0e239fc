"""The plugin registry: entry points of the group ``flowcond`` (built-ins included) and plugin folders.

:class:`PluginRegistry` owns the pluggy ``PluginManager`` and all plugin state; :data:`default` is
the instance flowcond uses, and the module-level functions are its methods. Each entry point is
loaded on its own: one that fails to import (``SystemExit`` included), takes longer than
``FLOWCOND_PLUGIN_TIMEOUT`` to import, implements an unknown hook or raises in a hook is recorded in
``load_errors`` (``FLOWCOND_STRICT_PLUGINS=1`` re-raises) and the others keep working.
``FLOWCOND_LOAD_PLUGINS=a,b`` loads only the named entry points or distributions (empty: none);
``--plugins-dir`` folders load whatever it says. Historic hooks (``register_commands``) are called
with :meth:`PluginRegistry.call_historic`: as with pluggy's, plugins registered later get the call
too, but each plugin is called on its own, and may not replace a command it did not add
(:mod:`flowcond.registry.guards`). Kinds and datasets are ``provider:name`` (:mod:`.names`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pluggy

from flowcond import hookspecs
from flowcond.errors import LoadError, PluginError, exception_line
from flowcond.registry import guards
from flowcond.registry.guards import PluginTimeout, time_limit
from flowcond.registry.items import Registered, Snapshot, condition_register, dataset_register
from flowcond.registry.names import Names

GROUP = "flowcond"
#: distribution whose entry points are the built-in plugins
BUILTIN_DISTRIBUTION = "flowcond"


def strict() -> bool:
    """Whether ``FLOWCOND_STRICT_PLUGINS`` asks for plugin errors to be raised (1, true, yes, on)."""
    return guards.strict()[0]


def hook_names() -> list[str]:
    """Names of every hook a plugin can implement (from :mod:`flowcond.hookspecs`)."""
    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, f"{GROUP}_spec"))


class PluginRegistry:
    """Plugin manager of flowcond: loads, registers and calls plugins, and owns their state:
    ``pm`` (the pluggy ``PluginManager``), ``load_errors`` (the CLI prints and clears them)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        #: problems met while loading plugins or calling their hooks
        self.load_errors: list[LoadError] = []
        self._dists: dict[str, importlib.metadata.Distribution] = {}
        self._dir_files: dict[str, str] = {}  # resolved path of a --plugins-dir file -> plugin name
        self._loaded = False
        self._history: list[tuple[str, dict[str, Any]]] = []  # historic hook calls, in order

    # ------------------------------------------------------------------ state
    @property
    def loaded(self) -> bool:
        """Whether the entry points were loaded (or autoloading was turned off)."""
        return self._loaded

    def names(self) -> list[str]:
        """Names of the registered plugins, in registration order."""
        return [n for n, obj in self.pm.list_name_plugin() if obj is not None]

    def snapshot(self) -> Snapshot:
        """Everything :meth:`restore` needs to put the registry back as it is now."""
        return Snapshot(
            plugins=tuple((n, obj) for n, obj in self.pm.list_name_plugin() if obj is not None),
            loaded=self._loaded,
            distributions=dict(self._dists),
            dir_files=dict(self._dir_files),
            load_errors=tuple(self.load_errors),
            history=tuple(self._history),
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Put the registry back as it was at :meth:`snapshot` (plugins re-registered as they
        were, without calling historic hooks again)."""
        self.clear()
        self._history[:] = snapshot.history
        for name, obj in snapshot.plugins:
            self.pm.register(obj, name=name)
        self._loaded = snapshot.loaded
        self._dists.update(snapshot.distributions)
        self._dir_files.update(snapshot.dir_files)
        self.load_errors[:] = snapshot.load_errors

    def clear(self, autoload: bool | None = None) -> None:
        """Unregister every plugin, forget load errors, distributions and folder files. Historic
        calls are kept. ``autoload=False``: the entry points count as loaded (none load until
        :meth:`reload`); ``True``: the next lookup loads them; None (default): unchanged."""
        for name, obj in self.pm.list_name_plugin():
            if obj is not None:
                self.pm.unregister(obj, name=name)
        self._dists.clear()
        self._dir_files.clear()
        self.load_errors.clear()
        if autoload is not None:
            self._loaded = not autoload

    def reload(self) -> None:
        """Forget every plugin and load the entry points again (reading ``FLOWCOND_LOAD_PLUGINS``
        and ``FLOWCOND_STRICT_PLUGINS`` as they are now)."""
        self.clear(autoload=True)
        self.load_entry_points()

    # ------------------------------------------------------------ registering
    def register(self, plugin: object, name: str) -> str:
        """Register ``plugin`` (a module or an object with hook implementations) as ``name`` and
        call the historic hooks already called on it. PluginError for a hook-named function
        without ``@flowcond.hookimpl`` or a hook that does not exist. Returns ``name``."""
        for hook in hook_names():
            f = getattr(plugin, hook, None)
            if callable(f) and not hasattr(f, f"{GROUP}_impl"):
                raise PluginError(f"{hook} is not decorated with @flowcond.hookimpl")
        self.pm.register(plugin, name=name)
        unknown = sorted({hc.name for hc in (self.pm.get_hookcallers(plugin) or []) if hc.spec is None})
        if unknown:
            self.pm.unregister(plugin)
            known = ", ".join(hook_names())
            raise PluginError(
                f"implements unknown hook(s) {', '.join(unknown)}; flowcond's hooks are {known}"
            )
        for hook_name, kwargs in list(self._history):
            self._call_each(hook_name, kwargs, only={name})
        return name

    def unregister(self, name: str) -> None:
        """Unregister the plugin called ``name`` (what it added to the CLI stays)."""
        if self.pm.unregister(name=name) is None:
            raise PluginError(f"no plugin named {name!r}")
        self._dists.pop(name, None)
        self._dir_files = {path: n for path, n in self._dir_files.items() if n != name}

    def load_entry_points(self) -> None:
        """Load every ``flowcond`` entry point once (idempotent)."""
        if self._loaded:
            return
        self._loaded = True
        timeout = self._check_settings()
        allow = guards.load_selection()
        eps = list(importlib.metadata.entry_points(group=GROUP))
        dists = [ep.dist.metadata["Name"] if ep.dist is not None else None for ep in eps]
        if allow:
            self._notice(guards.unknown_selection(allow, [ep.name for ep in eps], [d for d in dists if d]))
        for ep, dist in zip(eps, dists, strict=True):
            if not guards.selected(allow, ep.name, dist):
                continue
            # two distributions may use the same entry-point name
            name = ep.name if self.pm.get_plugin(ep.name) is None else f"{dist}:{ep.name}"
            try:
                with self._guarded(name, dist, "importing", timeout):
                    module = ep.load()
                if self.pm.is_registered(module):
                    continue
                if ep.dist is not None:  # known before historic hooks run, for their errors
                    self._dists[name] = ep.dist
                self.register(module, name)
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # a broken plugin (sys.exit included) must not take the CLI down
                if self.pm.get_plugin(name) is None:
                    self._dists.pop(name, None)
                self._failed(ep.name, dist, e)

    def load_plugins_dir(self, path: str | os.PathLike) -> list[str]:
        """Register every ``*.py`` file in ``path`` as a plugin named ``folder/stem``; their names.
        Loading a file twice is a no-op; one that fails to import is recorded in ``load_errors``."""
        folder = Path(path)
        if not folder.is_dir():
            raise PluginError(f"--plugins-dir {folder}: not a directory")
        timeout = self._check_settings()
        names = []
        for file in sorted(folder.glob("*.py")):
            resolved = str(file.resolve())
            if resolved in self._dir_files and self.pm.get_plugin(self._dir_files[resolved]) is not None:
                names.append(self._dir_files[resolved])
                continue
            name = f"{folder.name}/{file.stem}"
            if self.pm.get_plugin(name) is not None:  # same folder and file name elsewhere on disk
                name = resolved
            digest = hashlib.sha1(resolved.encode()).hexdigest()[:10]
            modname = f"flowcond_local_plugins.{file.stem}_{digest}"
            try:
                spec = importlib.util.spec_from_file_location(modname, file)
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                with self._guarded(name, None, "importing", timeout):
                    spec.loader.exec_module(module)
                self._dir_files[resolved] = name
                self.register(module, name)
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                sys.modules.pop(modname, None)
                self._dir_files.pop(resolved, None)
                self._failed(name, None, e)
                continue
            names.append(name)
        return names

    # ---------------------------------------------------------------- calling
    def call_hook(self, hook_name: str, only: list[str] | None = None, **kwargs: Any) -> None:
        """Call a (non-historic) hook on every plugin, or those named in ``only``, each on its
        own, so that one raising plugin is recorded in :attr:`load_errors`, not fatal."""
        self.load_entry_points()
        self._call_each(hook_name, kwargs, None if only is None else set(only))

    def call_historic(self, hook_name: str, **kwargs: Any) -> None:
        """Call a historic hook (``register_commands``) on every plugin now, and on each plugin
        registered later, each on its own (errors recorded as in :meth:`call_hook`)."""
        spec = getattr(self.pm.hook, hook_name).spec
        if spec is None or not spec.opts.get("historic"):
            raise PluginError(f"{hook_name} is not a historic hook")
        self._history.append((hook_name, kwargs))
        self.load_entry_points()
        self._call_each(hook_name, kwargs, None)

    def _impls(self, hook_name: str, only: set[str] | None = None) -> list[Any]:
        hook = getattr(self.pm.hook, hook_name)
        return [
            impl
            for impl in hook.get_hookimpls()
            if not (impl.hookwrapper or impl.wrapper) and (only is None or impl.plugin_name in only)
        ]

    def _call_each(self, hook_name: str, kwargs: dict[str, Any], only: set[str] | None) -> None:
        timeout = guards.plugin_timeout()[0]
        for impl in self._impls(hook_name, only):
            dist = self.distribution_of(impl.plugin)
            try:
                with self._guarded(impl.plugin_name, dist, hook_name, timeout):
                    impl.function(**{k: kwargs[k] for k in impl.argnames})
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                self._failed(impl.plugin_name, dist, e, hook_name)

    def _guarded(self, plugin: str, dist: str | None, what: str, timeout: float) -> ExitStack:
        """The time limit of ``plugin``'s import or hook (``what``), and the guard of each CLI
        group given to ``register_commands``: the plugin may add commands, not replace others'."""
        actor = "its import" if what == "importing" else what

        def refuse(problem: str) -> None:
            self._notice(f"{actor} {problem}", plugin, dist)

        stack, groups = ExitStack(), {id(kw["cli"]): kw["cli"] for h, kw in self._history if "cli" in kw}
        for group in groups.values():
            stack.enter_context(guards.command_guard(group, plugin, refuse))
        stack.enter_context(time_limit(timeout, what))
        return stack

    def _failed(self, plugin: str, dist: str | None, exc: BaseException, hook: str | None = None) -> None:
        """Record that ``plugin`` failed to load (or its ``hook`` raised or ran past the time
        limit); re-raise if strict (a SystemExit or time-out as a PluginError)."""
        if isinstance(exc, PluginTimeout):
            text = str(exc)
        else:
            text = f"{hook} raised {exception_line(exc)}" if hook else exception_line(exc)
        self._record(LoadError(plugin, dist, text), exc)

    def _notice(self, problem: str | None, plugin: str = "", dist: str | None = None) -> None:
        """Record a warning that is not a failure: a refused command of ``plugin``, or (no
        plugin) a FLOWCOND_* setting not understood. A PluginError if strict."""
        if problem is not None:
            self._record(LoadError(plugin, dist, problem, failed=False))

    def _record(self, err: LoadError, exc: BaseException | None = None) -> None:
        if strict():
            if isinstance(exc, Exception):
                raise exc
            raise PluginError(str(err)) from exc
        if err not in self.load_errors:
            self.load_errors.append(err)

    def _check_settings(self) -> float:
        """Warn about FLOWCOND_* values not understood; the time limit of an import (0: none)."""
        for warning in guards.setting_warnings():
            self._notice(warning)
        return guards.plugin_timeout()[0]

    # ------------------------------------------------------------- provenance
    def distribution_of(self, plugin: object) -> str | None:
        """Name of the installed distribution that provides ``plugin`` (None for local plugins)."""
        dist = self._dists.get(self.pm.get_name(plugin) or "")
        return dist.metadata["Name"] if dist is not None else None

    def plugin_version(self, plugin: object) -> str | None:
        """Version of the distribution providing ``plugin``, else its ``__version__`` attribute."""
        dist = self._dists.get(self.pm.get_name(plugin) or "")
        return dist.version if dist is not None else getattr(plugin, "__version__", None)

    def is_builtin(self, plugin: object) -> bool:
        """Whether ``plugin`` comes from the ``flowcond`` distribution itself."""
        return self.distribution_of(plugin) == BUILTIN_DISTRIBUTION

    # -------------------------------------------------------- registrations
    def registrations(
        self, hook_name: str, make_register: Callable[[list, str], Callable]
    ) -> list[Registered]:
        """Call ``hook_name(register=...)`` on each plugin; everything registered, duplicates
        included, each with its provider (distribution and version). A plugin whose hook raises
        contributes nothing (its error is recorded)."""
        self.load_entry_points()
        timeout = guards.plugin_timeout()[0]
        items: list[Registered] = []
        for impl in self._impls(hook_name):
            before = len(items)
            register = make_register(items, impl.plugin_name)
            dist = self.distribution_of(impl.plugin)
            try:
                with time_limit(timeout, hook_name):
                    impl.function(**{k: register for k in impl.argnames})
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                del items[before:]
                self._failed(impl.plugin_name, dist, e, hook_name)
            for item in items[before:]:
                item.distribution, item.version = dist, self.plugin_version(impl.plugin)
                item.shadow = bool(getattr(impl.plugin, "flowcond_shadow", False))
        return items

    def condition_kind_names(self) -> Names:
        """Every registered condition kind, by plain and qualified name (:mod:`.names`)."""
        return Names(self.registrations("register_conditions", condition_register), "condition kind")

    def dataset_names(self) -> Names:
        """Every registered dataset, by plain and qualified name (:mod:`.names`)."""
        return Names(self.registrations("register_datasets", dataset_register), "dataset")

    def condition_kinds(self) -> dict[str, Registered]:
        """Condition kinds by plain name (``Registered.obj``: the ConditionKind class); a name
        two plugins register is left out (see :meth:`find_condition_kind`)."""
        return self.condition_kind_names().plain()

    def datasets(self) -> dict[str, Registered]:
        """Dataset loaders by plain name (``Registered.obj``: the loader); ambiguous ones left out."""
        return self.dataset_names().plain()

    def find_condition_kind(self, name: str) -> Registered:
        """The registration of kind ``name`` (plain, or qualified ``provider:kind``); one-line
        PluginError if ambiguous (naming both providers) or unknown (listing the installed)."""
        kinds = self.condition_kind_names()
        found = kinds.find(name)
        if found is None:
            raise PluginError(
                f"unknown condition plugin {name!r}; installed: {kinds.listing()} (see `flowcond plugins`)"
            )
        return found

    def get_condition_kind(self, name: str) -> type:
        """The ConditionKind class registered as ``name`` (see :meth:`find_condition_kind`)."""
        return self.find_condition_kind(name).obj

    def describe_plugins(self, include_builtins: bool = False) -> list[dict[str, Any]]:
        """What ``flowcond plugins`` prints (:func:`flowcond.registry.describe.describe_plugins`)."""
        from flowcond.registry.describe import describe_plugins

        return describe_plugins(self, include_builtins)

    def plugin_file(self, name: str) -> bool:
        """Whether the plugin ``name`` was loaded from a ``--plugins-dir`` file."""
        return name in self._dir_files.values()


# ------------------------------------------------------- the default registry
#: the registry flowcond (the CLI, ``attach``, ``load_dataset``) uses; the names below are its
#: PluginManager, its load errors (the same list, cleared in place) and its methods
default = PluginRegistry()
pm = default.pm
load_errors = default.load_errors
load_entry_point_plugins = default.load_entry_points
load_plugins_dir = default.load_plugins_dir
register = default.register
call_hook = default.call_hook
call_historic = default.call_historic
distribution_of = default.distribution_of
plugin_version = default.plugin_version
is_builtin = default.is_builtin
registrations = default.registrations
condition_kinds = default.condition_kinds
datasets = default.datasets
condition_kind_names = default.condition_kind_names
dataset_names = default.dataset_names
find_condition_kind = default.find_condition_kind
get_condition_kind = default.get_condition_kind
describe_plugins = default.describe_plugins
