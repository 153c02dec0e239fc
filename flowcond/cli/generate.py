"""Commands that generate with attached heads: ``sample``, ``interpolate``, ``explore``,
``manipulate``. torch (and the model code) is imported only when a command runs.

Before any work each command checks its options (counts >= 1, ``--seed`` in ``[0, 2**63-1]``,
``--temperature`` finite in ``(0, MAX_TEMPERATURE]``) and its ``--out`` (the output rule of
:mod:`flowcond.io.outputs`: writable, not an input, nothing of another type replaced without
``--force``); after loading the heads, the size of the request (memory, PNG grid pixels).
Images with non-finite pixels are an error, never written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from flowcond.cli.options import current_device, device_option, options
from flowcond.errors import ConfigError
from flowcond.flow.config import MAX_TEMPERATURE, SEED_MAX, check_temperature
from flowcond.io.outputs import Output, check_outputs, require_suffix

if TYPE_CHECKING:
    import numpy as np

    from flowcond.caglow.heads import Heads


def _load(heads_path: str, backbone: str | None) -> Heads:
    """The heads, their backbone on ``--device`` (the heads, small networks, stay on the CPU)."""
    from flowcond.caglow.heads import Heads
    from flowcond.distributed import resolve_device

    device = resolve_device(current_device())  # a GPU asked for and missing: before any loading
    heads = Heads.load(heads_path, backbone)
    heads.backbone.to(device)
    return heads


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import numpy as np

    from flowcond.io.atomic import atomic_write

    with atomic_write(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _recorded_backbones(heads_path: str) -> list[Path]:
    """Where the heads file's recorded backbone may be (inputs: never written over)."""
    from flowcond.errors import FlowcondError
    from flowcond.io.safefile import read_header

    try:
        recorded = (read_header(heads_path).get("backbone") or {}).get("path")
    except (FlowcondError, AttributeError, TypeError, ValueError, RecursionError):
        return []  # Heads.load reports what is wrong with the file
    if not isinstance(recorded, str) or not recorded or "\0" in recorded:
        return []
    return [Path(recorded), Path(heads_path).parent / recorded]


def _check_out(out: str, heads_path: str, backbone: str | None, force: bool, npz: bool = False) -> Path:
    """``--out``: a .png (or, with ``npz``, .npz) that the output rule allows; before any work."""
    suffixes = (".png", ".npz") if npz else (".png",)
    what = "the output (image grid, or arrays)" if npz else "the output (image grid)"
    path = require_suffix(out, "--out", suffixes, what)
    inputs: dict[str, str | Path | None] = {"HEADS_PATH": heads_path, "--backbone": backbone}
    inputs.update({f"the recorded backbone {p}": p for p in _recorded_backbones(heads_path)})
    check_outputs([Output(path, "--out", path.suffix.lower().lstrip("."))], inputs, force)
    return path


def _check_size(heads: Heads, n: int, nrow: int, what: str, png: bool = True) -> None:
    from flowcond.caglow.generate import check_request_size
    from flowcond.io.images import check_grid_size

    check_request_size(heads, n, what)
    if png:
        _, h, w = heads.backbone.image_shape
        check_grid_size(n, nrow, h, w)


def _temperature(ctx: click.Context, param: click.Parameter, value: float) -> float:
    try:
        return check_temperature(value, "")
    except ConfigError as e:
        raise click.BadParameter(str(e).strip(), ctx=ctx, param=param) from None


_count = click.IntRange(min=1)

_common = options(
    click.option(
        "--temperature",
        default=0.8,
        show_default=True,
        type=float,
        callback=_temperature,
        help=f"Scale of the noise eps: finite, > 0 and at most {MAX_TEMPERATURE:g}.",
    ),
    click.option("--seed", default=0, show_default=True, type=click.IntRange(0, SEED_MAX)),
    click.option(
        "--backbone",
        type=click.Path(),
        default=None,
        help="Backbone file [default: the one recorded in the heads file].",
    ),
    click.option("--force", is_flag=True, help="Replace an existing file of another type at --out."),
    click.option(
        "--prior",
        type=click.Choice(["joint", "independent"]),
        default="joint",
        show_default=True,
        help="Conditions not given: drawn from training images matching the given ones (joint), "
        "or each from its own prior (independent).",
    ),
    device_option(
        expose_value=False,
        help="Where the backbone decodes: auto (cuda if available, else cpu), cpu, cuda or cuda:N.",
    ),
)


@click.command("sample")
@click.argument("heads_path", type=click.Path())
@click.option("--condition", "conditions", multiple=True, help="NAME=VALUE, e.g. ids=7 (repeatable).")
@click.option(
    "--n",
    default=64,
    show_default=True,
    type=_count,
    help="Number of images (held in memory at once: a request that does not fit is refused).",
)
@click.option("--out", required=True, help="Output .png (labelled grid) or .npz (images + conditions).")
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="With heads attached with --image-check: redraw samples whose image the check reads as "
    "disagreeing with a --condition.",
)
@_common
def sample_cmd(heads_path, conditions, n, out, check, temperature, seed, backbone, force, prior):
    """Generate images x = F^-1(E(c, eps)) for the given conditions."""
    from flowcond.caglow import generate
    from flowcond.io.images import check_finite_images, save_grid

    path = _check_out(out, heads_path, backbone, force, npz=True)
    heads = _load(heads_path, backbone)
    per_row = max(1, int(math.sqrt(n)))
    _check_size(heads, n, per_row, "--n", png=path.suffix.lower() == ".png")
    given = heads.parse_conditions(list(conditions))
    images, targets, labels = generate.sample_rows(heads, given, n, per_row, temperature, seed, prior, check)
    check_finite_images(images)
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
@click.option("--steps", default=8, show_default=True, type=_count)
@click.option("--rows", default=4, show_default=True, type=_count, help="Noise draws (one per row).")
@click.option("--out", required=True, help="Output .png.")
@_common
def interpolate_cmd(heads_path, start, end, steps, rows, out, temperature, seed, backbone, force, prior):
    """Interpolate between two conditions with fixed noise per row (paper Fig. 5)."""
    import torch

    from flowcond.caglow import generate
    from flowcond.io.images import save_grid

    path = _check_out(out, heads_path, backbone, force)
    heads = _load(heads_path, backbone)
    _check_size(heads, rows * steps, steps, "--rows x --steps")
    images = generate.interpolate(
        heads,
        heads.parse_conditions(list(start)),
        heads.parse_conditions(list(end)),
        steps,
        rows,
        temperature,
        seed,
        prior,
    )
    cols = [f"{w:.2f}" for w in torch.linspace(0, 1, steps).tolist()]
    save_grid(images, path, nrow=steps, col_labels=cols)
    click.echo(f"wrote {path}: {' '.join(start)} -> {' '.join(end)}, {rows} rows x {steps} steps")


