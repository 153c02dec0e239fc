"""Datasets: images in [0, 1] plus labels described by a label schema.

Loaders are registered by plugins (hook ``register_datasets``); the built-in ones live in
``plugins/datasets.py``. Labels are always held in memory as whole tensors (cheap even for CelebA),
images may be loaded lazily.

Importing this module does not import torch (plugins import it, and ``flowcond --help`` imports
every plugin); the methods that need torch import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from flowcond.errors import ConfigError, PluginError

if TYPE_CHECKING:
    import torch

LabelKind = Literal["categorical", "binary", "continuous"]


@dataclass
class LabelField:
    """One label of a dataset: ``categorical`` (LongTensor (N,)), ``binary`` (float (N, size) in
    {0, 1}) or ``continuous`` (float (N, size))."""

    name: str
    kind: LabelKind
    size: int
    #: class names (categorical) or column names (binary, continuous); may be empty
    names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def columns(self) -> list[str]:
        """Column names of a binary or continuous field (its ``names``, else ``"0"``, ``"1"``,
        ...); a categorical field has one unnamed column, ``[]``."""
        if self.kind == "categorical":
            return []
        return list(self.names) if len(self.names) == self.size else [str(i) for i in range(self.size)]

    def column_index(self, column: str, plugin: str | None = None) -> int:
        """Index of ``column`` (a column name, ignoring case, or an index); ConfigError naming
        the field and its columns otherwise (and ``plugin``, if given)."""
        columns = self.columns
        key = column.strip()
        lowered = [c.lower() for c in columns]
        if key.lower() in lowered:
            return lowered.index(key.lower())
        if key.isdigit() and int(key) < len(columns):
            return int(key)
        who = f"condition plugin {plugin!r}: " if plugin else ""
        known = ", ".join(columns) if columns else "none (a categorical field has no columns)"
        raise ConfigError(f"{who}label field {self.name!r} has no column {key!r}; its columns: {known}")


class ImageDataset:
    """Images in [0, 1] of shape ``(C, H, W)``, labels ``{field: tensor}`` and their schema.

    ``images`` is either a tensor ``(N, C, H, W)`` or a callable ``index -> (C, H, W)`` for lazy
    loading (then ``image_shape`` must be given). Items are ``(image, {field: label})``: a map-style
    dataset (``len`` and indexing), usable with ``torch.utils.data.DataLoader``.

    ``spec`` (JSON-serializable) says which data this is: ``name`` (the registered dataset name)
    and ``split`` (``train``/``test``) name its latent cache folder, and the whole spec, with the
    size, a fingerprint of the labels and the provider's version, is the cache's key.
    """

    def __init__(
        self,
        images: torch.Tensor | Callable[[int], torch.Tensor],
        labels: dict[str, torch.Tensor],
        schema: list[LabelField],
        spec: dict[str, Any],
        image_shape: tuple[int, int, int] | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.schema = {f.name: f for f in schema}
        self.spec = spec
        #: which plugin loaded it: ``{"plugin", "distribution", "version"}`` (set by load_dataset)
        self.provider: dict[str, Any] | None = None
        if not callable(images):  # a tensor
            self._n = images.shape[0]
            self.image_shape = tuple(images.shape[1:])
        else:
            if image_shape is None:
                raise ValueError("image_shape is required for lazily loaded images")
            self._n = len(next(iter(labels.values())))
            self.image_shape = tuple(image_shape)
        for name, t in labels.items():
            if len(t) != self._n:
                raise ValueError(f"label {name!r} has {len(t)} rows for {self._n} images")

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.images(i) if callable(self.images) else self.images[i]
        return img, {k: v[i] for k, v in self.labels.items()}

    def images_at(self, index: Any) -> torch.Tensor:
        """Images ``(len(index), C, H, W)`` at ``index`` (a slice, range, list or index tensor)."""
        if not callable(self.images):
            return self.images[index]
        import torch

        if isinstance(index, slice):
            index = range(*index.indices(len(self)))
        return torch.stack([self.images(int(i)) for i in index])

    def all_images(self) -> torch.Tensor:
        """Every image of the dataset in memory, ``(N, C, H, W)`` float."""
        return self.images_at(slice(None)).float()

    def describe(self) -> dict[str, Any]:
        return {
            **self.spec,
            "size": len(self),
            "image_shape": list(self.image_shape),
            "labels": [f.to_dict() for f in self.schema.values()],
        }


def check_loader(name: Any, loader: Any, extends: Any, plugin: str) -> None:
    """PluginError unless ``register(name, loader, description, extends)`` of the hook
    ``register_datasets`` got a name, a callable loader and, if given, the name of the dataset
    it extends."""
    if not isinstance(name, str) or not name or not callable(loader):
        raise PluginError(f"plugin {plugin!r}: register(name, loader) needs a name and a callable")
    if extends is not None and (not isinstance(extends, str) or not extends):
        raise PluginError(f"plugin {plugin!r}: dataset {name!r}: extends must be a dataset name")


def load_dataset(
    name: str, split: str = "train", root: str | None = None, download: bool = False, **options: Any
) -> ImageDataset:
    """Load a registered dataset by name (``flowcond plugins`` lists them), or by qualified
    name ``provider:name`` when two plugins register the name. The dataset's :attr:`ImageDataset.provider`
    records which plugin, distribution and version loaded it (part of the latent cache key)."""
    from flowcond.registry import dataset_names

    names = dataset_names()
    found = names.find(name)  # PluginError if two plugins register it
    if found is None:
        raise ConfigError(f"unknown dataset {name!r}; registered datasets: {names.listing()}")
    if split not in ("train", "test"):
        raise ConfigError(f"dataset split must be 'train' or 'test', got {split!r}")
    dataset = found.obj(split=split, root=root, download=download, **options)
    if isinstance(dataset, ImageDataset):
        dataset.provider = {
            "plugin": found.plugin,
            "distribution": found.distribution,
            "version": found.version,
        }
    return dataset
