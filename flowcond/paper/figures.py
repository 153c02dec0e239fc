"""The paper's figures for one generator, as PNG grids in the output folder.

``fig3_conditions_x_identities_<tag>`` (attribute conditions x identities),
``fig4_cumulative_edits_<tag>`` (Table 3's states), ``fig5_interpolation_<tag>`` (class 1 -> 7),
``fig6_sweep_<attribute>_<tag>`` (attribute 0 from -0.5 to 1.5) and, for CAGlow with codes,
``fig6_code0_<tag>`` (sweep of the first code).
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowcond.caglow.generate import explore
from flowcond.io.images import save_grid
from flowcond.paper.generators import CAGlowGenerator, Generator


def fig3(gen: Generator, K: int, names: list[str], path: Path, seed: int) -> Path:
    """Rows: attribute conditions (none, each alone, all); columns: identities; one noise per column."""
    A = len(names)
    conds = [torch.zeros(A)] + [torch.eye(A)[a] for a in range(A)] + [torch.ones(A)]
    noise = gen.noise(K, torch.Generator().manual_seed(seed + 3))
    R = len(conds)
    w = torch.eye(K).repeat(R, 1)
    v = torch.stack(conds).repeat_interleave(K, 0)
    x = gen.images(w, v, tuple(t.repeat(R, *([1] * (t.dim() - 1))) for t in noise))
    labels = ["none"] + names + ["all"]
    return save_grid(x, path, nrow=K, row_labels=labels, col_labels=[str(k) for k in range(K)])


def fig4(
    states: list[torch.Tensor], per_class: int, K: int, class_field: str, names: list[str], path: Path
) -> Path:
    """Table 3's states (start, +each attribute) for one sample of each of up to 8 identities."""
    rows = [k * per_class for k in range(min(K, 8))]
    grid = torch.stack([s[rows] for s in states], 1).reshape(-1, *states[0].shape[1:])
    return save_grid(
        grid,
        path,
        nrow=len(states),
        row_labels=[f"{class_field}={k}" for k in range(len(rows))],
        col_labels=["start"] + [f"+{a}" for a in names],
    )


def fig5(gen: Generator, K: int, A: int, path: Path, seed: int, steps: int = 8, rows: int = 4) -> Path:
    """Class interpolation 1 -> 7 (mod K) in ``steps`` steps, ``rows`` noises, attributes off."""
    a, b = 1 % K, 7 % K
    noise = gen.noise(rows, torch.Generator().manual_seed(seed + 5))
    t = torch.linspace(0, 1, steps)
    wa, wb = torch.eye(K)[a], torch.eye(K)[b]
    w = ((1 - t)[:, None] * wa + t[:, None] * wb).repeat(rows, 1)
    v = torch.zeros(rows * steps, A)
    x = gen.images(w, v, tuple(n.repeat_interleave(steps, 0) for n in noise))
    return save_grid(x, path, nrow=steps, col_labels=[f"{s:.2f}" for s in t.tolist()])


def fig6(gen: Generator, K: int, A: int, path: Path, seed: int, rows: int = 4) -> Path:
    """Attribute 0 swept from -0.5 to 1.5 (beyond the trained range at both ends)."""
    noise = gen.noise(rows, torch.Generator().manual_seed(seed + 6))
    vals = torch.linspace(-0.5, 1.5, 9)
    w = torch.eye(K)[torch.arange(rows) % K].repeat_interleave(len(vals), 0)
    v = torch.zeros(rows * len(vals), A)
    v[:, 0] = vals.repeat(rows)
    x = gen.images(w, v, tuple(n.repeat_interleave(len(vals), 0) for n in noise))
    return save_grid(x, path, nrow=len(vals), col_labels=[f"{s:g}" for s in vals.tolist()])


def fig6_code(gen: CAGlowGenerator, path: Path, seed: int) -> Path:
    """CAGlow's first unsupervised code swept over its range (4 rows, 9 steps)."""
    x, values = explore(gen.heads, 0, steps=9, rows=4, plugin=gen.roles.codes, seed=seed)
    return save_grid(x, path, nrow=9, col_labels=[f"{s:.2f}" for s in values])


@torch.no_grad()
def make_figures(gen: Generator, K: int, names: list[str], out: Path, tag: str, seed: int) -> list[str]:
    """Fig. 3, Fig. 5, Fig. 6 (and CAGlow's code sweep when codes are attached); their paths."""
    A = len(names)
    files = [
        fig3(gen, K, names, out / f"fig3_conditions_x_identities_{tag}.png", seed),
        fig5(gen, K, A, out / f"fig5_interpolation_{tag}.png", seed),
        fig6(gen, K, A, out / f"fig6_sweep_{names[0]}_{tag}.png", seed),
    ]
    if isinstance(gen, CAGlowGenerator) and gen.roles.codes is not None:
        files.append(fig6_code(gen, out / f"fig6_code0_{tag}.png", seed))
    return [str(f) for f in files]
