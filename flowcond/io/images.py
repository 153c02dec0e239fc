"""Image grids as PNG (torchvision ``make_grid``), optionally with a text label per row."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from flowcond.io.atomic import atomic_write


def grid_image(
    x: torch.Tensor,
    nrow: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    scale: int = 2,
) -> Image.Image:
    """Images ``(N, C, H, W)`` in [0, 1] -> a PIL grid, ``nrow`` images per row, upscaled ``scale``x,
    with optional text labels left of each row and above each column."""
    grid = make_grid(x.detach().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = Image.fromarray(arr).convert("RGB")
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if not row_labels and not col_labels:
        return img
    font = ImageFont.load_default()
    left = 8 + 6 * max(len(s) for s in row_labels) if row_labels else 0
    top = 14 if col_labels else 0
    out = Image.new("RGB", (img.width + left, img.height + top), "white")
    out.paste(img, (left, top))
    draw = ImageDraw.Draw(out)
    if row_labels:
        row_h = img.height / len(row_labels)
        for i, label in enumerate(row_labels):
            draw.text((4, top + int(i * row_h + row_h / 2 - 5)), label, fill="black", font=font)
    if col_labels:
        col_w = img.width / len(col_labels)
        for j, label in enumerate(col_labels):
            draw.text(
                (left + int(j * col_w) + 2, 1),
                label[: max(1, int(col_w // 6))],
                fill="black",
                font=font,
            )
    return out


def save_grid(
    x: torch.Tensor,
    path: str | os.PathLike,
    nrow: int = 8,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
) -> Path:
    """Write a PNG grid atomically; returns the path."""
    path = Path(path)
    img = grid_image(x, nrow, row_labels, col_labels)
    with atomic_write(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")
    return path
