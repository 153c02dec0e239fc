"""Generation with attached heads: interpolation, cumulative edits, code sweeps (paper Fig. 4-7).

Each function returns images ``(rows * cols, C, H, W)`` laid out row by row, one row per noise
draw, plus a label per row/column, ready for :func:`flowcond.io.images.save_grid`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from flowcond.caglow.heads import Heads
from flowcond.errors import ConfigError


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
) -> torch.Tensor:
    """Linear interpolation of the encoder input from ``start`` to ``end`` conditions (Fig. 5)."""
    g = torch.Generator().manual_seed(seed)
    base = heads.sample_targets(rows, None, g)
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
) -> tuple[torch.Tensor, list[str]]:
    """Cumulative edits (Fig. 4): column 0 is ``start``, column k applies the first k ``--add`` edits."""
    g = torch.Generator().manual_seed(seed)
    targets = heads.sample_targets(rows, start, g)
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
        new[name] = torch.stack([kind.edit(t, value) for t in prev[name]])
        columns.append(new)
        labels.append(f"+{edit}")
    cols = len(columns)
    c = torch.stack([heads.condition_input(col) for col in columns], dim=1).reshape(rows * cols, -1)
    eps, eps_res = _row_noise(heads, rows, cols, temperature, g)
    return heads.decode(heads.generate_from_input(c, eps, eps_res)), labels


@torch.no_grad()
def explore(
    heads: Heads,
    code: int,
    steps: int = 9,
    rows: int = 4,
    given: Mapping[str, torch.Tensor] | None = None,
    plugin: str | None = None,
    temperature: float = 0.8,
    seed: int = 0,
) -> tuple[torch.Tensor, list[float]]:
    """Sweep unsupervised code ``code`` over its range, everything else fixed per row (Fig. 6, 7)."""
    names = [n for n, k in heads.kinds.items() if not k.supervised] if plugin is None else [plugin]
    if not names or names[0] not in heads.kinds:
        raise ConfigError("explore needs an attached unsupervised code plugin (e.g. --plugin codes)")
    name = names[0]
    kind = heads.kinds[name]
    width = kind.target_shape[0] if kind.target_shape else 1
    if not 0 <= code < width:
        raise ConfigError(f"--code {code}: plugin {name!r} has codes 0..{width - 1}")
    g = torch.Generator().manual_seed(seed)
    targets = heads.sample_targets(rows, given, g)
    if kind.value_range is None:
        raise ConfigError(f"explore: condition plugin {name!r} has no value range to sweep")
    lo, hi = kind.value_range
    values = torch.linspace(lo, hi, steps)
    cols = []
    for v in values:
        t = dict(targets)
        t[name] = targets[name].clone()
        t[name][:, code] = v
        cols.append(heads.condition_input(t))
    c = torch.stack(cols, dim=1).reshape(rows * steps, -1)
    eps, eps_res = _row_noise(heads, rows, steps, temperature, g)
    return heads.decode(heads.generate_from_input(c, eps, eps_res)), values.tolist()


@torch.no_grad()
def sample_rows(
    heads: Heads,
    given: Mapping[str, torch.Tensor],
    n: int,
    per_row: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    """``n`` samples where each row of ``per_row`` images shares its conditions (given ones fixed,
    others drawn once per row from their priors). Returns images, targets and a label per row."""
    g = torch.Generator().manual_seed(seed)
    rows = -(-n // per_row)
    row_targets = heads.sample_targets(rows, given, g)
    targets = {k: v.repeat_interleave(per_row, 0)[:n] for k, v in row_targets.items()}
    images = heads.decode(heads.generate(targets, temperature, g))
    labels = [
        " ".join(f"{k}={heads.kinds[k].format(v[r])}" for k, v in row_targets.items()) for r in range(rows)
    ]
    return images, targets, labels
