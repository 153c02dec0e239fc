"""Generation with attached heads: interpolation, cumulative edits, code sweeps (paper Fig. 4-7).

Each function returns images ``(rows * cols, C, H, W)`` laid out row by row, one row per noise
draw, plus a label per row/column, ready for :func:`flowcond.io.images.save_grid`. Counts
(``n``, ``rows``, ``steps``) must be at least 1, seeds in ``[0, 2**63 - 1]`` and temperatures
finite in ``[0, MAX_TEMPERATURE]``: anything else is a one-line :class:`ConfigError` before any
work. Non-finite pixels are a :class:`FlowcondError` (:meth:`Backbone.decode`), never returned.
Conditions not given are drawn with ``prior``: ``"joint"`` (default; from random training rows
matching the given ones, :meth:`Heads.sample_targets`) or ``"independent"`` (each kind's prior).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch

from flowcond import contract
from flowcond.caglow.heads import Heads
from flowcond.caglow.sweep import resolve_sweep, sweep_ends, sweep_plugin  # noqa: F401 (re-exported)
from flowcond.errors import ConfigError
from flowcond.flow.config import SEED_MAX, check_temperature

#: the most images one call generates: all of them are held in memory at once
MAX_IMAGES = 1_000_000


def request_bytes(heads: Heads, n: int) -> int:
    """About how much memory generating ``n`` images at once takes (float32 images, latents,
    noise and encoder inputs, each held for all ``n``)."""
    per_image = 4 * heads.backbone.latent_dim + heads.encoder.noise_dim + heads.cond_dim
    return 4 * n * per_image


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_request_size(heads: Heads, n: int, what: str = "--n") -> None:
    """Refuse up front (one-line ConfigError, with the memory it would take) to generate more
    than :data:`MAX_IMAGES` images at once, or more than fit in 80% of the available memory."""
    need = request_bytes(heads, n)
    avail = available_memory()
    if n > MAX_IMAGES or (avail is not None and need > 0.8 * avail):
        shape = "x".join(map(str, heads.backbone.image_shape))
        free = f"{avail / 2**30:.1f} GiB available" if avail is not None else "available memory unknown"
        raise ConfigError(
            f"{what} {n}: generating {n} images of {shape} at once would need about "
            f"{need / 2**30:.1f} GiB of memory ({free}; at most {MAX_IMAGES:,} images per run); "
            f"generate fewer, e.g. in several runs with different --seed"
        )


def check_counts(temperature: float, seed: int, **counts: int) -> None:
    """``counts`` (``rows=4, steps=8``) integers >= 1, ``seed`` in range, ``temperature`` finite."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name}={value!r}: must be an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed={seed!r}: must be an integer in [0, {SEED_MAX}]")
    check_temperature(temperature, allow_zero=True)


