"""Morpho-MNIST-style morphometrics of grayscale digit images: thickness, slant, width, height.

The measures follow the idea of Morpho-MNIST (Castro et al., 2019), reimplemented here with
numpy, scipy.ndimage and torch only (no scikit-image). For a batch of images in [0, 1]:

1. **Upscale and binarize.** Each image is upscaled ``upscale`` times (bicubic, torch
   ``interpolate``) and thresholded at ``threshold`` (0.5). Upscaling makes the pixel-grid
   discretization of the measures ``upscale`` times finer. All measures are reported in pixels of
   the *original* image (upscaled pixels divided by ``upscale``).
2. **Skeleton.** A batched Zhang-Suen thinning (two sub-iterations, each a 256-entry lookup table
   on the 8-neighbourhood code) until nothing changes: a one-pixel-wide, 8-connected medial line.
3. **Thickness** = mean over skeleton pixels of ``2 * d``, where ``d`` is the Euclidean distance
   transform (scipy ``distance_transform_edt``, pixel centre to the nearest background pixel
   centre). A bar ``w`` pixels wide has ``d = w/2`` on its centre line, so its thickness is ``w``
   (for an even number of upscaled pixels across; an odd number reads half an upscaled pixel
   thick, i.e. ``0.5 / upscale`` original pixels). Stroke ends pull the mean slightly down, as in
   Morpho-MNIST. An image whose skeleton vanished (tiny blobs) uses ``2 * max(d)``; an empty
   image gives NaN for every measure.
4. **Slant** from second-order moments of the binary image: with ``x`` the column and ``y`` the
   row (downwards), ``s = -cov(x, y) / var(y)`` is the horizontal shift per pixel of height going
   *up*; ``slant = arctan(s)`` in radians. Positive = the top leans right (``/``, the usual
   handwriting lean), negative = leans left (``\\``), 0 = upright.
5. **Width and height** of the *deslanted* digit: foreground coordinates are sheared back,
   ``x' = x + s (y - mean y)``; ``width`` is the extent of ``x'`` and ``height`` that of ``y``
   (the shear leaves rows alone), each measured between the ``bound_frac`` and
   ``1 - bound_frac`` quantiles of the foreground coordinates plus one pixel. With
   ``bound_frac=0`` an axis-aligned ``w x h`` rectangle measures exactly ``w`` by ``h``; the
   default 0.02 ignores stray pixels (and shrinks a clean shape by about 4 %).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

MEASURES = ("thickness", "slant", "width", "height")
#: bumped whenever a change to this module changes the numbers it produces (keys caches)
MORPHO_VERSION = 1
DEFAULTS: dict[str, Any] = {"threshold": 0.5, "upscale": 4, "bound_frac": 0.02}


# ----------------------------------------------------------------------- inputs
def _as_batch(images: Any) -> np.ndarray:
    """(N, 1, H, W), (N, H, W) or (H, W) tensor/array -> float32 array (N, H, W)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu").float().numpy()
    a = np.asarray(images, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 4:
        if a.shape[1] != 1:
            raise ValueError(f"morphometrics need grayscale images (N, 1, H, W), got {a.shape}")
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"expected images of shape (N, 1, H, W), (N, H, W) or (H, W), got {a.shape}")
    return a


def binarize(images: Any, threshold: float = 0.5, upscale: int = 4) -> np.ndarray:
    """Upscale ``upscale`` times (bicubic) and threshold: bool array (N, H*upscale, W*upscale)."""
    a = _as_batch(images)
    if upscale < 1 or int(upscale) != upscale:
        raise ValueError(f"upscale must be a positive integer, got {upscale}")
    if upscale == 1:
        return a >= threshold
    t = torch.from_numpy(a).unsqueeze(1)
    with torch.no_grad():
        up = F.interpolate(t, scale_factor=int(upscale), mode="bicubic", align_corners=False)
    return up[:, 0].numpy() >= threshold


