"""`flowcond evaluate`: the paper's Tables 1-3 and figures for CAGlow, CGlow and Glow (+pre-stored)."""

from __future__ import annotations

import click
from pydantic import ValidationError

from flowcond.errors import ConfigError


@click.command("evaluate")
@click.option(
    "--backbone", type=click.Path(dir_okay=False), required=True, help="Frozen backbone (.safetensors)."
)
@click.option(
    "--evaluator",
    type=click.Path(dir_okay=False),
    required=True,
    help="Class evaluator (flowcond train-evaluator).",
)
@click.option(
    "--attr-evaluator",
    type=click.Path(dir_okay=False),
    default=None,
    help="Attribute evaluator [default: train one on the dataset's attributes].",
)
@click.option(
    "--dataset",
    default=None,
    help="Dataset [default: the backbone's]; mnist5k means mnist5k-morpho (same images + attributes).",
)
@click.option("--root", default=None, help="Data folder for on-disk datasets.")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
@click.option("--cglow-epochs", default=1, show_default=True, help="CGlow training epochs.")
@click.option("--cglow-max-steps", type=int, default=None, help="Stop CGlow training after this many steps.")
@click.option("--attach-steps", default=1000, show_default=True, help="CAGlow attach steps.")
@click.option(
    "--codes", default=2, show_default=True, help="Unsupervised codes attached with CAGlow (0: none)."
)
@click.option("--samples-per-class", default=50, show_default=True)
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--alpha", default=1.0, show_default=True, help="Scale of the pre-stored attribute deltas.")
@click.option("--attr-evaluator-epochs", default=5, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch CPU threads [default: torch's]; 1 is fastest on a busy machine.",
)
@click.option("--cache-dir", default=None, help="Latent cache folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate_cmd(
    backbone,
    evaluator,
    attr_evaluator,
    dataset,
    root,
    out,
    cglow_epochs,
    cglow_max_steps,
    attach_steps,
    codes,
    samples_per_class,
    temperature,
    alpha,
    attr_evaluator_epochs,
    seed,
    threads,
    cache_dir,
    quiet,
):
    """Tables 1-3 (+ Fig. 3-6) for CAGlow, CGlow and Glow + pre-stored on one dataset and seed."""
    from flowcond.paper.evaluate import EvaluateConfig, evaluate

    try:
        cfg = EvaluateConfig(
            backbone=backbone,
            evaluator=evaluator,
            attr_evaluator=attr_evaluator,
            dataset=dataset,
            root=root,
            out=out,
            cglow_epochs=cglow_epochs,
            cglow_max_steps=cglow_max_steps,
            attach_steps=attach_steps,
            codes=codes,
            samples_per_class=samples_per_class,
            temperature=temperature,
            alpha=alpha,
            attr_evaluator_epochs=attr_evaluator_epochs,
            seed=seed,
            threads=threads,
            cache_dir=cache_dir,
            progress=not quiet,
        )
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid evaluate options: {msgs}") from None
    report = evaluate(cfg)
    click.echo(f"wrote {out}/results.json and {out}/results.md in {report['wall_seconds']:.0f} s")
    for c in report["claims"]:
        click.echo(f"  {'confirmed' if c['confirmed'] else 'refuted'}: {c['claim']} ({c['evidence']})")


COMMANDS = [evaluate_cmd]
