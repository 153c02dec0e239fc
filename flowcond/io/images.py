"""Image grids as PNG (torchvision ``make_grid``), optionally with a text label per row."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from flowcond.errors import FlowcondError
from flowcond.io.atomic import atomic_write

#: the largest grid :func:`save_grid` draws, in pixels (after its 2x upscaling)
MAX_GRID_PIXELS = 2**27


def nonfinite_images(x: torch.Tensor) -> int:
    """How many images of ``x`` ``(N, ...)`` hold a NaN or infinite value."""
    if x.numel() == 0:
        return 0
    return int((~torch.isfinite(x.detach().reshape(len(x), -1))).any(dim=1).sum())


def check_finite_images(x: torch.Tensor, what: str = "generated images") -> None:
    """Raise :class:`FlowcondError` naming how many of ``x`` are not finite: never write them."""
    bad = nonfinite_images(x)
    if bad:
        raise FlowcondError(
            f"{bad} of {len(x)} {what} have non-finite (NaN or infinite) pixels; nothing was "
            f"written (lower --temperature, or check the model files)"
        )


def grid_size(n: int, nrow: int, height: int, width: int, scale: int = 2) -> tuple[int, int]:
    """(width, height) in pixels of the grid :func:`save_grid` draws for ``n`` images."""
    nrow = max(1, min(nrow, n))
    rows = -(-n // nrow)
    return (nrow * (width + 2) + 2) * scale, (rows * (height + 2) + 2) * scale


def check_grid_size(n: int, nrow: int, height: int, width: int, option: str = "--out") -> None:
    """Refuse a grid larger than :data:`MAX_GRID_PIXELS` before any work."""
    w, h = grid_size(n, nrow, height, width)
    if w * h > MAX_GRID_PIXELS:
        raise FlowcondError(
            f"{option}: a PNG grid of {n} images would be {w}x{h} pixels (at most "
            f"{MAX_GRID_PIXELS:,}); write fewer images, or an .npz where the command allows it"
        )


def grid_image(
    x: torch.Tensor,
    nrow: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    scale: int = 2,
) -> Image.Image:
    """Images ``(N, C, H, W)`` in [0, 1] -> a PIL grid, ``nrow`` images per row, upscaled ``scale``x,
    with optional text labels left of each row and above each column. Non-finite pixels are an
    error (:func:`check_finite_images`), never drawn."""
    if x.dim() != 4 or len(x) == 0:
        raise FlowcondError(f"an image grid needs images (N, C, H, W) with N >= 1, got {tuple(x.shape)}")
    check_finite_images(x)
    grid = make_grid(x.detach().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = Image.fromarray(arr).convert("RGB")
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if not row_labels and not col_labels:
        return img
    font = ImageFont.load_default()
    left = 8 + 6 * max(len(s) for s in row_labels) if row_labels else 0
    col_w = img.width / len(col_labels) if col_labels else 0
    # column labels are wrapped, never cut: "+thickness=+0.75" stays whole on narrow columns
    col_lines = [_wrap(label, max(1, int(col_w // 6))) for label in col_labels or []]
    top = 2 + 12 * max(len(lines) for lines in col_lines) if col_labels else 0
    out = Image.new("RGB", (img.width + left, img.height + top), "white")
    out.paste(img, (left, top))
    draw = ImageDraw.Draw(out)
    if row_labels:
        row_h = img.height / len(row_labels)
        for i, label in enumerate(row_labels):
            draw.text((4, top + int(i * row_h + row_h / 2 - 5)), label, fill="black", font=font)
    for j, lines in enumerate(col_lines):
        for k, line in enumerate(lines):
            draw.text((left + int(j * col_w) + 2, 1 + 12 * k), line, fill="black", font=font)
    return out


def _wrap(label: str, width: int) -> list[str]:
    """``label`` in lines of at most ``width`` characters (breaking after ``,`` ``=`` ``:`` or a
    space where it can, inside a word where it must)."""
    lines: list[str] = []
    rest = label
    while len(rest) > width:
        cut = max(rest.rfind(c, 0, width) for c in ",=: ") + 1
        cut = cut if cut > 0 else width
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return [*lines, rest] if rest or not lines else lines


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
