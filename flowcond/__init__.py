"""flowcond: make a frozen, pretrained Glow controllable with CAGlow condition plugins."""

from .backbone import Backbone
from .conditions import ConditionKind
from .config import BackboneConfig
from .errors import ConfigError, FileFormatError, FlowcondError, PluginError
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "BackboneConfig",
    "ConditionKind",
    "ConfigError",
    "FileFormatError",
    "FlowcondError",
    "PluginError",
    "hookimpl",
    "__version__",
]
