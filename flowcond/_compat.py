"""Import paths of flowcond 0.1 (flat modules), kept working for one release with a warning.

``import flowcond.attach`` (and the other old module paths) gives the module's new home, e.g.
``flowcond.caglow.attach``, and warns with a ``DeprecationWarning`` naming it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

#: old module path -> new module path
OLD_PATHS: dict[str, tuple[str, ...]] = {
    "flowcond.atomic": ("flowcond.io.atomic",),
    "flowcond.safefile": ("flowcond.io.safefile",),
    "flowcond.images": ("flowcond.io.images",),
    "flowcond.config": ("flowcond.flow.config",),
    "flowcond.backbone": ("flowcond.flow.backbone",),
    "flowcond.coupling": ("flowcond.flow.coupling",),
    "flowcond.fastflow": ("flowcond.flow.fast", "flowcond.flow.fast_ops"),
    "flowcond.train_backbone": ("flowcond.flow.train", "flowcond.flow.config", "flowcond.training"),
    "flowcond.attach": (
        "flowcond.caglow.attach",
        "flowcond.caglow.config",
        "flowcond.caglow.losses",
        "flowcond.training",
    ),
    "flowcond.latents": ("flowcond.caglow.latents",),
    "flowcond.encoder": ("flowcond.caglow.encoder",),
    "flowcond.supervision": ("flowcond.caglow.supervision",),
    "flowcond.heads": ("flowcond.caglow.heads",),
    "flowcond.generate": ("flowcond.caglow.generate",),
    "flowcond.evaluator": (
        "flowcond.paper.evaluator",
        "flowcond.paper.train_evaluator",
        "flowcond.augment",
        "flowcond.paper.config",
    ),
    "flowcond.evaluate": (
        "flowcond.paper.run",
        "flowcond.paper.config",
        "flowcond.paper.discovery",
        "flowcond.paper.generators",
        "flowcond.paper.tables",
        "flowcond.paper.figures",
        "flowcond.paper.report",
    ),
    "flowcond.metrics": ("flowcond.paper.metrics",),
    "flowcond.baselines": ("flowcond.paper.baselines",),
    "flowcond.morpho": ("flowcond.paper.morpho",),
    "flowcond.plugins": ("flowcond.registry",),
    "flowcond.threads": ("flowcond.training",),
}


class _OldPath(types.ModuleType):
    """Stands in for an old module: attributes come from the new one. Calling it calls the new
    module's function of the same name (``flowcond.attach`` was a module *and* the function)."""

    def __init__(self, name: str, targets: tuple[str, ...]) -> None:
        super().__init__(name)
        self.__dict__["_targets"] = targets

    def _module(self) -> types.ModuleType:
        return importlib.import_module(self.__dict__["_targets"][0])

    def __getattr__(self, attr: str) -> Any:
        # the old module's contents now live in one or more modules of the new layout
        for target in self.__dict__["_targets"]:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def __dir__(self) -> list[str]:
        return sorted({n for t in self.__dict__["_targets"] for n in dir(importlib.import_module(t))})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        short = self.__name__.rsplit(".", 1)[-1]
        return getattr(self._module(), short)(*args, **kwargs)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in OLD_PATHS:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=False)

    def create_module(self, spec: Any) -> types.ModuleType:
        new = OLD_PATHS[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new[0]}; the old path works until flowcond 0.3",
            DeprecationWarning,
            stacklevel=2,
        )
        return _OldPath(spec.name, new)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install_old_import_paths() -> None:
    """Make the old module paths importable (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
