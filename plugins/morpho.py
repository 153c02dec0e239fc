"""Dataset ``mnist5k-morpho``: ``mnist5k`` plus Morpho-MNIST-style binary attributes.

Labels: ``digit`` (as in ``mnist5k``), ``attributes`` (binary, 4: thick, slanted, wide, tall) and
``morphometrics`` (continuous, 4: thickness, slant, width, height; see :mod:`flowcond.paper.morpho`).
An attribute is 1 when the measure is strictly above the median of that measure over the
*training* split; both splits use the training medians, which the dataset spec records
(``spec["medians"]``). ``slanted`` uses the signed slant, so it means "leans right more than the
median digit".

Measures are computed once per image set and cached in
``$FLOWCOND_CACHE/morpho`` (default ``~/.cache/flowcond/morpho``), keyed by a SHA-256 of the
images and the measuring options; the cache file is written atomically.

numpy, scipy and torch are imported when the dataset is loaded, not with this module
(``flowcond --help`` imports every plugin).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from flowcond import hookimpl
from flowcond.datasets import ImageDataset, LabelField
from flowcond.errors import FileFormatError
from flowcond.io import safefile
from flowcond.io.cache import cache_root

if TYPE_CHECKING:
    import numpy as np
    import torch

ATTRIBUTE_NAMES = ["thick", "slanted", "wide", "tall"]
CACHE_KIND = "morpho-cache"


def default_cache_dir() -> Path:
    """``$FLOWCOND_CACHE`` or ``~/.cache/flowcond``, plus ``morpho``."""
    return cache_root() / "morpho"


def measure(images: torch.Tensor, **options: object) -> dict[str, np.ndarray]:
    """:func:`flowcond.paper.morpho.measure` (imported on first use: it needs numpy and scipy)."""
    from flowcond.paper import morpho

    return morpho.measure(images, **options)


def _images(ds: ImageDataset) -> torch.Tensor:
    import torch

    if isinstance(ds.images, torch.Tensor):
        return ds.images
    return torch.stack([ds[i][0] for i in range(len(ds))])


def cached_measures(
    ds: ImageDataset, cache_dir: str | os.PathLike | None = None, use_cache: bool = True
) -> np.ndarray:
    """Morphometrics of every image of ``ds``, float64 (N, 4) in ``MEASURES`` order, cached."""
    import torch

    from flowcond.paper.morpho import DEFAULTS, MEASURES, MORPHO_VERSION, as_array

    images = _images(ds).detach().to("cpu", torch.float32).contiguous()
    options = {**DEFAULTS, "version": MORPHO_VERSION}
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.numpy().tobytes())
    key = h.hexdigest()
    name = f"{ds.spec.get('name', 'data')}-{ds.spec.get('split', 'all')}".replace(os.sep, "_")
    path = Path(cache_dir or default_cache_dir()) / f"{name}-{key[:16]}.safetensors"
    if use_cache and path.is_file():
        try:
            tensors, header = safefile.read(path, CACHE_KIND)
            if header.get("key") == key and header.get("measures") == list(MEASURES):
                return tensors["measures"].numpy()
        except (FileFormatError, KeyError):
            pass  # a damaged or foreign cache file is recomputed and replaced
    values = as_array(measure(images, **DEFAULTS))
    if use_cache:
        safefile.write(
            path,
            {"measures": torch.from_numpy(values)},
            {
                "kind": CACHE_KIND,
                "key": key,
                "measures": list(MEASURES),
                "options": options,
                "dataset": ds.spec,
            },
        )
    return values


def medians_of(values: np.ndarray) -> dict[str, float]:
    import numpy as np

    from flowcond.paper.morpho import MEASURES

    return {m: float(np.nanmedian(values[:, j])) for j, m in enumerate(MEASURES)}


def with_morpho_labels(ds: ImageDataset, train: ImageDataset, name: str, cache: bool = True) -> ImageDataset:
    """``ds`` plus ``attributes`` (binarized at ``train``'s medians) and raw ``morphometrics``."""
    import numpy as np
    import torch

    from flowcond.paper.morpho import DEFAULTS, MEASURES, MORPHO_VERSION

    train_values = cached_measures(train, use_cache=cache)
    values = train_values if ds is train else cached_measures(ds, use_cache=cache)
    medians = medians_of(train_values)
    thresholds = np.array([medians[m] for m in MEASURES])
    attributes = torch.from_numpy((values > thresholds).astype(np.float32))
    labels = {
        **ds.labels,
        "attributes": attributes,
        "morphometrics": torch.from_numpy(values.astype(np.float32)),
    }
    schema = [
        *ds.schema.values(),
        LabelField("attributes", "binary", 4, list(ATTRIBUTE_NAMES)),
        LabelField("morphometrics", "continuous", 4, list(MEASURES)),
    ]
    spec = {
        **ds.spec,
        "name": name,
        "base": ds.spec.get("name"),
        "morpho": {**DEFAULTS, "version": MORPHO_VERSION},
        "medians": medians,
        "attribute_of": dict(zip(ATTRIBUTE_NAMES, MEASURES, strict=True)),
    }
    return ImageDataset(ds.images, labels, schema, spec)


def load_mnist5k_morpho(
    split: str, root: str | None = None, download: bool = False, cache: bool = True
) -> ImageDataset:
    """mnist5k with binary attributes thick/slanted/wide/tall at the training-set medians."""
    from flowcond_plugins.datasets import load_mnist5k

    train = load_mnist5k("train")
    ds = train if split == "train" else load_mnist5k(split)
    return with_morpho_labels(ds, train, "mnist5k-morpho", cache=cache)


@hookimpl
def register_datasets(register):
    register(
        "mnist5k-morpho",
        load_mnist5k_morpho,
        "mnist5k + binary attributes thick/slanted/wide/tall (Morpho-MNIST measure > train median) "
        "+ continuous morphometrics thickness/slant/width/height",
        extends="mnist5k",
    )
