"""Built-in dataset ``celeba``: CelebA read from its real on-disk layout, no download, no MD5 check.

``--root`` is the folder holding ``celeba/`` or the ``celeba`` folder itself (see
:mod:`flowcond_plugins.celeba_layout`). Splits follow ``list_eval_partition.txt``: ``train`` is
partition 0 (162,770 images), ``test`` partition 2 (19,962); partition 1 (valid) is ``valid``
from Python. Images are decoded lazily (JPEG -> centre crop ``crop`` -> resize ``size``, default
148 -> 64, as in the Glow/Real NVP 64x64 set-up) in whichever process asks: the latent cache
decodes them in DataLoader workers. Model them at 5 bits with ``train-backbone --n-bits 5``.

Labels: ``identity`` (categorical; CelebA's identity numbers remapped to ``0 .. n-1`` over the
*whole* identity file, so an id means the same person in every split; class names ``id_<number>``)
and ``attributes`` (40 binary columns named as in the file); with ``landmarks=True`` (dataset
``celeba-landmarks``) also ``landmarks`` (10 continuous columns, in pixels of the cropped and
resized image) and ``bbox`` (4 columns, pixels of the original in-the-wild photo, as CelebA gives
them). A missing or malformed file is a one-line :class:`ConfigError` naming the file and line.
The annotation files' MD5 sums are checked only with ``verify=True`` (or ``flowcond celeba-check
--verify``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from flowcond_plugins.celeba_layout import (
    ATTRIBUTES,
    BBOX,
    BBOX_HEADER,
    IDENTITY,
    IMAGES,
    LANDMARKS,
    MD5,
    PARTITION,
)

from flowcond.datasets import ImageDataset, LabelField
from flowcond.errors import ConfigError

SPLITS = {"train": 0, "valid": 1, "test": 2}
#: parsed annotation files, keyed by (path, size, mtime): train and test splits parse them once
_PARSED: dict[tuple[str, int, int], Any] = {}


def _error(message: str) -> ConfigError:
    return ConfigError(f"dataset 'celeba': {message}")


def find_folder(root: str | os.PathLike | None) -> Path:
    """The folder holding ``img_align_celeba/`` and the annotation files: ``root/celeba`` or
    ``root`` itself."""
    if not root:
        raise _error("reads CelebA from disk: pass --root DIR (the folder holding celeba/)")
    base = Path(root).expanduser()
    for folder in (base / "celeba", base):
        if (folder / IMAGES).is_dir() or (folder / PARTITION).is_file():
            return folder
    raise _error(
        f"{base} holds neither celeba/{IMAGES}/ nor {IMAGES}/ (pass --root the folder holding "
        f"celeba/, or the celeba folder itself)"
    )


def _lines(path: Path) -> list[str]:
    """The file's lines (``\\n`` or ``\\r\\n``), trailing blank lines dropped."""
    if not path.is_file():
        raise _error(f"{path} is missing")
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _error(f"{path} cannot be read as text ({type(e).__name__})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _count(path: Path, lines: list[str], rows: int) -> None:
    """Line 1 of a file with a count line must be the number of rows that follow."""
    first = lines[0].strip() if lines else ""
    if not first.isdigit():
        raise _error(f"{path} line 1: expected the number of images, got {first[:40]!r}")
    if int(first) != rows:
        raise _error(f"{path} line 1: says {int(first)} images, the file lists {rows}")


def _table(path: Path, header_lines: int, columns: int, values: set[str] | None = None) -> tuple:
    """(image names, rows of ``columns`` integers as a numpy array, the header lines' tokens)."""
    import numpy as np

    lines = _lines(path)
    if len(lines) < header_lines:
        raise _error(f"{path}: {len(lines)} line(s), expected at least {header_lines} header line(s)")
    body = lines[header_lines:]
    names, data = [], np.empty((len(body), columns), dtype=np.int32)  # rows parsed one at a time
    for i, line in enumerate(body):
        parts = line.split()
        if len(parts) != columns + 1:
            number = i + header_lines + 1
            raise _error(
                f"{path} line {number}: {len(parts)} fields, expected {columns + 1} (name + {columns})"
            )
        names.append(parts[0])
        try:
            data[i] = parts[1:]
        except (ValueError, OverflowError):
            raise _error(f"{path} line {i + header_lines + 1}: not all values are integers") from None
    if values is not None:
        ok = np.isin(data, [int(v) for v in values]).all(axis=1)
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            allowed = " or ".join(sorted(values))
            raise _error(f"{path} line {bad + header_lines + 1}: values must be {allowed}")
    if header_lines == 2:
        _count(path, lines, len(names))
    return names, data, [line.split() for line in lines[:header_lines]]


def _parsed(folder: Path, fname: str, header_lines: int, columns: int, values: set[str] | None = None):
    path = folder / fname
    try:
        st = path.stat()
    except OSError:
        raise _error(f"{path} is missing") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _PARSED:
        if len(_PARSED) > 16:
            _PARSED.clear()
        _PARSED[key] = _table(path, header_lines, columns, values)
    return _PARSED[key]


def _align(folder: Path, fname: str, names: list[str], order: list[str], data: Any) -> Any:
    """``data`` rows reordered to ``order`` (the partition file's image names)."""
    if names == order:
        return data
    index = {n: i for i, n in enumerate(names)}
    missing = next((n for n in order if n not in index), None)
    if missing is not None:
        raise _error(f"{folder / fname} has no line for image {missing} (listed in {PARTITION})")
    return data[[index[n] for n in order]]


def verify_checksums(folder: Path) -> None:
    """ConfigError naming the first annotation file whose MD5 differs from CelebA's."""
    for fname, want in MD5.items():
        path = folder / fname
        if not path.is_file():
            raise _error(f"{path} is missing")
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != want:
            raise _error(f"{path}: MD5 {digest}, CelebA's is {want} (a modified or different file)")


class CelebAImages:
    """``index -> (3, size, size)`` float image in [0, 1]: JPEG, centre crop ``crop``, resize.

    A plain picklable object (not a closure), so DataLoader workers can decode images.
    """

    def __init__(self, folder: Path, files: list[str], size: int, crop: int) -> None:
        self.folder, self.files, self.size, self.crop = folder, files, size, crop

    def __call__(self, i: int) -> Any:
        import numpy as np
        import torch
        from PIL import Image, UnidentifiedImageError

        path = self.folder / IMAGES / self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise _error(f"image {path} cannot be decoded ({type(e).__name__}: {e})") from None
        w, h = img.size
        c = min(self.crop, w, h)
        left, top = (w - c) // 2, (h - c) // 2
        img = img.crop((left, top, left + c, top + c)).resize((self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def load_celeba(
    split: str,
    root: str | None = None,
    download: bool = False,
    size: int = 64,
    crop: int = 148,
    landmarks: bool = False,
    verify: bool = False,
) -> ImageDataset:
    """CelebA from its on-disk layout (see the module docstring)."""
    import numpy as np
    import torch

    if download:
        raise _error("flowcond does not download CelebA; unpack it under --root (see docs/scaling.md)")
    if split not in SPLITS:
        raise _error(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not (1 <= size <= 4096 and 1 <= crop <= 100_000):
        raise _error(f"size {size} and crop {crop} must be positive (size at most 4096)")
    folder = find_folder(root)
    if verify:
        verify_checksums(folder)
    order, part, _ = _parsed(folder, PARTITION, 0, 1, {"0", "1", "2"})
    id_names, ids, _ = _parsed(folder, IDENTITY, 0, 1)
    attr_names, attrs, attr_header = _parsed(folder, ATTRIBUTES, 2, 40, {"1", "-1"})
    if len(attr_header[1]) != 40:
        raise _error(f"{folder / ATTRIBUTES} line 2: {len(attr_header[1])} attribute names, expected 40")
    ids = _align(folder, IDENTITY, id_names, order, ids[:, 0])
    attrs = _align(folder, ATTRIBUTES, attr_names, order, attrs)
    _check_images(folder, order)
    # identities over the whole file: an id means the same person in every split
    numbers, id_index = np.unique(ids, return_inverse=True)
    rows = np.flatnonzero(part[:, 0] == SPLITS[split])
    if not len(rows):
        raise _error(f"{folder / PARTITION} lists no image of the {split!r} split ({SPLITS[split]})")
    labels = {
        "identity": torch.from_numpy(id_index.reshape(-1)[rows].astype(np.int64)),
        "attributes": torch.from_numpy((attrs[rows] > 0).astype(np.float32)),
    }
    schema = [
        LabelField("identity", "categorical", len(numbers), [f"id_{n}" for n in numbers]),
        LabelField("attributes", "binary", 40, list(attr_header[1])),
    ]
    if landmarks:
        labels["landmarks"], labels["bbox"], more = _positions(folder, order, rows, size, crop)
        schema += more
    spec = {"name": "celeba-landmarks" if landmarks else "celeba", "split": split, "root": str(root)}
    spec.update(size=size, crop=crop)
    files = [order[i] for i in rows]
    return ImageDataset(
        CelebAImages(folder, files, size, crop), labels, schema, spec, image_shape=(3, size, size)
    )


def _check_images(folder: Path, order: list[str]) -> None:
    images = folder / IMAGES
    try:
        present = set(os.listdir(images))
    except OSError:
        raise _error(f"{images} is missing (the unzipped img_align_celeba.zip)") from None
    for number, name in enumerate(order, start=1):
        if name not in present:
            raise _error(f"image {images / name} is missing (listed in {folder / PARTITION} line {number})")


def _positions(folder: Path, order: list[str], rows: Any, size: int, crop: int) -> tuple:
    """Landmarks (in output pixels, assuming CelebA's 178x218 aligned images) and boxes."""
    import numpy as np
    import torch

    l_names, marks, l_header = _parsed(folder, LANDMARKS, 2, 10)
    b_names, boxes, b_header = _parsed(folder, BBOX, 2, 4)
    if len(l_header[1]) != 10:
        raise _error(f"{folder / LANDMARKS} line 2: {len(l_header[1])} landmark names, expected 10")
    if b_header[1] != BBOX_HEADER:
        raise _error(f"{folder / BBOX} line 2: expected the header {' '.join(BBOX_HEADER)!r}")
    marks = _align(folder, LANDMARKS, l_names, order, marks)[rows].astype(np.float32)
    boxes = _align(folder, BBOX, b_names, order, boxes)[rows].astype(np.float32)
    c = min(crop, 178, 218)
    marks[:, 0::2] = (marks[:, 0::2] - (178 - c) // 2) * size / c
    marks[:, 1::2] = (marks[:, 1::2] - (218 - c) // 2) * size / c
    fields = [
        LabelField("landmarks", "continuous", 10, list(l_header[1])),
        LabelField("bbox", "continuous", 4, BBOX_HEADER[1:]),
    ]
    return torch.from_numpy(marks), torch.from_numpy(boxes), fields


def load_celeba_landmarks(split: str, root: str | None = None, download: bool = False, **options: Any):
    """``celeba`` plus the aligned landmarks and the bounding boxes."""
    return load_celeba(split, root, download, landmarks=True, **options)


def check_command() -> Any:
    """``flowcond celeba-check --root DIR [--verify] [--decode N]``: parse every file, list the
    splits; ``--verify`` checks the MD5 sums, ``--decode`` decodes the first N images of each split."""
    import click

    @click.command("celeba-check")
    @click.option(
        "--root", required=True, type=click.Path(), help="Folder holding celeba/ (or celeba/ itself)."
    )
    @click.option("--verify", is_flag=True, help="Also check the annotation files' MD5 sums.")
    @click.option(
        "--decode", type=click.IntRange(min=0), default=0, help="Decode the first N images of each split."
    )
    def celeba_check(root: str, verify: bool, decode: int) -> None:
        """Check a CelebA folder: files, lines, images present (and MD5 sums with --verify)."""
        for split in SPLITS:
            ds = load_celeba(split, root, verify=verify and split == "train")
            for i in range(min(decode, len(ds))):
                ds.images(i)
            ids = ds.schema["identity"].size
            click.echo(f"{split}: {len(ds)} images, {ids} identities in the identity file")
        click.echo("MD5 sums match CelebA's" if verify else "MD5 sums not checked (--verify)")

    return celeba_check
