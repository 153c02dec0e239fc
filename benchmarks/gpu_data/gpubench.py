"""Generated images for benchmarks/gpu.sh: the dataset ``gpubench`` (no download, no files).

Smooth random colour images (upsampled low-resolution noise) with a categorical ``class`` field;
the size comes from ``$GPUBENCH_SIZE`` (64 for the paper's CelebA shape, 8 for ``--tiny``) and the
number of images from ``$GPUBENCH_N`` (train; the test split is a quarter of it).
"""

import os

from flowcond import hookimpl


def load(split, root=None, download=False):
    import torch
    import torch.nn.functional as F

    from flowcond.datasets import ImageDataset, LabelField

    size = int(os.environ.get("GPUBENCH_SIZE", "64"))
    n = int(os.environ.get("GPUBENCH_N", "2048"))
    n = n if split == "train" else max(n // 4, 8)
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    low = torch.rand(n, 3, max(size // 8, 1), max(size // 8, 1), generator=g)
    images = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.arange(n) % 10
    field = LabelField("class", "categorical", 10, [str(i) for i in range(10)])
    return ImageDataset(
        images, {"class": labels}, [field], {"name": "gpubench", "split": split, "size": size}
    )


@hookimpl
def register_datasets(register):
    register("gpubench", load, "generated smooth colour images for benchmarks/gpu.sh")
