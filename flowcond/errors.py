"""Exceptions a user can act on. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any


class FlowcondError(Exception):
    """Base class of every error flowcond raises on purpose."""


class FileFormatError(FlowcondError):
    """A model, heads or checkpoint file is missing, truncated, corrupted or of the wrong kind."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(FlowcondError):
    """A configuration value (CLI option, config file field) is invalid."""


def validation_message(error: Any, where: str = "", whole: str = "config") -> str:
    """A pydantic ``ValidationError`` as one line: ``field: problem; field: problem``.

    ``where`` prefixes every field (the header field that was validated, e.g. ``attach_config``);
    ``whole`` names an error about the object as a whole (no field).
    """
    parts = []
    for e in error.errors():
        loc = ".".join(str(p) for p in (where, *e["loc"]) if p != "") or whole
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


class PluginError(FlowcondError):
    """A plugin is missing, broken, or returned something invalid."""


def exception_line(exc: BaseException) -> str:
    """The last line of an exception's ``Type: message`` text."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]


@dataclass
class LoadError:
    """A plugin that could not be loaded or whose hook raised (recorded, printed as a warning).

    ``failed=False``: a warning that is not a failure of the plugin (a command it may not
    replace, refused) or, with ``plugin=""``, about a ``FLOWCOND_*`` setting."""

    plugin: str
    distribution: str | None
    error: str
    failed: bool = True

    def __str__(self) -> str:
        if not self.plugin:
            return self.error
        dist = f" (from {self.distribution})" if self.distribution else ""
        return f"plugin {self.plugin!r}{dist}{' failed' if self.failed else ''}: {self.error}"
