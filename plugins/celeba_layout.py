"""CelebA's on-disk layout: its file names, attribute names, MD5 sums, and a writer of fake folders.

The layout (what the CelebA authors distribute, unzipped)::

    ROOT/celeba/img_align_celeba/000001.jpg ...        178x218 aligned faces
    ROOT/celeba/list_eval_partition.txt                 "000001.jpg 0"   (0 train, 1 valid, 2 test)
    ROOT/celeba/identity_CelebA.txt                     "000001.jpg 2880"
    ROOT/celeba/list_attr_celeba.txt                    count line, 40 names, "000001.jpg -1  1 ..."
    ROOT/celeba/list_bbox_celeba.txt                    count line, "image_id x_1 y_1 width height", rows
    ROOT/celeba/list_landmarks_align_celeba.txt         count line, 10 names, rows

:func:`write_celeba_folder` writes a small folder in exactly this layout (generated JPEGs, all five
annotation files with CelebA's header lines and column spacing) for tests, benchmarks and the
``--tiny`` example. No torch or numpy at import time.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

IMAGES = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
IDENTITY = "identity_CelebA.txt"
ATTRIBUTES = "list_attr_celeba.txt"
BBOX = "list_bbox_celeba.txt"
LANDMARKS = "list_landmarks_align_celeba.txt"
ANNOTATIONS = (PARTITION, IDENTITY, ATTRIBUTES, BBOX, LANDMARKS)

#: MD5 sums of the five annotation files as distributed (the same list torchvision checks);
#: verified only when asked (``verify=True``, ``flowcond celeba-check --verify``)
MD5 = {
    ATTRIBUTES: "75e246fa4810816ffd6ee81facbd244c",
    IDENTITY: "32bd1bd63d3c78cd57e08160ec5ed1e2",
    BBOX: "00566efa6fedff7a56946cd1c10f1c16",
    LANDMARKS: "cc24ecafdb5b50baae59b03474781f8c",
    PARTITION: "d32c9cbf5e040fd4025c592c306e6668",
}

ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
BBOX_HEADER = ["image_id", "x_1", "y_1", "width", "height"]
LANDMARK_NAMES = (
    "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
    "leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
).split()


def write_celeba_folder(
    root: str | os.PathLike,
    n: int = 48,
    n_ids: int = 8,
    seed: int = 0,
    image_size: tuple[int, int] = (178, 218),
    quality: int = 90,
    n_test: int | None = None,
) -> Path:
    """Write ``n`` generated faces in CelebA's layout under ``root/celeba``; returns that folder.

    Images are ``image_size`` (width, height; CelebA's are 178x218) JPEGs: a coloured background
    and an ellipse "face" whose colour depends on the identity, brighter when ``Smiling``. The
    split is train / valid / test in the ratio 8:1:1 by image (with ``n_test``: the last ``n_test``
    images are the test split, the others train); identities are spread over every
    split (real CelebA's identities do not overlap between splits: the loader does not care).
    Identity numbers are CelebA-like (1-based, not contiguous). Lines and spacing follow the real
    files: a count line, then a header line for attributes, bounding boxes and landmarks; values
    right-aligned in fixed-width columns, so the number of spaces between them varies.
    """
    from PIL import Image, ImageDraw

    folder = Path(root) / "celeba"
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    ids = [rng.randrange(1, 10_178) for _ in range(n_ids)]
    while len(set(ids)) < n_ids:
        ids = [rng.randrange(1, 10_178) for _ in range(n_ids)]
    w, h = image_size
    names, person, attrs = [], [], []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        who = i % n_ids
        a = [1 if rng.random() < 0.3 + 0.4 * ((who + k) % 2) else -1 for k in range(len(ATTRIBUTE_NAMES))]
        names.append(name)
        person.append(ids[who])
        attrs.append(a)
        face = (60 + 190 * who // max(n_ids - 1, 1), 120, 200 - 150 * who // max(n_ids - 1, 1))
        if a[ATTRIBUTE_NAMES.index("Smiling")] == 1:
            face = tuple(min(255, c + 40) for c in face)
        img = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        draw = ImageDraw.Draw(img)
        jitter = rng.randrange(-6, 7)
        draw.ellipse((w * 0.25 + jitter, h * 0.25, w * 0.75 + jitter, h * 0.8), fill=face)
        img.save(folder / IMAGES / name, quality=quality)
    part = [_partition(i, n) if n_test is None else 2 * (i >= n - n_test) for i in range(n)]
    lines_part = [f"{name} {p}" for name, p in zip(names, part, strict=True)]
    lines_id = [f"{name} {p}" for name, p in zip(names, person, strict=True)]
    lines_attr = [str(n), " ".join(ATTRIBUTE_NAMES) + " "]  # the real header ends in a space
    lines_attr += [name + "".join(f"{v:>3d}" for v in a) for name, a in zip(names, attrs, strict=True)]
    lines_bbox = [str(n), " ".join(BBOX_HEADER)]
    lines_land = [str(n), " ".join(LANDMARK_NAMES)]
    for name in names:
        box = [
            rng.randrange(40, 120),
            rng.randrange(40, 120),
            rng.randrange(150, 300),
            rng.randrange(150, 300),
        ]
        lines_bbox.append(f"{name:<10}" + "".join(f"{v:>6d}" for v in box))
        eyes = [69, 109, 106, 113, 77, 142, 73, 152, 108, 154]
        marks = [v + rng.randrange(-3, 4) for v in eyes]
        lines_land.append(f"{name} " + "".join(f"{v:>5d}" for v in marks))
    for fname, lines in (
        (PARTITION, lines_part),
        (IDENTITY, lines_id),
        (ATTRIBUTES, lines_attr),
        (BBOX, lines_bbox),
        (LANDMARKS, lines_land),
    ):
        # CRLF: the loader accepts \n and \r\n line endings alike; this tests the harder case
        (folder / fname).write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return folder


def _partition(i: int, n: int) -> int:
    """0 (train) for the first 80 % of the images, 1 (valid) for the next 10 %, 2 (test) after."""
    if i < round(0.8 * n):
        return 0
    return 1 if i < round(0.9 * n) else 2