# ----------------------------------------------------------------------- skeleton
def _zhang_suen_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion lookup tables of the two Zhang-Suen sub-iterations, indexed by the neighbour code.

    Bit k of the code is neighbour P(k+2), clockwise from north: P2=N, P3=NE, P4=E, P5=SE, P6=S,
    P7=SW, P8=W, P9=NW.
    """
    t1 = np.zeros(256, dtype=bool)
    t2 = np.zeros(256, dtype=bool)
    for code in range(256):
        p = [(code >> k) & 1 for k in range(8)]  # p[0] = P2 ... p[7] = P9
        b = sum(p)
        a = sum(1 for k in range(8) if p[k] == 0 and p[(k + 1) % 8] == 1)
        if not (2 <= b <= 6 and a == 1):
            continue
        p2, _, p4, _, p6, _, p8, _ = p
        t1[code] = p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0
        t2[code] = p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0
    return t1, t2


_TABLES = _zhang_suen_tables()


def skeletonize(binary: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """Batched Zhang-Suen thinning of a bool array (N, H, W) (or (H, W)); returns the skeletons."""
    b = np.asarray(binary, dtype=bool)
    single = b.ndim == 2
    if single:
        b = b[None]
    out = np.zeros_like(b)
    rows = np.flatnonzero(b.any(axis=(0, 2)))
    cols = np.flatnonzero(b.any(axis=(0, 1)))
    if len(rows) == 0:
        return out[0] if single else out
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # work on the union bounding box plus a one-pixel background frame
    img = np.pad(b[:, r0:r1, c0:c1], ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
    h, w = r1 - r0, c1 - c0
    shifts = [(0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0), (0, 0)]  # P2..P9
    for _ in range(max_iter):
        changed = False
        for table in _TABLES:
            code = np.zeros((img.shape[0], h, w), dtype=np.uint8)
            for k, (dy, dx) in enumerate(shifts):
                code |= img[:, dy : dy + h, dx : dx + w] << k
            inner = img[:, 1:-1, 1:-1]
            delete = table[code] & (inner == 1)
            if delete.any():
                inner[delete] = 0
                changed = True
        if not changed:
            break
    out[:, r0:r1, c0:c1] = img[:, 1:-1, 1:-1].astype(bool)
    return out[0] if single else out


# ----------------------------------------------------------------------- measures
def _extent(values: np.ndarray, bound_frac: float) -> float:
    lo, hi = (
        np.quantile(values, [bound_frac, 1.0 - bound_frac])
        if bound_frac > 0
        else (values.min(), values.max())
    )
    return float(hi - lo + 1.0)


def measure_binary(binary: np.ndarray, upscale: int = 1, bound_frac: float = 0.02) -> dict[str, np.ndarray]:
    """Measures of already binarized (and upscaled ``upscale`` times) images, bool (N, H, W)."""
    b = np.asarray(binary, dtype=bool)
    if b.ndim == 2:
        b = b[None]
    n = b.shape[0]
    res = {m: np.full(n, np.nan) for m in MEASURES}
    skel = skeletonize(b)
    for i in range(n):
        ys, xs = np.nonzero(b[i])
        if len(ys) == 0:
            continue
        # thickness: 2 x distance transform along the skeleton (pad: the border is background)
        dist = ndimage.distance_transform_edt(np.pad(b[i], 1))[1:-1, 1:-1]
        on_skel = dist[skel[i]]
        res["thickness"][i] = 2.0 * (on_skel.mean() if on_skel.size else dist.max()) / upscale
        # slant: shear from second-order moments
        y = ys.astype(np.float64)
        x = xs.astype(np.float64)
        ym = y.mean()
        var_y = ((y - ym) ** 2).mean()
        s = -((x - x.mean()) * (y - ym)).mean() / var_y + 0.0 if var_y > 0 else 0.0  # no -0.0
        res["slant"][i] = np.arctan(s)
        # width / height of the deslanted digit
        res["width"][i] = _extent(x + s * (y - ym), bound_frac) / upscale
        res["height"][i] = _extent(y, bound_frac) / upscale
    return res


def measure(
    images: Any,
    threshold: float = 0.5,
    upscale: int = 4,
    bound_frac: float = 0.02,
    chunk: int = 256,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Thickness, slant (radians), width and height of each image; ``{name: float64 (N,)}``.

    ``images``: (N, 1, H, W), (N, H, W) or (H, W) in [0, 1], tensor or array. Processed in chunks
    of ``chunk`` images to bound memory. See the module docstring for the method.
    """
    a = _as_batch(images)
    parts: list[dict[str, np.ndarray]] = []
    starts = range(0, len(a), chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="morphometrics", unit="chunk")
    for start in starts:
        b = binarize(a[start : start + chunk], threshold, upscale)
        parts.append(measure_binary(b, upscale, bound_frac))
    if not parts:
        return {m: np.zeros(0) for m in MEASURES}
    return {m: np.concatenate([p[m] for p in parts]) for m in MEASURES}


def as_array(measures: dict[str, np.ndarray]) -> np.ndarray:
    """``measure(...)`` output as a float64 array (N, 4), columns in :data:`MEASURES` order."""
    return np.stack([measures[m] for m in MEASURES], axis=1)
