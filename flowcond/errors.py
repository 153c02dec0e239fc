"""Exceptions a user can act on. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

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


def validation_message(error: Any) -> str:
    """A pydantic ``ValidationError`` as one line: ``field: problem; field: problem``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in error.errors())


class PluginError(FlowcondError):
    """A plugin is missing, broken, or returned something invalid."""
