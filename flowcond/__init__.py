"""flowcond: make a frozen, pretrained Glow controllable with CAGlow condition plugins.

The public API is listed in ``__all__`` and described in ``docs/api.md``. Names are imported on
first use, so ``import flowcond`` (and ``flowcond --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from flowcond._compat import install_old_import_paths
from flowcond.errors import ConfigError, FileFormatError, FlowcondError, PluginError
from flowcond.hookspecs import hookimpl

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first access)
_LAZY = {
    "Backbone": "flowcond.flow.backbone",
    "BackboneConfig": "flowcond.flow.config",
    "TrainConfig": "flowcond.flow.config",
    "train_backbone": "flowcond.flow.train",
    "import_backbone": "flowcond.flow.import_backbone",
    "NormflowsImportConfig": "flowcond.flow.import_config",
    "AttachConfig": "flowcond.caglow.config",
    "Lambdas": "flowcond.caglow.config",
    "attach": "flowcond.caglow.attach",
    "Heads": "flowcond.caglow.heads",
    "LatentCache": "flowcond.caglow.latents",
    "ConditionKind": "flowcond.conditions",
    "ImageDataset": "flowcond.datasets",
    "LabelField": "flowcond.datasets",
    "load_dataset": "flowcond.datasets",
    "save_grid": "flowcond.io.images",
}

__all__ = [
    "AttachConfig",
    "Backbone",
    "BackboneConfig",
    "ConditionKind",
    "ConfigError",
    "FileFormatError",
    "FlowcondError",
    "Heads",
    "ImageDataset",
    "LabelField",
    "Lambdas",
    "LatentCache",
    "NormflowsImportConfig",
    "PluginError",
    "TrainConfig",
    "__version__",
    "attach",
    "hookimpl",
    "import_backbone",
    "load_dataset",
    "save_grid",
    "train_backbone",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flowcond' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


install_old_import_paths()

if TYPE_CHECKING:
    from flowcond.caglow.attach import attach
    from flowcond.caglow.config import AttachConfig, Lambdas
    from flowcond.caglow.heads import Heads
    from flowcond.caglow.latents import LatentCache
    from flowcond.conditions import ConditionKind
    from flowcond.datasets import ImageDataset, LabelField, load_dataset
    from flowcond.flow.backbone import Backbone
    from flowcond.flow.config import BackboneConfig, TrainConfig
    from flowcond.flow.import_backbone import import_backbone
    from flowcond.flow.import_config import NormflowsImportConfig
    from flowcond.flow.train import train_backbone
    from flowcond.io.images import save_grid
