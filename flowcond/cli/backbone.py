"""Backbone commands: ``train-backbone`` and ``info``.

Only torch-free modules are imported here; ``train-backbone`` imports the training code when it
runs, and ``info`` never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from pydantic import ValidationError

from flowcond.cli.options import device_option, model_option, options
from flowcond.errors import ConfigError, validation_message
from flowcond.flow.config import BackboneConfig, TrainConfig
from flowcond.io.outputs import Output, check_outputs, checkpoint_path, require_suffix

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
    device_option(),
    model_option(
        TrainConfig,
        "precision",
        help="bf16: autocast the coupling networks (log-dets, prior, bits/dim stay fp32); for GPUs.",
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
    help="Sample grid PNG to write at the end [default: OUT with .png instead of .safetensors].",
)
@click.option(
    "--out",
    type=click.Path(),
    required=True,
    help="Backbone file to write (must end in .safetensors); its checkpoint is OUT.ckpt.safetensors.",
)
@click.option("--force", is_flag=True, help="Replace existing files of another kind at the output paths.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_backbone_cmd(dataset, root, download, samples, out, force, quiet, compile_, **values):
    """Train a multi-scale Glow backbone by maximum likelihood (stage 1)."""
    from flowcond.datasets import load_dataset
    from flowcond.distributed import is_main, resolve_device
    from flowcond.flow.train import save_sample_grid, train_backbone

    png = check_backbone_outputs(out, samples, force)
    resolve_device(values["device"])  # a GPU asked for and missing: before the data is loaded
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
    if not is_main():  # under torchrun, rank 0 alone writes
        return
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


def check_backbone_outputs(out: str, samples: str | None, force: bool) -> Path:
    """The output rule for ``train-backbone`` (before any work); returns the sample grid path.

    ``--out`` must end in ``.safetensors``, so that the default ``--samples`` (``OUT`` with
    ``.png``) and the checkpoint (``OUT.ckpt.safetensors``) can never be ``--out`` itself.
    """
    path = require_suffix(out, "--out", (".safetensors",), "a backbone file")
    png = (
        require_suffix(samples, "--samples", (".png",), "the sample grid")
        if samples
        else path.with_suffix(".png")
    )
    check_outputs(
        [
            Output(path, "--out", "backbone"),
            Output(checkpoint_path(path), "the checkpoint", "backbone-checkpoint"),
            Output(png, "--samples", "png"),
        ],
        force=force,
    )
    return png


@click.command("info")
@click.argument("path", type=click.Path())
def info_cmd(path):
    """Show a flowcond file's header (config, hashes, provenance, dataset, bits/dim) as JSON."""
    from flowcond.flow.header import check_backbone_header, describe_provenance
    from flowcond.io.safefile import read_header

    header = read_header(path)
    if header.get("kind") == "backbone":
        check_backbone_header(path, header)  # validates the config too
        header.pop("history", None)
        header["provenance"] = describe_provenance(header)  # older files: derived
    click.echo(json.dumps(header, indent=2))


COMMANDS = [train_backbone_cmd, info_cmd]
