"""pytest fixtures for flowcond plugin authors.

Installed with flowcond and loaded by pytest through the ``pytest11`` entry point, so a plugin's
tests can use them without importing anything:

``flowcond_plugins``
    A :class:`PluginSandbox`: installed plugins stay loaded, and whatever the test registers,
    loads (``--plugins-dir``, ``sandbox.reload()``) or adds to the CLI is undone afterwards
    (``flowcond.registry.default.snapshot()`` / ``restore()``).
``flowcond_no_plugins``
    The same, but starting from no plugins at all, with entry-point autoloading off.
``flowcond_register``
    ``flowcond_register(plugin, name=None, shadow=True)`` registers a module, object or
    ConditionKind subclass for one test; a kind class shadows an installed kind of the same name.
``flowcond_register_dataset``
    ``flowcond_register_dataset(name, loader, description="", extends=None)`` registers a dataset
    loader for one test (it shadows an installed dataset of the same name).
``flowcond_cli``
    ``flowcond_cli("plugins", "--all")`` runs ``flowcond.cli:cli`` in a click ``CliRunner``; the
    result has ``exit_code``, ``stdout``, ``stderr`` and ``output``.
``tiny_backbone``
    A tiny random, initialized, frozen backbone (1x8x8 images, 1 level, 2 steps).
``tiny_dataset``
    :func:`tiny_image_dataset`: 32 random 1x8x8 images with a categorical ``digit`` field
    (10 named classes) and a binary ``attributes`` field (smiling, eyeglasses, male).

``check_condition_kind(KindClass, options=None, dataset=None)`` (from
:mod:`flowcond.caglow.conformance`) runs every contract check on a kind. Heavy imports happen
inside the fixtures, so loading this module costs pytest nothing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import pytest

if TYPE_CHECKING:
    from click.testing import Result

    from flowcond.datasets import ImageDataset
    from flowcond.flow.backbone import Backbone
    from flowcond.registry import PluginRegistry


class PluginSandbox:
    """Registrations made through it, or by anything during a test, are undone by :meth:`close`.

    Works on a :class:`flowcond.registry.PluginRegistry` (default: the one flowcond uses) through
    its public API: :meth:`~flowcond.registry.PluginRegistry.snapshot` when created,
    :meth:`~flowcond.registry.PluginRegistry.restore` when closed. Commands that plugins add to
    the ``flowcond`` CLI group during the test are removed too.
    """

    def __init__(self, autoload: bool = True, registry: PluginRegistry | None = None) -> None:
        from flowcond import registry as registry_module
        from flowcond.registry.guards import command_owners

        self.registry = registry if registry is not None else registry_module.default
        if self.registry is registry_module.default:
            # the CLI group exists (and has had its historic register_commands call) before the
            # snapshot, so that plugins registered during the test add their commands to it
            import flowcond.cli  # noqa: F401
        if autoload:
            self.registry.load_entry_points()
        self._saved = self.registry.snapshot()
        cli = self._cli()
        self._commands = dict(cli.commands) if cli is not None else None
        self._owners = dict(command_owners(cli)) if cli is not None else None
        self._counter = 0
        if not autoload:
            self.registry.clear(autoload=False)  # and entry points are not loaded

    # ------------------------------------------------------------- state
    def _cli(self) -> Any:
        mod = sys.modules.get("flowcond.cli")
        return mod.cli if mod is not None else None

    def clear(self) -> None:
        """Unregister every plugin and forget load errors (autoload state unchanged)."""
        self.registry.clear()

    def close(self) -> None:
        """Restore the registry (plugins, load errors, autoload state) and the CLI commands."""
        from flowcond.registry.guards import command_owners

        self.registry.restore(self._saved)
        cli = self._cli()
        if cli is not None and self._commands is not None:
            cli.commands.clear()
            cli.commands.update(self._commands)
            owners = command_owners(cli)  # which plugin added which command
            owners.clear()
            owners.update(self._owners or {})

    # ------------------------------------------------------------- actions
    @property
    def pm(self) -> Any:
        """The pluggy PluginManager (``flowcond.registry.pm``)."""
        return self.registry.pm

    @property
    def errors(self) -> list:
        """Plugin load and hook errors recorded so far (``flowcond.registry.load_errors``)."""
        return self.registry.load_errors

    def register(self, plugin: Any, name: str | None = None, shadow: bool = True) -> str:
        """Register a module, an object with hook implementations, or a ConditionKind subclass
        (wrapped in a plugin whose ``register_conditions`` registers it). Returns its name.

        A kind class registered with ``shadow=True`` (default) keeps its plain name even if an
        installed plugin registers the same name (test your kind while it is installed); with
        ``shadow=False`` the name is ambiguous, as with two installed plugins."""
        from flowcond.conditions import ConditionKind

        if isinstance(plugin, type) and issubclass(plugin, ConditionKind):
            plugin = _KindPlugin(plugin, shadow)
            name = name or f"test-{plugin.kind.name}"
        if name is None:
            self._counter += 1
            name = getattr(plugin, "__name__", None) or f"test-plugin-{self._counter}"
        return self.registry.register(plugin, name)

    def register_dataset(
        self,
        name: str,
        loader: Callable,
        description: str = "",
        extends: str | None = None,
        shadow: bool = True,
    ) -> str:
        """Register a dataset ``loader(split, root=None, download=False, **options)`` as ``name``
        (shadowing an installed dataset of that name unless ``shadow=False``); the plugin name."""
        plugin = _DatasetPlugin(name, loader, description, extends, shadow)
        return self.registry.register(plugin, f"test-dataset-{name}")

    def unregister(self, name: str) -> None:
        """Unregister the plugin called ``name``."""
        self.registry.unregister(name)

    def reload(self) -> None:
        """Forget every plugin and load the entry points again (reading ``FLOWCOND_LOAD_PLUGINS``
        and ``FLOWCOND_STRICT_PLUGINS`` as they are now)."""
        self.registry.reload()

    def load_plugins_dir(self, path: str | Path) -> list[str]:
        """Load a ``--plugins-dir`` folder; returns the plugin names."""
        return self.registry.load_plugins_dir(path)

    def names(self) -> list[str]:
        """Names of the registered plugins."""
        return self.registry.names()

    def condition_kinds(self) -> dict[str, Any]:
        """``flowcond.registry.condition_kinds()``."""
        return self.registry.condition_kinds()

    def datasets(self) -> dict[str, Any]:
        """``flowcond.registry.datasets()``."""
        return self.registry.datasets()


class _KindPlugin:
    """A plugin registering one condition kind (made by :meth:`PluginSandbox.register`)."""

    def __init__(self, kind: type, shadow: bool = True) -> None:
        self.kind = kind
        self.flowcond_shadow = shadow  # read by the registry: keeps the plain name

    @pluggy.HookimplMarker("flowcond")  # = flowcond.hookimpl, without importing flowcond here
    def register_conditions(self, register: Callable) -> None:
        register(self.kind)


class _DatasetPlugin:
    """A plugin registering one dataset (made by :meth:`PluginSandbox.register_dataset`)."""

    def __init__(
        self, name: str, loader: Callable, description: str, extends: str | None, shadow: bool
    ) -> None:
        self.args = (name, loader, description, extends)
        self.flowcond_shadow = shadow

    @pluggy.HookimplMarker("flowcond")
    def register_datasets(self, register: Callable) -> None:
        name, loader, description, extends = self.args
        register(name, loader, description, extends=extends)


def check_condition_kind(
    kind_class: type, options: dict[str, Any] | None = None, dataset: Any = None, backbone: Any = None
) -> Any:
    """Every contract check on ``kind_class`` (:func:`flowcond.caglow.conformance.check_condition_kind`):
    a one-line PluginError at the first failure; returns the kind built on ``dataset``."""
    from flowcond.caglow.conformance import check_condition_kind as check

    return check(kind_class, options, dataset, backbone)


def tiny_image_dataset(n: int = 32, seed: int = 0) -> ImageDataset:
    """``n`` random 1x8x8 images with a categorical ``digit`` field (10 classes named '0'..'9'),
    a binary ``attributes`` field (smiling, eyeglasses, male) and a continuous ``measures`` field
    (brightness: mean pixel, contrast: pixel std of each image; address one column as
    ``measures.brightness``)."""
    import torch

    from flowcond.datasets import ImageDataset, LabelField

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=g)
    digit = torch.arange(n) % 10
    attributes = (torch.rand(n, 3, generator=g) < torch.tensor([0.5, 0.25, 0.75])).float()
    measures = torch.stack([images.mean((1, 2, 3)), images.std((1, 2, 3))], dim=1)
    return ImageDataset(
        images,
        {"digit": digit, "attributes": attributes, "measures": measures},
        [
            LabelField("digit", "categorical", 10, [str(i) for i in range(10)]),
            LabelField("attributes", "binary", 3, ["smiling", "eyeglasses", "male"]),
            LabelField("measures", "continuous", 2, ["brightness", "contrast"]),
        ],
        {"name": "tiny", "split": "train"},
    )


def make_distribution(
    path: str | Path,
    name: str,
    entry_points: dict[str, str],
    files: dict[str, str] | None = None,
    version: str = "0.1.0",
) -> Path:
    """Write a fake installed distribution into folder ``path``: ``<name>-<version>.dist-info``
    with ``[flowcond]`` entry points (``{entry_name: "module"}``) and source ``files``
    (``{"module.py": "..."}``). Put ``path`` on ``sys.path`` (``monkeypatch.syspath_prepend``) to
    "install" it, then ``flowcond_plugins.reload()``."""
    root = Path(path)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[flowcond]\n{eps}")
    for rel, text in (files or {}).items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    importlib.invalidate_caches()
    return root


# ------------------------------------------------------------------- fixtures
@pytest.fixture
def flowcond_plugins() -> Iterator[PluginSandbox]:
    """Installed plugins loaded; every registration made during the test is undone after it."""
    sandbox = PluginSandbox(autoload=True)
    try:
        yield sandbox
    finally:
        sandbox.close()


@pytest.fixture
def flowcond_no_plugins() -> Iterator[PluginSandbox]:
    """No plugins registered and entry-point autoloading off, for the test; restored after it."""
    sandbox = PluginSandbox(autoload=False)
    try:
        yield sandbox
    finally:
        sandbox.close()


@pytest.fixture
def flowcond_register(flowcond_plugins: PluginSandbox) -> Callable[..., str]:
    """``flowcond_register(plugin, name=None, shadow=True) -> name``: register a plugin for this
    test only (a kind class shadows an installed kind of the same name)."""
    return flowcond_plugins.register


@pytest.fixture
def flowcond_register_dataset(flowcond_plugins: PluginSandbox) -> Callable[..., str]:
    """``flowcond_register_dataset(name, loader, description="", extends=None)``: register a
    dataset loader for this test only (shadowing an installed dataset of the same name)."""
    return flowcond_plugins.register_dataset


class CliInvoker:
    """Calls ``flowcond.cli:cli`` in a click CliRunner with separate stdout and stderr."""

    def __init__(self) -> None:
        from click.testing import CliRunner

        try:
            self.runner = CliRunner(mix_stderr=False)  # click < 8.2
        except TypeError:
            self.runner = CliRunner()

    def __call__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        input: str | None = None,
        catch_exceptions: bool = True,
    ) -> Result:
        """Run ``flowcond ARGS...``; click's Result (``exit_code``, ``stdout``, ``stderr``)."""
        from flowcond.cli import cli

        return self.runner.invoke(cli, list(args), env=env, input=input, catch_exceptions=catch_exceptions)


@pytest.fixture
def flowcond_cli(flowcond_plugins: PluginSandbox) -> CliInvoker:
    """Run the ``flowcond`` CLI in-process: ``flowcond_cli("plugins", "--all")``."""
    return CliInvoker()


@pytest.fixture
def tiny_backbone() -> Backbone:
    """A tiny random backbone on 1x8x8 images, initialized on random data and frozen."""
    import torch

    from flowcond import Backbone, BackboneConfig

    bb = Backbone(BackboneConfig(channels=1, height=8, width=8, levels=1, steps=2, hidden=8))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb.initialize(torch.rand(16, 1, 8, 8))
    return bb.freeze()


@pytest.fixture
def tiny_dataset() -> ImageDataset:
    """:func:`tiny_image_dataset` (32 images, ``digit`` categorical, ``attributes`` binary,
    ``measures`` continuous)."""
    return tiny_image_dataset()
