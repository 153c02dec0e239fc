"""Backbone commands: ``train-backbone`` and ``info``."""

from __future__ import annotations

import json
from pathlib import Path

import click
from pydantic import ValidationError

from flowcond.datasets import load_dataset
from flowcond.errors import ConfigError
from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig
from flowcond.flow.train import TrainConfig, save_sample_grid, train_backbone
from flowcond.io.safefile import read_header


def _config_error(e: ValidationError) -> ConfigError:
    msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors())
    return ConfigError(f"invalid configuration: {msgs}")


@click.command("train-backbone")
@click.option("--dataset", default="mnist5k", show_default=True, help="Registered dataset name.")
@click.option("--root", default=None, help="Data folder for on-disk datasets (mnist, celeba, folder).")
@click.option("--download", is_flag=True, help="Let torchvision download the dataset into --root.")
@click.option("--levels", default=3, show_default=True, help="N: levels of the multi-scale Glow.")
@click.option("--steps", default=10, show_default=True, help="K: Glow steps per level.")
@click.option("--hidden", default=128, show_default=True, help="Hidden channels of coupling networks.")
@click.option("--n-bits", default=8, show_default=True, help="Bits per colour channel modelled.")
@click.option("--coupling", type=click.Choice(["affine", "additive"]), default="affine", show_default=True)
@click.option(
    "--scale-map",
    type=click.Choice(["softclamp", "sigmoid"]),
    default="softclamp",
    show_default=True,
    help="Affine coupling scale: exp(c*tanh(s/c)) or Glow's sigmoid(s+2).",
)
@click.option("--scale-clamp", default=2.0, show_default=True, help="c of --scale-map softclamp.")
@click.option("--lu/--no-lu", default=True, show_default=True, help="LU-parametrized 1x1 convolutions.")
@click.option("--epochs", default=20, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamax", "adam"]), default="adamax", show_default=True)
@click.option("--warmup", default=200, show_default=True, help="Linear learning-rate warmup steps.")
@click.option(
    "--decay-epochs",
    default=0,
    show_default=True,
    help="Decay the learning rate linearly to 0 over the last this many epochs.",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="torch CPU threads [default: torch's]; 1 is often fastest on a busy 2-core machine.",
)
@click.option("--clip", default=50.0, show_default=True, help="Gradient-norm clip.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT's checkpoint (OUT.ckpt.safetensors).")
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the training loss: ~25% faster on CPU after 1-2 min compiling.",
)
@click.option(
    "--fast/--no-fast",
    default=True,
    show_default=True,
    help="Channels-last fast path (same model and file; --no-fast: plain normflows).",
)
@click.option(
    "--samples",
    type=click.Path(),
    default=None,
    help="Sample grid PNG to write at the end [default: OUT with .png].",
)
@click.option("--out", type=click.Path(), required=True, help="Backbone file to write (.safetensors).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_backbone_cmd(
    dataset,
    root,
    download,
    levels,
    steps,
    hidden,
    n_bits,
    coupling,
    scale_map,
    scale_clamp,
    lu,
    epochs,
    batch_size,
    lr,
    optimizer,
    warmup,
    decay_epochs,
    threads,
    clip,
    max_steps,
    seed,
    resume,
    compile_,
    fast,
    samples,
    out,
    quiet,
):
    """Train a multi-scale Glow backbone by maximum likelihood (stage 1)."""
    shape = load_dataset(dataset, "train", root=root, download=download).image_shape
    try:
        bcfg = BackboneConfig(
            channels=shape[0],
            height=shape[1],
            width=shape[2],
            levels=levels,
            steps=steps,
            hidden=hidden,
            n_bits=n_bits,
            coupling=coupling,
            scale_map=scale_map,
            scale_clamp=scale_clamp,
            lu=lu,
            seed=seed,
        )
        tcfg = TrainConfig(
            dataset=dataset,
            root=root,
            download=download,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            optimizer=optimizer,
            warmup=warmup,
            decay_epochs=decay_epochs,
            threads=threads,
            clip=clip,
            max_steps=max_steps,
            seed=seed,
            out=out,
            resume=resume,
            progress=not quiet,
            fast=fast,
            compile=compile_,
        )
    except ValidationError as e:
        raise _config_error(e) from None
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


@click.command("info")
@click.argument("path", type=click.Path())
def info_cmd(path):
    """Show a flowcond file's header (config, hashes, dataset, bits/dim) as JSON."""
    header = read_header(path)
    if header.get("kind") == "backbone":
        Backbone.read_config(path)  # validates the config too
        header.pop("history", None)
    click.echo(json.dumps(header, indent=2))


COMMANDS = [train_backbone_cmd, info_cmd]
