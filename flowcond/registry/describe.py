"""What ``flowcond plugins`` prints about each registered plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcond.registry.items import Registered, condition_register, dataset_register
from flowcond.registry.names import Names

if TYPE_CHECKING:
    from flowcond.registry import PluginRegistry


def describe_plugins(registry: PluginRegistry, include_builtins: bool = False) -> list[dict[str, Any]]:
    """Each plugin's name, distribution, version, module, hooks, and the condition kinds and
    datasets it registers (``path`` too for a ``--plugins-dir`` file), sorted by name. A kind or
    dataset is listed by the name a command takes: its plain name, or its qualified name
    (``provider:name``) when another plugin registers the same name."""
    registry.load_entry_points()
    kinds = registry.registrations("register_conditions", condition_register)
    sets = registry.registrations("register_datasets", dataset_register)
    kind_names, set_names = Names(kinds, "condition kind"), Names(sets, "dataset")
    out = []
    for name, plugin in registry.pm.list_name_plugin():
        if plugin is None or (registry.is_builtin(plugin) and not include_builtins):
            continue
        entry: dict[str, Any] = {
            "name": name,
            "distribution": registry.distribution_of(plugin),
            "version": registry.plugin_version(plugin),
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            "hooks": sorted(hc.name for hc in (registry.pm.get_hookcallers(plugin) or [])),
            "conditions": [_usable(k, kind_names) for k in kinds if k.plugin == name],
            "datasets": [_usable(d, set_names) for d in sets if d.plugin == name],
        }
        if registry.plugin_file(name):
            entry["path"] = getattr(plugin, "__file__", None)
        out.append(entry)
    return sorted(out, key=lambda e: e["name"])


def _usable(item: Registered, names: Names) -> str:
    """The name a command takes for ``item``: plain if it keeps it, else qualified."""
    return item.name if names.owner(item.name) is item else item.qualified