def _row_noise(
    heads: Heads, rows: int, cols: int, temperature: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same noise across each row: ``rows`` draws, each repeated ``cols`` times."""
    eps, eps_res = heads.noise(rows, temperature, g)
    return eps.repeat_interleave(cols, 0), eps_res.repeat_interleave(cols, 0)


@torch.no_grad()
def interpolate(
    heads: Heads,
    start: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
    steps: int = 8,
    rows: int = 4,
    temperature: float = 0.8,
    seed: int = 0,
    prior: str = "joint",
) -> torch.Tensor:
    """Linear interpolation of the encoder input from ``start`` to ``end`` conditions (Fig. 5)."""
    check_counts(temperature, seed, steps=steps, rows=rows)
    g = torch.Generator().manual_seed(seed)
    base = heads.sample_targets(rows, None, g, prior)
    a = heads.condition_input({**base, **heads.expand_targets(rows, start)})
    b = heads.condition_input({**base, **heads.expand_targets(rows, end)})
    w = torch.linspace(0, 1, steps).view(1, steps, 1)
    c = ((1 - w) * a.unsqueeze(1) + w * b.unsqueeze(1)).reshape(rows * steps, -1)
    eps, eps_res = _row_noise(heads, rows, steps, temperature, g)
    return heads.decode(heads.generate_from_input(c, eps, eps_res))


@torch.no_grad()
def manipulate(
    heads: Heads,
    start: Mapping[str, torch.Tensor],
    edits: Sequence[str],
    rows: int = 4,
    temperature: float = 0.8,
    seed: int = 0,
    prior: str = "joint",
) -> tuple[torch.Tensor, list[str]]:
    """Cumulative edits (Fig. 4): column 0 is ``start``, column k applies the first k ``--add`` edits."""
    check_counts(temperature, seed, rows=rows)
    g = torch.Generator().manual_seed(seed)
    targets = heads.sample_targets(rows, start, g, prior)
    columns, labels = [dict(targets)], ["start"]
    for edit in edits:
        name, sep, value = edit.partition("=")
        if not sep or name not in heads.kinds:
            raise ConfigError(
                f"--add {edit!r}: expected NAME=VALUE with NAME one of {', '.join(heads.kinds)}"
            )
        kind = heads.kinds[name]
        prev = columns[-1]
        new = dict(prev)
        new[name] = torch.stack(
            [contract.check_target(kind, kind.edit(t, value), "edit()") for t in prev[name]]
        )
        columns.append(new)
        labels.append(f"+{edit}")
    cols = len(columns)
    c = torch.stack([heads.condition_input(col) for col in columns], dim=1).reshape(rows * cols, -1)
    eps, eps_res = _row_noise(heads, rows, cols, temperature, g)
    return heads.decode(heads.generate_from_input(c, eps, eps_res)), labels


@torch.no_grad()
def explore(
    heads: Heads,
    code: int | str = 0,
    steps: int = 9,
    rows: int = 4,
    given: Mapping[str, torch.Tensor] | None = None,
    plugin: str | None = None,
    temperature: float = 0.8,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
    prior: str = "joint",
) -> tuple[torch.Tensor, list[float]]:
    """Sweep component ``code`` of ``plugin`` (any kind with a ``value_range``; default: the first
    unsupervised one) over its range or ``value_range``, everything else fixed per row (Fig. 6,
    7). The sweep's ends go through the kind's ``parse`` (see :mod:`flowcond.caglow.sweep`)."""
    check_counts(temperature, seed, steps=steps, rows=rows)
    sweep = resolve_sweep(heads, plugin, code, value_range)
    g = torch.Generator().manual_seed(seed)
    targets = heads.sample_targets(rows, given, g, prior)
    low, high = sweep_ends(heads, sweep, targets[sweep.name])
    weights = torch.linspace(0, 1, steps)
    cols = []
    for w in weights:
        t = dict(targets)
        mixed = (1 - w) * low.float() + w * high.float()
        t[sweep.name] = mixed if low.is_floating_point() else mixed.round().to(low.dtype)
        cols.append(heads.condition_input(t))
    c = torch.stack(cols, dim=1).reshape(rows * steps, -1)
    eps, eps_res = _row_noise(heads, rows, steps, temperature, g)
    values = (sweep.low + weights.double() * (sweep.high - sweep.low)).tolist()
    return heads.decode(heads.generate_from_input(c, eps, eps_res)), values


@torch.no_grad()
def sample_rows(
    heads: Heads,
    given: Mapping[str, torch.Tensor],
    n: int,
    per_row: int,
    temperature: float = 0.8,
    seed: int = 0,
    prior: str = "joint",
    check: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """``n`` samples where each row of ``per_row`` images shares its conditions (given ones fixed,
    others drawn once per row: from the training rows matching the given ones with ``prior="joint"``,
    else from their own priors). With ``check`` and an image check in the heads, samples whose
    image disagrees with a given condition are redrawn (:meth:`Heads.checked`). Returns images,
    targets and a label per row."""
    check_counts(temperature, seed, n=n, per_row=per_row)
    g = torch.Generator().manual_seed(seed)
    rows = -(-n // per_row)
    row_targets = heads.sample_targets(rows, given, g, prior)
    targets = {k: v.repeat_interleave(per_row, 0)[:n] for k, v in row_targets.items()}
    # one sample per row: a redrawn sample draws its other conditions again too
    redraw = prior if per_row == 1 else None
    images, targets, _ = heads.checked(targets, temperature, g, list(given) if check else [], redraw)
    labels = [
        " ".join(f"{k}={heads.kinds[k].format(v[r * per_row])}" for k, v in targets.items())
        for r in range(rows)
    ]
    return images, targets, labels
