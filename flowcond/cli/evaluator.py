"""`flowcond train-evaluator`: the classifier that judges generated samples."""

from __future__ import annotations

import click

from flowcond.paper.evaluator import train_evaluator


@click.command("train-evaluator")
@click.option("--dataset", default="mnist5k", show_default=True, help="Registered dataset name.")
@click.option("--root", default=None, help="Data folder for on-disk datasets (mnist, celeba, ...).")
@click.option("--download", is_flag=True, help="Let torchvision download the dataset into --root.")
@click.option(
    "--label",
    default=None,
    help="Label field to learn, categorical or binary [default: the first field].",
)
@click.option("--epochs", default=15, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=3e-3, show_default=True, help="Peak learning rate (then cosine).")
@click.option("--shift", default=2.0, show_default=True, help="Random shift augmentation, pixels.")
@click.option(
    "--rotate",
    type=float,
    default=None,
    help="Random rotation, degrees [default: 10 for class labels, 0 for attributes].",
)
@click.option(
    "--scale",
    type=float,
    default=None,
    help="Random zoom, 1 +- SCALE [default: 0.1 for class labels, 0 for attributes].",
)
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch CPU threads [default: torch's]; 1 is fastest on a busy machine.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Evaluator file to write (.safetensors).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_evaluator_cmd(
    dataset,
    root,
    download,
    label,
    epochs,
    batch_size,
    lr,
    shift,
    rotate,
    scale,
    max_steps,
    seed,
    threads,
    out,
    quiet,
):
    """Train the evaluator classifier on real images (judges samples: Tables 1-3)."""
    evaluator, summary = train_evaluator(
        dataset,
        out=out,
        root=root,
        download=download,
        progress=not quiet,
        threads=threads,
        label=label,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        shift=shift,
        rotate=rotate,
        scale=scale,
        max_steps=max_steps,
        seed=seed,
    )
    click.echo(
        f"wrote {out} (label {evaluator.label!r}, {summary['steps']} steps, {summary['seconds']:.1f} s)"
    )
    click.echo(f"test accuracy: {summary['test_accuracy']:.4f}")


COMMANDS: list = [train_evaluator_cmd]
