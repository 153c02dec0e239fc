"""Backbone commands: ``train-backbone`` and ``info``.

Only torch-free modules are imported here; ``train-backbone`` imports the training code when it
runs, and ``info`` never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from flowcond.cli.options import model_option, options
from flowcond.errors import ConfigError, FileFormatError, validation_message
from flowcond.flow.config import BackboneConfig, TrainConfig

_backbone_options = options(
    model_option(BackboneConfig, "levels"),
    model_option(BackboneConfig, "steps"),
    model_option(BackboneConfig, "hidden"),
    model_option(BackboneConfig, "n_bits"),
    model_option(BackboneConfig, "coupling"),
    model_option(BackboneConfig, "scale_map"),
    model_option(BackboneConfig, "scale_clamp"),
    model_option(BackboneConfig, "lu"),
)
_train_options = options(
    model_option(TrainConfig, "epochs"),
    model_option(TrainConfig, "batch_size"),
    model_option(TrainConfig, "lr"),
    model_option(TrainConfig, "optimizer"),
    model_option(TrainConfig, "warmup"),
    model_option(TrainConfig, "decay_epochs"),
    model_option(
        TrainConfig,
        "threads",
        help="torch CPU threads [default: torch's]; 1 is often fastest on a busy 2-core machine.",
    ),
    model_option(TrainConfig, "clip"),
    model_option(TrainConfig, "max_steps"),
    model_option(TrainConfig, "seed"),
    model_option(TrainConfig, "resume", help="Continue from OUT's checkpoint (OUT.ckpt.safetensors)."),
    model_option(
        TrainConfig,
        "compile",
        "--compile",
        "compile_",
        help="torch.compile the training loss: ~25% faster on CPU after 1-2 min compiling.",
    ),
    model_option(
        TrainConfig, "fast", help="Channels-last fast path (same model and file; --no-fast: plain normflows)."
    ),
)


@click.command("train-backbone")
@model_option(TrainConfig, "dataset")
@model_option(TrainConfig, "root")
@model_option(TrainConfig, "download")
@_backbone_options
@_train_options
@click.option(
    "--samples",
    type=click.Path(),
    default=None,
    help="Sample grid PNG to write at the end [default: OUT with .png].",
)
@click.option("--out", type=click.Path(), required=True, help="Backbone file to write (.safetensors).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_backbone_cmd(dataset, root, download, samples, out, quiet, compile_, **values):
    """Train a multi-scale Glow backbone by maximum likelihood (stage 1)."""
    from flowcond.datasets import load_dataset
    from flowcond.flow.train import save_sample_grid, train_backbone

    shape = load_dataset(dataset, "train", root=root, download=download).image_shape
    backbone_fields = set(BackboneConfig.model_fields)
    try:
        bcfg = BackboneConfig(
            channels=shape[0],
            height=shape[1],
            width=shape[2],
            **{k: v for k, v in values.items() if k in backbone_fields},
        )
        tcfg = TrainConfig(
            dataset=dataset,
            root=root,
            download=download,
            out=out,
            progress=not quiet,
            compile=compile_,
            **{k: v for k, v in values.items() if k in TrainConfig.model_fields},
        )
    except ValidationError as e:
        raise ConfigError(f"invalid configuration: {validation_message(e)}") from None
    model, summary = train_backbone(bcfg, tcfg)
    png = Path(samples) if samples else Path(out).with_suffix(".png")
    save_sample_grid(model, png)
    n_bad = summary["test_images_worse_than_uniform"]
    median = (
        f", median {summary['test_bits_per_dim_median']:.4f}; {n_bad} test image(s) worse than uniform"
        if n_bad
        else ""
    )
    click.echo(
        f"wrote {out} (test {summary['test_bits_per_dim']:.4f} bits/dim{median}, "
        f"{summary['training']['seconds']:.0f} s training) and {png}"
    )


def check_backbone_header(path: str, header: dict[str, Any]) -> BackboneConfig:
    """What ``Backbone.read_config`` checks of a backbone header, without torch."""
    from flowcond.io.safefile import one_line

    if "config" not in header:
        raise FileFormatError(path, "backbone header has no config")
    try:
        config = BackboneConfig.from_header(header["config"])
    except (TypeError, ValueError) as e:
        raise FileFormatError(path, f"invalid backbone config in header: {one_line(e)}") from None
    if not isinstance(header.get("content_hash"), str):
        raise FileFormatError(path, "backbone header has no content hash")
    return config


@click.command("info")
@click.argument("path", type=click.Path())
def info_cmd(path):
    """Show a flowcond file's header (config, hashes, dataset, bits/dim) as JSON."""
    from flowcond.io.safefile import read_header

    header = read_header(path)
    if header.get("kind") == "backbone":
        check_backbone_header(path, header)  # validates the config too
        header.pop("history", None)
    click.echo(json.dumps(header, indent=2))


COMMANDS = [train_backbone_cmd, info_cmd]
