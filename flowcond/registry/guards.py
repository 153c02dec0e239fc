"""What keeps the CLI alive around plugins of uneven quality: the ``FLOWCOND_*`` switches read
strictly, a time limit on plugin imports and hooks, and the command-name guard.

- :func:`strict`, :func:`plugin_timeout`, :func:`load_selection`: the environment variables,
  each returning its value and, for a value it does not understand, a one-line warning.
- :func:`time_limit`: raises :class:`PluginTimeout` in code that runs past its limit (SIGALRM,
  main thread on POSIX only; elsewhere no limit).
- :func:`command_guard`: undoes a ``register_commands`` call's replacement or removal of a
  command it does not own (a built-in command, or another plugin's).
"""

from __future__ import annotations

import math
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")
#: seconds a plugin may take to import (or to run one hook) unless FLOWCOND_PLUGIN_TIMEOUT says
DEFAULT_TIMEOUT = 30.0


def strict() -> tuple[bool, str | None]:
    """``FLOWCOND_STRICT_PLUGINS``: (on, warning). On for 1/true/yes/on, off for 0/false/no/off
    or empty/unset (case and spaces ignored); anything else leaves it off, with a warning."""
    raw = os.environ.get("FLOWCOND_STRICT_PLUGINS", "")
    value = raw.strip().lower()
    if value in TRUE or value in FALSE:
        return value in TRUE, None
    return False, (
        f"FLOWCOND_STRICT_PLUGINS={raw!r} is not understood: use 1, true, yes or on to turn strict "
        f"mode on, 0, false, no, off or empty to leave it off; strict mode stays off"
    )


def plugin_timeout() -> tuple[float, str | None]:
    """``FLOWCOND_PLUGIN_TIMEOUT``: (seconds, warning); 0 means no limit. Unset or empty: the
    default; anything but a finite number >= 0: the default, with a warning."""
    raw = os.environ.get("FLOWCOND_PLUGIN_TIMEOUT", "")
    if not raw.strip():
        return DEFAULT_TIMEOUT, None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value >= 0:
        return value, None
    return DEFAULT_TIMEOUT, (
        f"FLOWCOND_PLUGIN_TIMEOUT={raw!r} is not a number of seconds >= 0 (0: no limit); "
        f"using {DEFAULT_TIMEOUT:g} s"
    )


def normalize(name: str) -> str:
    """A plugin or distribution name with ``-``, ``_``, ``.`` and case ignored."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_selection() -> dict[str, str] | None:
    """``FLOWCOND_LOAD_PLUGINS``: None when unset (load every entry point), else the names asked
    for (normalized name -> as written); empty when the value names nothing."""
    wanted = os.environ.get("FLOWCOND_LOAD_PLUGINS")
    if wanted is None:
        return None
    return {normalize(n.strip()): n.strip() for n in wanted.split(",") if n.strip()}


def selected(selection: dict[str, str] | None, plugin: str, dist: str | None) -> bool:
    """Whether ``FLOWCOND_LOAD_PLUGINS`` (:func:`load_selection`) selects an entry point: by
    its name, its distribution's, or ``distribution:name``."""
    names = {normalize(plugin)} | ({normalize(dist), normalize(f"{dist}:{plugin}")} if dist else set())
    return selection is None or bool(names & selection.keys())


def setting_warnings() -> list[str]:
    """Warnings for ``FLOWCOND_STRICT_PLUGINS`` and ``FLOWCOND_PLUGIN_TIMEOUT`` values not understood."""
    return [w for w in (strict()[1], plugin_timeout()[1]) if w is not None]


def unknown_selection(selection: dict[str, str], plugins: list[str], dists: list[str]) -> str | None:
    """The warning for names in ``FLOWCOND_LOAD_PLUGINS`` that are neither an installed plugin
    (entry point) nor a distribution providing one; None if every name is known."""
    known = {normalize(n) for n in plugins + dists}
    known |= {f"{normalize(d)}:{normalize(p)}" for d in dists for p in plugins}  # dist:entry point
    unknown = [written for norm, written in selection.items() if norm not in known]
    if not unknown:
        return None
    return (
        f"FLOWCOND_LOAD_PLUGINS names {', '.join(map(repr, unknown))}: no installed plugin or "
        f"distribution is called that; installed plugins: {', '.join(sorted(set(plugins))) or 'none'} "
        f"(distributions: {', '.join(sorted(set(dists))) or 'none'})"
    )


# ------------------------------------------------------------------ time limit
class PluginTimeout(BaseException):
    """A plugin's import or hook ran past ``FLOWCOND_PLUGIN_TIMEOUT``. A BaseException, so that
    the plugin's own ``except Exception`` does not swallow it."""


_active = threading.local()


def _can_alarm() -> bool:
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and not getattr(_active, "on", False)  # an outer limit already bounds this code
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0  # someone else's timer: leave it alone
    )


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`PluginTimeout` ("did not finish WHAT within N s") in the body once it has
    run ``seconds`` (0: no limit), and again every 0.1 s until it stops, so that a loop catching
    the first one still ends. Uses SIGALRM: without it (Windows), outside the main thread or
    inside another limit or timer, the body runs unbounded. The previous handler is restored."""
    if not seconds or not _can_alarm():
        yield
        return
    message = f"did not finish {what} within {seconds:g} s (FLOWCOND_PLUGIN_TIMEOUT)"
    armed = [True]

    def alarm(signum: int, frame: Any) -> None:
        if armed[0]:
            raise PluginTimeout(message)

    previous = signal.signal(signal.SIGALRM, alarm)
    _active.on = True
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
        yield
    finally:
        while True:  # a late alarm may interrupt this clean-up: finish it all the same
            try:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                _active.on = False
                break
            except PluginTimeout:
                continue


# ------------------------------------------------------------------ command guard
_OWNERS = "_flowcond_command_owners"


def command_owners(group: Any) -> dict[str, str]:
    """Which plugin added each plugin command of a click group (built-ins are not listed)."""
    owners = getattr(group, _OWNERS, None)
    if owners is None:
        owners = {}
        setattr(group, _OWNERS, owners)
    return owners


@contextmanager
def command_guard(group: Any, plugin: str, refuse: Callable[[str], None]) -> Iterator[None]:
    """Let ``plugin`` add commands to ``group`` in the body, but not replace or remove one it did
    not add itself: such a change is undone and ``refuse(problem)`` is called with one line
    ("tried to replace the built-in command 'sample': refused, 'sample' is unchanged")."""
    commands = getattr(group, "commands", None)
    if not isinstance(commands, dict):
        yield
        return
    before = dict(commands)
    owners = command_owners(group)
    try:
        yield
    finally:
        problems = []
        for name, command in list(commands.items()):
            old = before.get(name)
            if old is None or owners.get(name) == plugin:
                owners[name] = plugin
            elif command is not old:
                commands[name] = old
                problems.append(("replace", name))
        for name, old in before.items():
            if name not in commands:
                commands[name] = old
                problems.append(("remove", name))
        for verb, name in problems:
            whose = (
                f"command {name!r} of plugin {owners[name]!r}"
                if name in owners
                else f"built-in command {name!r}"
            )
            refuse(f"tried to {verb} the {whose}: refused, {name!r} is unchanged")
