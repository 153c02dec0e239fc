"""flowcond: make a frozen, pretrained Glow controllable with CAGlow condition plugins."""

from flowcond.conditions import ConditionKind
from flowcond.errors import ConfigError, FileFormatError, FlowcondError, PluginError
from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig
from flowcond.hookspecs import hookimpl

__version__ = "0.1.0"
