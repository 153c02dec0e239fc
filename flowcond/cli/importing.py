"""``flowcond import-backbone``: a Glow trained with normflows as a flowcond backbone file.

torch-free at import time: the command imports the importer (torch, normflows) when it runs.
"""

from __future__ import annotations

import click
from pydantic import ValidationError

from flowcond.cli.options import model_option, options
from flowcond.errors import ConfigError, validation_message
from flowcond.flow.import_config import SOURCES, NormflowsImportConfig
from flowcond.io.outputs import Output, check_outputs, require_suffix


def _shape(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        parts = tuple(int(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: expected C,H,W (three positive integers, e.g. 3,32,32)")
    return parts


_RANGES = {"unit": "[0, 1]", "centered": "[-0.5, 0.5]"}
_import_options = options(
    model_option(NormflowsImportConfig, "scale_map"),
    model_option(NormflowsImportConfig, "split_mode"),
    model_option(NormflowsImportConfig, "input_range"),
    model_option(NormflowsImportConfig, "n_bits"),
    model_option(NormflowsImportConfig, "logscale_factor"),
    model_option(NormflowsImportConfig, "prior_class"),
    model_option(NormflowsImportConfig, "dataset"),
    model_option(NormflowsImportConfig, "verify_samples"),
    model_option(NormflowsImportConfig, "seed"),
)


@click.command("import-backbone")
@click.argument("state_dict", type=click.Path())
@click.option(
    "--from", "source", type=click.Choice(SOURCES), required=True, help="Library that trained the flow."
)
@click.option(
    "--image-shape",
    callback=_shape,
    default=None,
    help="Image shape C,H,W (needed for GlowBase priors; default: from DiagGaussian priors or --dataset).",
)
@_import_options
@click.option("--out", type=click.Path(), required=True, help="Backbone file to write (.safetensors).")
@click.option("--force", is_flag=True, help="Replace an existing file of another kind at --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def import_backbone_cmd(state_dict, source, image_shape, out, force, quiet, **values):
    """Import a Glow saved with torch.save(model.state_dict()) as a backbone file.

    Loads STATE_DICT with torch.load(weights_only=True), infers the Glow's shape from its
    tensors, checks the import against the normflows model on random images (encode, decode,
    log-likelihood) and writes OUT only if they agree.
    """
    path = require_suffix(out, "--out", (".safetensors",), "a backbone file")
    check_outputs([Output(path, "--out", "backbone")], {"STATE_DICT": state_dict}, force=force)
    try:
        cfg = NormflowsImportConfig(image_shape=image_shape, **values)
    except ValidationError as e:
        raise ConfigError(f"invalid import options: {validation_message(e)}") from None
    from flowcond.flow.import_backbone import import_backbone

    backbone, report = import_backbone(state_dict, out, source=source, config=cfg, progress=not quiet)
    prov = backbone.metadata["provenance"]
    click.echo(f"imported a normflows {prov['library_version']} Glow: {prov['model']}")
    click.echo(
        f"agreement with normflows on {report['samples']} random images: max |diff| z "
        f"{report['z_max_abs_diff']:.2g}, x {report['x_max_abs_diff']:.2g}, log-likelihood "
        f"{report['log_likelihood_max_abs_diff']:.2g} nats (tolerance: {report['relative_tolerance']:g} "
        "of each scale)"
    )
    meta = backbone.metadata
    if "test_bits_per_dim_median" in meta:
        click.echo(
            f"{values['dataset']} test bits/dim: median {meta['test_bits_per_dim_median']:.4f}, mean "
            f"{meta.get('test_bits_per_dim', float('nan')):.4f} ({meta['test_images_scored']} images)"
        )
        other = "centered" if cfg.input_range == "unit" else "unit"
        alt = report.get(f"test_bits_per_dim_median_if_{other}")
        if alt is not None and alt < meta["test_bits_per_dim_median"] - 0.01:
            click.echo(
                f"warning: with --input-range {other} the test images score better (median {alt:.4f} "
                f"bits/dim): was the flow trained on images in {_RANGES[other]}?",
                err=True,
            )
        if meta["test_bits_per_dim_median"] > cfg.n_bits:
            click.echo(
                f"warning: worse than uniform noise ({cfg.n_bits} bits/dim): an untrained flow, or "
                "--scale-map, --input-range or --n-bits do not match how it was trained",
                err=True,
            )
    click.echo(f"wrote {out} (hash {backbone.content_hash[:12]})")


COMMANDS = [import_backbone_cmd]