def _sweep_options(conditions: tuple[str, ...], plugin: str | None) -> tuple[str | None, str, list[str]]:
    """``explore``'s ``--condition`` values: ``KIND`` or ``KIND.COMPONENT`` (no ``=``) names the
    condition to sweep (``--plugin KIND`` is the same), ``NAME=VALUE`` fixes one. Returns the
    kind to sweep, the option that named it and the fixed conditions."""
    sweep = [c for c in conditions if "=" not in c]
    fixed = [c for c in conditions if "=" in c]
    named = [*sweep, *([plugin] if plugin else [])]
    if len(named) > 1:
        raise ConfigError(f"explore sweeps one condition; got {', '.join(named)}")
    if sweep:
        return sweep[0].strip(), "--condition", fixed
    return plugin, "--plugin", fixed


def _range(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    parts = value.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected LOW,HIGH, e.g. 1.5,4", ctx=ctx, param=param) from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise click.BadParameter(f"{value!r}: LOW and HIGH must be finite", ctx=ctx, param=param)
    return low, high


@click.command("explore")
@click.argument("heads_path", type=click.Path())
@click.option(
    "--condition",
    "conditions",
    multiple=True,
    help="KIND (or KIND.COMPONENT, e.g. continuous.thickness): the condition to sweep, any kind "
    "with a value range; NAME=VALUE: a fixed condition (repeatable).",
)
@click.option(
    "--code",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Index of the component to sweep (or name it: --condition KIND.COMPONENT).",
)
@click.option(
    "--plugin",
    default=None,
    help="The kind to sweep, as --condition KIND [default: the first unsupervised one].",
)
@click.option(
    "--range",
    "value_range",
    default=None,
    callback=_range,
    help="LOW,HIGH to sweep instead of the kind's value range (checked by the kind, like --condition).",
)
@click.option("--steps", default=9, show_default=True, type=_count)
@click.option("--rows", default=4, show_default=True, type=_count)
@click.option("--out", required=True, help="Output .png.")
@_common
def explore_cmd(
    heads_path,
    conditions,
    code,
    plugin,
    value_range,
    steps,
    rows,
    out,
    temperature,
    seed,
    backbone,
    force,
    prior,
):
    """Sweep one component of a condition over its range, everything else fixed per row (Fig. 6, 7)."""
    from flowcond.caglow import generate
    from flowcond.caglow.sweep import resolve_sweep
    from flowcond.io.images import save_grid

    path = _check_out(out, heads_path, backbone, force)
    kind, option, fixed = _sweep_options(conditions, plugin)
    heads = _load(heads_path, backbone)
    sweep = resolve_sweep(heads, kind, code, value_range, option)
    _check_size(heads, rows * steps, steps, "--rows x --steps")
    images, values = generate.explore(
        heads,
        sweep.index,
        steps,
        rows,
        heads.parse_conditions(fixed),
        sweep.name,
        temperature,
        seed,
        (sweep.low, sweep.high),
        prior,
    )
    save_grid(images, path, nrow=steps, col_labels=[f"{sweep.label}={v:.3g}" for v in values])
    click.echo(f"wrote {path}: {sweep.label} from {values[0]:.4g} to {values[-1]:.4g}")


@click.command("manipulate")
@click.argument("heads_path", type=click.Path())
@click.option("--condition", "conditions", multiple=True, help="Starting condition NAME=VALUE.")
@click.option("--add", "edits", multiple=True, required=True, help="Cumulative edit NAME=VALUE (repeatable).")
@click.option("--rows", default=4, show_default=True, type=_count)
@click.option("--out", required=True, help="Output .png.")
@_common
def manipulate_cmd(heads_path, conditions, edits, rows, out, temperature, seed, backbone, force, prior):
    """Apply cumulative condition edits, one column per edit (paper Fig. 4)."""
    from flowcond.caglow import generate
    from flowcond.io.images import save_grid

    path = _check_out(out, heads_path, backbone, force)
    heads = _load(heads_path, backbone)
    _check_size(heads, rows * (len(edits) + 1), len(edits) + 1, "--rows x edits")
    images, labels = generate.manipulate(
        heads, heads.parse_conditions(list(conditions)), list(edits), rows, temperature, seed, prior
    )
    save_grid(images, path, nrow=len(labels), col_labels=labels)
    click.echo(f"wrote {path}: {' | '.join(labels)}")


COMMANDS = [sample_cmd, interpolate_cmd, explore_cmd, manipulate_cmd]
