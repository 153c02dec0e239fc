"""Commands that generate with attached heads: ``sample``, ``interpolate``, ``explore``,
``manipulate``. torch (and the model code) is imported only when a command runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flowcond.cli.options import options
from flowcond.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from flowcond.caglow.heads import Heads


def _load(heads_path: str, backbone: str | None) -> Heads:
    from flowcond.caglow.heads import Heads

    return Heads.load(heads_path, backbone)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import numpy as np

    from flowcond.io.atomic import atomic_write

    with atomic_write(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() not in (".png", ".npz"):
        raise ConfigError(f"--out {out}: must end in .png (image grid) or .npz (arrays)")
    return path


def _png(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: must end in .png")
    return path


_common = options(
    click.option("--temperature", default=0.8, show_default=True, help="Scale of the noise eps."),
    click.option("--seed", default=0, show_default=True),
    click.option(
        "--backbone",
        type=click.Path(),
        default=None,
        help="Backbone file [default: the one recorded in the heads file].",
    ),
)


@click.command("sample")
@click.argument("heads_path", type=click.Path())
@click.option("--condition", "conditions", multiple=True, help="NAME=VALUE, e.g. ids=7 (repeatable).")
@click.option("--n", default=64, show_default=True, help="Number of images.")
@click.option("--out", required=True, help="Output .png (labelled grid) or .npz (images + conditions).")
@_common
def sample_cmd(heads_path, conditions, n, out, temperature, seed, backbone):
    """Generate images x = F^-1(E(c, eps)) for the given conditions."""
    from flowcond.caglow import generate
    from flowcond.io.images import save_grid

    path = _check_out(out)
    heads = _load(heads_path, backbone)
    given = heads.parse_conditions(list(conditions))
    per_row = max(1, int(math.sqrt(n)))
    images, targets, labels = generate.sample_rows(heads, given, n, per_row, temperature, seed)
    if path.suffix.lower() == ".npz":
        arrays = {"images": images.float().numpy()}
        arrays.update({k: v.numpy() for k, v in targets.items()})
        _write_npz(path, arrays)
    else:
        save_grid(images, path, nrow=per_row, row_labels=labels)
    click.echo(f"wrote {n} images to {path}")


@click.command("interpolate")
@click.argument("heads_path", type=click.Path())
@click.option("--from", "start", multiple=True, required=True, help="Start condition NAME=VALUE.")
@click.option("--to", "end", multiple=True, required=True, help="End condition NAME=VALUE.")
@click.option("--steps", default=8, show_default=True)
@click.option("--rows", default=4, show_default=True, help="Noise draws (one per row).")
@click.option("--out", required=True, help="Output .png.")
@_common
def interpolate_cmd(heads_path, start, end, steps, rows, out, temperature, seed, backbone):
    """Interpolate between two conditions with fixed noise per row (paper Fig. 5)."""
    import torch

    from flowcond.caglow import generate
    from flowcond.io.images import save_grid

    path = _png(out)
    heads = _load(heads_path, backbone)
    images = generate.interpolate(
        heads,
        heads.parse_conditions(list(start)),
        heads.parse_conditions(list(end)),
        steps,
        rows,
        temperature,
        seed,
    )
    cols = [f"{w:.2f}" for w in torch.linspace(0, 1, steps).tolist()]
    save_grid(images, path, nrow=steps, col_labels=cols)
    click.echo(f"wrote {path}: {' '.join(start)} -> {' '.join(end)}, {rows} rows x {steps} steps")


@click.command("explore")
@click.argument("heads_path", type=click.Path())
@click.option("--code", default=0, show_default=True, help="Index of the unsupervised code to sweep.")
@click.option("--plugin", default=None, help="Code plugin [default: the first unsupervised one].")
@click.option("--condition", "conditions", multiple=True, help="Fixed condition NAME=VALUE (repeatable).")
@click.option("--steps", default=9, show_default=True)
@click.option("--rows", default=4, show_default=True)
@click.option("--out", required=True, help="Output .png.")
@_common
def explore_cmd(heads_path, code, plugin, conditions, steps, rows, out, temperature, seed, backbone):
    """Sweep one unsupervised code over its range, everything else fixed per row (Fig. 6, 7)."""
    from flowcond.caglow import generate
    from flowcond.io.images import save_grid

    path = _png(out)
    heads = _load(heads_path, backbone)
    images, values = generate.explore(
        heads,
        code,
        steps,
        rows,
        heads.parse_conditions(list(conditions)),
        plugin,
        temperature,
        seed,
    )
    save_grid(images, path, nrow=steps, col_labels=[f"{v:+.2f}" for v in values])
    click.echo(f"wrote {path}: code {code} from {values[0]:+.2f} to {values[-1]:+.2f}")


@click.command("manipulate")
@click.argument("heads_path", type=click.Path())
@click.option("--condition", "conditions", multiple=True, help="Starting condition NAME=VALUE.")
@click.option("--add", "edits", multiple=True, required=True, help="Cumulative edit NAME=VALUE (repeatable).")
@click.option("--rows", default=4, show_default=True)
@click.option("--out", required=True, help="Output .png.")
@_common
def manipulate_cmd(heads_path, conditions, edits, rows, out, temperature, seed, backbone):
    """Apply cumulative condition edits, one column per edit (paper Fig. 4)."""
    from flowcond.caglow import generate
    from flowcond.io.images import save_grid

    path = _png(out)
    heads = _load(heads_path, backbone)
    images, labels = generate.manipulate(
        heads, heads.parse_conditions(list(conditions)), list(edits), rows, temperature, seed
    )
    save_grid(images, path, nrow=len(labels), col_labels=labels)
    click.echo(f"wrote {path}: {' | '.join(labels)}")


COMMANDS = [sample_cmd, interpolate_cmd, explore_cmd, manipulate_cmd]
