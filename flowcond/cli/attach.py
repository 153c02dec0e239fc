"""``flowcond attach``: train condition heads on a frozen backbone (CAGlow stage 2).

Options and their defaults come from :class:`flowcond.caglow.config.AttachConfig`; torch is
imported only when the command runs.
"""

from __future__ import annotations

import json

import click
from pydantic import ValidationError

from flowcond.caglow.config import AttachConfig, Lambdas
from flowcond.cli.options import device_option, model_option, weights_help
from flowcond.errors import ConfigError, validation_message
from flowcond.io.outputs import Output, check_cache_dir, check_outputs, checkpoint_path, require_suffix


def parse_kv(items: tuple[str, ...], what: str) -> dict[str, object]:
    """``("a=1", "b=x")`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON when they are JSON)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except (RecursionError, ValueError):  # not JSON (or absurdly nested / long): a string
            out[key.strip()] = value
    return out


def plugin_options(items: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """``("codes.n=2",)`` -> ``{"codes": {"n": 2}}``."""
    out: dict[str, dict[str, object]] = {}
    for key, value in parse_kv(items, "--option").items():
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
@model_option(AttachConfig, "dataset")
@model_option(AttachConfig, "root")
@model_option(AttachConfig, "steps")
@model_option(AttachConfig, "batch_size")
@model_option(AttachConfig, "lr")
@model_option(AttachConfig, "encoder")
@model_option(
    AttachConfig,
    "supervision",
    show_default=False,
    help="Architecture of the supervision block [default: the value of --encoder].",
)
@click.option(
    "--lambda",
    "lambdas",
    multiple=True,
    help=weights_help(Lambdas, "Loss weight")
    + " C.KIND or De.KIND weighs one condition's loss inside C or De (e.g. C.continuous=2; default: "
    "the plugin's loss_weight, 1 unless it declares one).",
)
@model_option(AttachConfig, "classifier_noise")
@model_option(AttachConfig, "image_check")
@model_option(AttachConfig, "seed")
@model_option(AttachConfig, "threads", help="torch CPU threads for the training loop.")
@device_option(help="Where the backbone encodes the dataset: auto (cuda if available), cpu, cuda, cuda:N.")
@click.option("--resume", is_flag=True, help="Continue from OUT's checkpoint.")
@model_option(AttachConfig, "cache_dir")
@click.option(
    "--out",
    type=click.Path(),
    required=True,
    help="Heads file to write (must end in .safetensors; never the backbone); its checkpoint is "
    "OUT.ckpt.safetensors.",
)
@click.option("--force", is_flag=True, help="Replace existing files of another kind at the output paths.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def attach_cmd(
    ctx, backbone, plugin_names, options, lambdas, resume, out, force, quiet, supervision, device, **values
):
    """Train condition heads (E + supervision block) on a frozen backbone (CAGlow stage 2)."""
    if ctx.get_parameter_source("supervision") in (None, click.core.ParameterSource.DEFAULT):
        supervision = values["encoder"]
    try:
        config = AttachConfig(
            plugins=list(plugin_names),
            plugin_options=plugin_options(options),
            supervision=supervision,
            lambdas=Lambdas(**parse_kv(lambdas, "--lambda")),
            **values,
        )
    except ValidationError as e:
        raise ConfigError(f"invalid attach configuration: {validation_message(e)}") from None
    check_attach_outputs(backbone, out, config.cache_dir, force)
    from flowcond.caglow.attach import attach

    _, summary = attach(backbone, config, out, resume=resume, progress=not quiet, device=device)
    click.echo(
        f"wrote {out} in {summary['total_seconds']:.1f} s (latent encoding {summary['encode_seconds']:.1f} s)"
    )
    for key, value in summary["metrics"].items():
        click.echo(f"  {key}: {json.dumps(value)}")
    if "image_check" in summary:
        click.echo(f"  image check (test images): {json.dumps(summary['image_check']['test'])}")


def check_attach_outputs(backbone: str, out: str, cache_dir: str | None, force: bool) -> None:
    """The output rule for ``attach``, before any work: ``--out`` a ``.safetensors`` that is not
    the backbone, a checkpoint beside it that is not the backbone either, a writable cache."""
    path = require_suffix(out, "--out", (".safetensors",), "a heads file")
    check_outputs(
        [
            Output(path, "--out", "heads"),
            Output(checkpoint_path(path), "the checkpoint", "heads-checkpoint"),
        ],
        {"--backbone": backbone},
        force,
    )
    check_cache_dir(cache_dir)


COMMANDS = [attach_cmd]
