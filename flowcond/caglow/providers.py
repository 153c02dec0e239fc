"""Which installed plugin provides each condition kind a heads file (or checkpoint) records.

A heads file records, for each kind, the plugin that registered it, that plugin's distribution
and the distribution's version (:func:`plugin_entries`). On load (:func:`resolve_kind`):

- the kind from the recorded distribution is used; a different version is a warning (printed by
  the CLI; from Python, in ``flowcond.registry.load_errors``);
- a kind of the same name from *another* distribution is refused (it may compute other targets
  from other labels), unless ``FLOWCOND_ACCEPT_PROVIDERS`` lists the kind name (or is ``*``);
- a kind that is not there says what to ``pip install`` (the recorded distribution and version),
  or that the distribution is installed but failed to load (with the failure), or that
  ``FLOWCOND_LOAD_PLUGINS`` leaves it out.

Heads files written before distributions were recorded (no ``distribution`` field) resolve the
kind by its plugin name, then by its plain name.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from typing import Any

from flowcond import registry
from flowcond.conditions import ConditionKind
from flowcond.errors import LoadError, PluginError
from flowcond.registry import guards
from flowcond.registry.guards import normalize
from flowcond.registry.items import Registered
from flowcond.registry.names import Names

ACCEPT = "FLOWCOND_ACCEPT_PROVIDERS"


def registration_of(kind: ConditionKind, names: Names | None = None) -> Registered | None:
    """The registration of ``kind``'s class (None for a class no plugin registers)."""
    names = names if names is not None else registry.condition_kind_names()
    found = [r for r in names.items if r.obj is type(kind)]
    return found[0] if found else None


def plugin_entries(kinds: Mapping[str, ConditionKind]) -> list[dict[str, Any]]:
    """What a heads file (and an attach checkpoint) records of each attached condition: its name,
    the plugin that registered it, that plugin's distribution and version, options and state."""
    names = registry.condition_kind_names()
    entries = []
    for name, kind in kinds.items():
        reg = registration_of(kind, names)
        entries.append(
            {
                "name": name,
                "plugin": reg.plugin if reg else None,
                "distribution": reg.distribution if reg else None,
                "version": reg.version if reg else None,
                "options": kind.options.model_dump(),
                "state": kind.state(),
            }
        )
    return entries


def _same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and normalize(a) == normalize(b)


def _accepted(name: str) -> bool:
    wanted = {n.strip() for n in os.environ.get(ACCEPT, "").split(",") if n.strip()}
    return "*" in wanted or name in wanted


def _warn(entry: Any, found: Registered, problem: str) -> None:
    err = LoadError(found.plugin, found.distribution, problem, failed=False)
    if err not in registry.load_errors:
        registry.load_errors.append(err)


def resolve_kind(path: Any, entry: Any, names: Names | None = None) -> type:
    """The installed ConditionKind class for a heads file's plugin ``entry`` (a PluginEntry);
    a one-line PluginError naming the file when it is not installed or comes from another
    distribution (see the module doc)."""
    names = names if names is not None else registry.condition_kind_names()
    candidates = names.by_name.get(entry.name, [])
    recorded = getattr(entry, "distribution", None)
    if not recorded:  # an older heads file, or a kind of a folder or test plugin
        mine = [c for c in candidates if entry.plugin and c.plugin == entry.plugin]
        found = mine[0] if len(mine) == 1 else names.find(entry.name)
        if found is None:
            raise not_installed(path, entry, names)
        return found.obj
    same = [c for c in candidates if _same(c.distribution, recorded)]
    if same:
        found = next((c for c in same if c.plugin == entry.plugin), same[0])
        if entry.version and found.version and found.version != entry.version:
            _warn(
                entry,
                found,
                f"{path} was attached with {recorded} {entry.version} (kind {entry.name!r}), "
                f"{found.version} is installed: samples may differ",
            )
        return found.obj
    if not candidates:
        raise not_installed(path, entry, names)
    found = names.owner(entry.name)
    others = ", ".join(f"{c.provider} {c.version or ''}".rstrip() for c in candidates)
    if found is not None and _accepted(entry.name):
        _warn(
            entry,
            found,
            f"{path}: kind {entry.name!r} recorded from {recorded}, using {found.provider} ({ACCEPT})",
        )
        return found.obj
    raise PluginError(
        f"{path}: condition plugin {entry.name!r} was attached with distribution {recorded} "
        f"{entry.version or ''}, but the installed {entry.name!r} comes from {others}: refused "
        f"(it may compute other targets); pip install {_requirement(entry)}, or accept it with "
        f"{ACCEPT}={entry.name}"
    )


def _requirement(entry: Any) -> str:
    dist = entry.distribution
    return f"'{dist}=={entry.version}'" if entry.version else dist


def _entry_point_distribution(plugin: str | None) -> str | None:
    """The distribution whose ``flowcond`` entry point is called ``plugin`` (older heads files
    record only the plugin name)."""
    if not plugin:
        return None
    for ep in importlib.metadata.entry_points(group="flowcond"):
        if ep.name == plugin.split(":")[-1] and ep.dist is not None:
            return ep.dist.metadata["Name"]
    return None


def not_installed(path: Any, entry: Any, names: Names) -> PluginError:
    """The error for a kind no installed plugin provides: what to install, or why the installed
    distribution does not provide it (failed to load, left out by FLOWCOND_LOAD_PLUGINS)."""
    dist = getattr(entry, "distribution", None) or _entry_point_distribution(entry.plugin)
    what = f"{path}: needs condition plugin {entry.name!r}"
    failures = [
        e
        for e in registry.load_errors
        if e.failed and (_same(e.distribution, dist) or (entry.plugin and e.plugin == entry.plugin))
    ]
    if failures:
        return PluginError(
            f"{what} from {dist or entry.plugin}, which is installed but failed to load: {failures[0].error}"
        )
    if dist:
        try:
            installed = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is not None:
            selection = guards.load_selection()
            if selection is not None and normalize(dist) not in selection:
                return PluginError(f"{what} from {dist} {installed}, which FLOWCOND_LOAD_PLUGINS leaves out")
            return PluginError(
                f"{what}; distribution {dist} {installed} is installed but registers no such kind "
                f"(attached with {entry.version}; `flowcond plugins` shows what it registers)"
            )
        version = f"=={entry.version}" if getattr(entry, "distribution", None) and entry.version else ""
        return PluginError(
            f"{what} from distribution {dist}, which is not installed: pip install '{dist}{version}'"
        )
    return PluginError(
        f"{what} (from plugin {entry.plugin}, version {entry.version}), which is not installed; "
        f"installed kinds: {names.listing()}"
    )
