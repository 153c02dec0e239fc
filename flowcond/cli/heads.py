"""Commands that attach heads to a backbone and generate with them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
import torch
from pydantic import ValidationError

from flowcond.caglow import generate
from flowcond.caglow.attach import attach
from flowcond.caglow.config import AttachConfig, Lambdas
from flowcond.caglow.heads import Heads
from flowcond.errors import ConfigError
from flowcond.io.atomic import atomic_write
from flowcond.io.images import save_grid


def _parse_kv(items: tuple[str, ...], what: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _plugin_options(items: tuple[str, ...]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for key, value in _parse_kv(items, "--option").items():
        plugin, sep, field = key.partition(".")
        if not sep:
            raise ConfigError(f"--option {key}=...: expected PLUGIN.FIELD=VALUE, e.g. codes.n=2")
        out.setdefault(plugin, {})[field] = value
    return out


@click.command("attach")
@click.option("--backbone", type=click.Path(), required=True, help="Frozen backbone (.safetensors).")
@click.option(
    "--plugin",
    "plugin_names",
    multiple=True,
    required=True,
    help="Condition plugin to attach (repeatable), e.g. ids, attributes, codes.",
)
@click.option("--option", "options", multiple=True, help="Plugin option PLUGIN.FIELD=VALUE (repeatable).")
@click.option("--dataset", default=None, help="Dataset [default: the backbone's training dataset].")
@click.option("--root", default=None, help="Data folder for on-disk datasets.")
@click.option("--steps", default=3000, show_default=True, help="Training steps (D and E updates).")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=2e-4, show_default=True)
@click.option("--encoder", type=click.Choice(["auto", "mlp", "conv"]), default="auto", show_default=True)
@click.option("--lambda", "lambdas", multiple=True, help="Loss weight NAME=VALUE, NAME in E, Di, C, De, FM.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch CPU threads for the training loop.")
@click.option("--resume", is_flag=True, help="Continue from OUT's checkpoint.")
@click.option("--cache-dir", default=None, help="Latent cache folder [default: ~/.cache/flowcond/latents].")
@click.option("--out", type=click.Path(), required=True, help="Heads file to write (.safetensors).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def attach_cmd(
    backbone,
    plugin_names,
    options,
    dataset,
    root,
    steps,
    batch_size,
    lr,
    encoder,
    lambdas,
    seed,
    threads,
    resume,
    cache_dir,
    out,
    quiet,
):
    """Train condition heads (E + supervision block) on a frozen backbone (CAGlow stage 2)."""
    try:
        config = AttachConfig(
            plugins=list(plugin_names),
            plugin_options=_plugin_options(options),
            dataset=dataset,
            root=root,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            encoder=encoder,
            supervision=encoder,
            lambdas=Lambdas(**_parse_kv(lambdas, "--lambda")),
            seed=seed,
            threads=threads,
            cache_dir=cache_dir,
        )
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid attach configuration: {msgs}") from None
    _, summary = attach(backbone, config, out, resume=resume, progress=not quiet)
    click.echo(
        f"wrote {out} in {summary['total_seconds']:.1f} s (latent encoding {summary['encode_seconds']:.1f} s)"
    )
    for key, value in summary["metrics"].items():
        click.echo(f"  {key}: {json.dumps(value)}")


def _load(heads_path: str, backbone: str | None) -> Heads:
    return Heads.load(heads_path, backbone)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _check_out(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() not in (".png", ".npz"):
        raise ConfigError(f"--out {out}: must end in .png (image grid) or .npz (arrays)")
    return path


backbone_option = click.option(
    "--backbone",
    type=click.Path(),
    default=None,
    help="Backbone file [default: the one recorded in the heads file].",
)
common = [
    click.option("--temperature", default=0.8, show_default=True, help="Scale of the noise eps."),
    click.option("--seed", default=0, show_default=True),
    backbone_option,
]


def _common(f):
    for opt in reversed(common):
        f = opt(f)
    return f


@click.command("sample")
@click.argument("heads_path", type=click.Path())
@click.option("--condition", "conditions", multiple=True, help="NAME=VALUE, e.g. ids=7 (repeatable).")
@click.option("--n", default=64, show_default=True, help="Number of images.")
@click.option("--out", required=True, help="Output .png (labelled grid) or .npz (images + conditions).")
@_common
def sample_cmd(heads_path, conditions, n, out, temperature, seed, backbone):
    """Generate images x = F^-1(E(c, eps)) for the given conditions."""
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


def _png(out: str) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: must end in .png")
    return path


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
    path = _png(out)
    heads = _load(heads_path, backbone)
    images, labels = generate.manipulate(
        heads, heads.parse_conditions(list(conditions)), list(edits), rows, temperature, seed
    )
    save_grid(images, path, nrow=len(labels), col_labels=labels)
    click.echo(f"wrote {path}: {' | '.join(labels)}")


COMMANDS = [attach_cmd, sample_cmd, interpolate_cmd, explore_cmd, manipulate_cmd]
