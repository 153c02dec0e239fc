"""Names of what plugins register: plain (``ids``) and qualified (``flowcond:ids``).

Two plugins may register the same condition kind or dataset name. Then neither keeps the plain
name, whatever order the entry points load in: only a command that uses it fails, with one line
naming both providers and how to choose; every other command works. The qualified name
``provider:name`` always works. ``provider`` is the distribution of an installed plugin
(``flowcond:ids``, ``flowcond-parity:parity``) or its entry-point name (``parity:parity``); for a
``--plugins-dir`` file it is the plugin name ``folder/stem`` (``my_plugins/wavy:wavy``), for a
plugin registered in a test the name it was registered under. ``-``, ``_``, ``.`` and case are
ignored in the provider, as in ``FLOWCOND_LOAD_PLUGINS``. A registration made for one test with
``shadow=True`` (the test kit's default for a kind or dataset) keeps the plain name.
"""

from __future__ import annotations

from flowcond.errors import PluginError
from flowcond.registry.guards import normalize
from flowcond.registry.items import Registered


class Names:
    """Registrations of one hook (``what``: "condition kind" or "dataset") by name."""

    def __init__(self, items: list[Registered], what: str) -> None:
        self.what = what
        self.items = list(items)
        self.by_name: dict[str, list[Registered]] = {}
        for item in self.items:
            self.by_name.setdefault(item.name, []).append(item)

    def owner(self, name: str) -> Registered | None:
        """The registration that keeps the plain ``name``: the only one, or the only one
        registered with ``shadow=True``; None when unknown or ambiguous."""
        found = self.by_name.get(name, [])
        if len(found) == 1:
            return found[0]
        shadows = [item for item in found if item.shadow]
        return shadows[0] if len(shadows) == 1 else None

    def plain(self) -> dict[str, Registered]:
        """Every unambiguous plain name -> its registration (ambiguous names are left out)."""
        return {name: item for name in self.by_name if (item := self.owner(name)) is not None}

    def ambiguous(self) -> dict[str, list[Registered]]:
        """Names registered more than once that no registration keeps."""
        return {n: found for n, found in self.by_name.items() if len(found) > 1 and self.owner(n) is None}

    def qualified(self, name: str) -> list[Registered]:
        """Registrations ``provider:kind`` names (by distribution, plugin or entry-point name)."""
        prefix, sep, base = name.rpartition(":")
        if not sep or not prefix:
            return []
        want = normalize(prefix)
        return [
            item
            for item in self.by_name.get(base, [])
            if want
            in {normalize(item.provider), normalize(item.plugin), normalize(item.plugin.split(":")[-1])}
        ]

    def find(self, name: str) -> Registered | None:
        """The registration ``name`` (plain or qualified) names; None if nothing is called that.
        PluginError (one line, naming every provider and how to choose) if it is ambiguous."""
        item = self.owner(name)
        if item is not None:
            return item
        if name in self.by_name:
            raise PluginError(self.ambiguity(name, self.by_name[name]))
        found = self.qualified(name)
        if len(found) > 1:
            raise PluginError(self.ambiguity(name, found))
        return found[0] if found else None

    def ambiguity(self, name: str, found: list[Registered]) -> str:
        """The one-line error for a name that several registrations answer to."""
        base = name.rpartition(":")[2]
        who = " and ".join(_describe(item) for item in found)
        choices = " or ".join(sorted({f"{_selector(item, found)}:{base}" for item in found}))
        dists = sorted({item.distribution for item in found if item.distribution})
        load = (
            f", or load only one with FLOWCOND_LOAD_PLUGINS (distribution or entry-point names, "
            f"e.g. {', '.join(dists)})"
            if dists
            else ""
        )
        local = [item.plugin for item in found if not item.distribution]
        if local:  # folder and test plugins load whatever FLOWCOND_LOAD_PLUGINS says
            load += f", or leave out what loads {', '.join(map(repr, local))} (--plugins-dir)"
        return (
            f"{self.what} {name!r} is registered by {who}; choose one by its qualified name {choices}{load}"
        )

    def listing(self) -> str:
        """Every name a user can write: the plain ones, and qualified ones for ambiguous names."""
        names = set(self.plain())
        for found in self.ambiguous().values():
            names.update(item.qualified for item in found)
        return ", ".join(sorted(names)) or "none"


def _describe(item: Registered) -> str:
    if item.distribution:
        return f"plugin {item.plugin!r} of distribution {item.distribution} {item.version or ''}".rstrip()
    return f"plugin {item.plugin!r}"


def _selector(item: Registered, found: list[Registered]) -> str:
    """The shortest provider prefix that names ``item`` alone among ``found``."""
    same = [other for other in found if normalize(other.provider) == normalize(item.provider)]
    return item.provider if len(same) == 1 else item.plugin.split(":")[-1]
