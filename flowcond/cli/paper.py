"""The paper's commands: ``evaluate`` (Tables 1-3 and figures) and ``train-evaluator`` (the
classifier that judges generated samples). Options and defaults come from
:class:`flowcond.paper.config.EvaluateConfig` and :class:`~flowcond.paper.config.EvaluatorTrainConfig`;
torch is imported only when a command runs."""

from __future__ import annotations

import click
from pydantic import ValidationError

from flowcond.cli.options import device_option, model_option, options
from flowcond.errors import ConfigError, validation_message
from flowcond.flow.config import TrainConfig
from flowcond.io.outputs import Output, check_cache_dir, check_outputs, require_suffix
from flowcond.paper.config import EvaluateConfig, EvaluatorTrainConfig

_threads = dict(
    type=click.IntRange(min=1),
    help="torch CPU threads [default: torch's]; 1 is fastest on a busy machine.",
)

#: command-line wording of EvaluateConfig fields (the defaults still come from the model)
_EVALUATE = {
    "backbone": dict(type=click.Path(dir_okay=False), help="Frozen backbone (.safetensors)."),
    "evaluator": dict(type=click.Path(dir_okay=False), help="Class evaluator (flowcond train-evaluator)."),
    "attr_evaluator": dict(
        type=click.Path(dir_okay=False),
        help="Attribute evaluator [default: train one on the dataset's attributes].",
    ),
    "dataset": dict(
        help="Dataset [default: the backbone's]; mnist5k means mnist5k-morpho (same images + attributes)."
    ),
    "root": dict(help="Data folder for on-disk datasets."),
    "out": dict(type=click.Path(file_okay=False), help="Results folder."),
    "cglow_epochs": dict(help="CGlow training epochs."),
    "cglow_max_steps": dict(help="Stop CGlow training after this many steps."),
    "attach_steps": dict(help="CAGlow attach steps."),
    "threads": _threads,
    "cache_dir": dict(help="Latent cache folder."),
    "seeds": dict(
        type=str,
        help="Seeds, e.g. 0,1,2: every method trained and sampled per seed, "
        "tables with mean +- std [default: --seed alone].",
    ),
    "model_cache": dict(
        type=click.Path(file_okay=False),
        help="Folder of trained CGlow baselines, reused across runs [default: OUT/models].",
    ),
}


@click.command("evaluate", short_help="Tables 1-3 and figures: CAGlow, CGlow, Glow + pre-stored.")
@options(
    *(
        model_option(EvaluateConfig, name, **_EVALUATE.get(name, {}))
        for name in EvaluateConfig.model_fields
        if name != "progress"  # --quiet
    )
)
@click.option("--force", is_flag=True, help="Replace files of another kind where evaluate writes its own.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate_cmd(quiet, force, **values):
    """Tables 1-3 (+ Fig. 3-6) for CAGlow, CGlow and Glow + pre-stored on one dataset and seed."""
    try:
        cfg = EvaluateConfig(progress=not quiet, **values)
    except ValidationError as e:
        raise ConfigError(f"invalid evaluate options: {validation_message(e)}") from None
    check_evaluate_outputs(cfg, force)
    from flowcond.paper.run import evaluate

    report = evaluate(cfg)
    out = values["out"]
    click.echo(f"wrote {out}/results.json and {out}/results.md in {report['wall_seconds']:.0f} s")
    for c in report["claims"]:
        click.echo(f"  {c['verdict']}: {c['claim']} ({c['evidence']})")


@click.command("train-evaluator")
@model_option(TrainConfig, "dataset")
@model_option(TrainConfig, "root")
@model_option(TrainConfig, "download")
@model_option(
    EvaluatorTrainConfig,
    "label",
    help="Label field to learn, categorical or binary [default: the first field].",
)
@model_option(EvaluatorTrainConfig, "epochs")
@model_option(EvaluatorTrainConfig, "batch_size")
@model_option(EvaluatorTrainConfig, "lr")
@model_option(EvaluatorTrainConfig, "shift")
@model_option(
    EvaluatorTrainConfig,
    "rotate",
    help="Random rotation, degrees [default: 10 for class labels, 0 for attributes].",
)
@model_option(
    EvaluatorTrainConfig,
    "scale",
    help="Random zoom, 1 +- SCALE [default: 0.1 for class labels, 0 for attributes].",
)
@model_option(EvaluatorTrainConfig, "max_steps")
@model_option(EvaluatorTrainConfig, "seed")
@click.option("--threads", default=None, **_threads)
@device_option()
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Evaluator file to write (.safetensors).",
)
@click.option("--force", is_flag=True, help="Replace an existing file of another kind at --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_evaluator_cmd(dataset, root, download, threads, device, out, force, quiet, **values):
    """Train the evaluator classifier on real images (judges samples: Tables 1-3)."""
    path = require_suffix(out, "--out", (".safetensors",), "an evaluator file")
    check_outputs([Output(path, "--out", "evaluator")], force=force)
    from flowcond.distributed import resolve_device
    from flowcond.paper.train_evaluator import train_evaluator

    evaluator, summary = train_evaluator(
        dataset,
        out=out,
        root=root,
        download=download,
        progress=not quiet,
        threads=threads,
        device=str(resolve_device(device)),
        **values,
    )
    click.echo(
        f"wrote {out} (label {evaluator.label!r}, {summary['steps']} steps, {summary['seconds']:.1f} s)"
    )
    click.echo(f"test accuracy: {summary['test_accuracy']:.4f}")


def check_evaluate_outputs(cfg: EvaluateConfig, force: bool) -> None:
    """The output rule for ``evaluate``, before any work: ``--out`` a writable folder in which
    none of the files evaluate writes is one of its inputs; a writable cache."""
    from pathlib import Path

    folder = Path(cfg.out)
    inputs = {
        "--backbone": cfg.backbone,
        "--evaluator": cfg.evaluator,
        "--attr-evaluator": cfg.attr_evaluator,
    }
    outputs = [Output(folder, "--out", "folder")]
    if cfg.attr_evaluator is None:
        outputs.append(Output(folder / "attr_evaluator.safetensors", "the attribute evaluator", "evaluator"))
    check_outputs(outputs, inputs, force)
    for option, value in inputs.items():
        p = Path(value) if value is not None else None
        if p is None or p.resolve().parent != folder.resolve():
            continue
        if p.name in ("results.json", "results.md") or (p.name.startswith("fig") and p.suffix == ".png"):
            raise ConfigError(
                f"{option} {value} is in --out {cfg.out}, where evaluate writes a file of that "
                f"name: it would be destroyed; choose another --out"
            )
    check_cache_dir(cfg.cache_dir)


COMMANDS = [evaluate_cmd, train_evaluator_cmd]
