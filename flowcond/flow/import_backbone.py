"""``flowcond import-backbone``: a Glow trained with another library, as a flowcond backbone file.

From a normflows ``state_dict`` (:mod:`flowcond.flow.import_normflows` reads its shape and
rebuilds the normflows model), the weights are mapped onto flowcond's :class:`Backbone` (the
same normflows modules, so the coupling, 1x1 convolution and ActNorm tensors are copied as they
are) with two exact re-parametrizations:

* **input range.** normflows' Glow example feeds images in [0, 1]; flowcond feeds [-0.5, 0.5].
  The offset is folded into the shift of the image-side ActNorm (same Jacobian, same density).
* **prior.** ``GlowBase`` means and log-scales are stored already multiplied out
  (``loc * exp(loc_logs * logscale_factor)``, ``*_logs = 0``); a class-conditional prior becomes
  the prior of the class ``prior_class``; ``DiagGaussian`` priors are kept (``prior="diag"``).

The import is then checked against the normflows model on random images: latents (encode),
images (decode) and log-likelihood must agree within :data:`RTOL` of their scale, or nothing is
written. The file records the figures and where it came from (``provenance``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from flowcond.datasets import ImageDataset
from flowcond.errors import ConfigError, FileFormatError
from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig
from flowcond.flow.header import provenance
from flowcond.flow.import_config import SOURCES, NormflowsImportConfig
from flowcond.flow.import_normflows import (
    GlowShape,
    build_reference,
    check_keys,
    describe,
    infer_glow,
    read_state_dict,
    sha256_file,
    to_plain_dict,
)
from flowcond.io.outputs import check_locations
from flowcond.training import progress_bar

#: relative tolerance of the verification: each max |difference| must be at most
#: ``RTOL * max(1, max |normflows value|)`` (float32 arithmetic in a different order)
RTOL = 1e-4
#: temperature of the random latents decoded by both models
VERIFY_TEMPERATURE = 0.7
#: test images scored with ``--dataset``
MAX_SCORED = 2000


def import_backbone(
    path: str | os.PathLike,
    out: str | os.PathLike,
    source: str = "normflows",
    config: NormflowsImportConfig | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[Backbone, dict[str, Any]]:
    """Import the ``state_dict`` file ``path`` saved from a ``source`` model (normflows' Glow)
    into the backbone file ``out``; return the frozen backbone and the verification report.

    ``options`` are the fields of :class:`NormflowsImportConfig` (``image_shape``,
    ``scale_map``, ``input_range``, ``prior_class``, ``dataset``...), or pass ``config``;
    ``progress`` draws a bar while the ``dataset``'s test split is scored.
    Raises FileFormatError (naming the file) for a state dict it cannot map or whose import
    disagrees with normflows; then nothing is written.
    """
    if source not in SOURCES:
        raise ConfigError(f"--from {source!r}: unknown source library (supported: {', '.join(SOURCES)})")
    cfg = config or NormflowsImportConfig(**options)
    check_locations({"out": out}, {"state dict": path})
    sd = read_state_dict(path)
    test = _test_split(cfg.dataset) if cfg.dataset else None  # loaded once: its shape, its score
    dataset_shape = tuple(test.image_shape) if test is not None else None
    shape = infer_glow(path, sd, cfg, dataset_shape)
    _check_prior_class(path, shape, cfg)
    reference = build_reference(shape, cfg)
    check_keys(path, sd, reference, shape)
    reference.load_state_dict(sd, strict=True)
    reference.eval()
    backbone = convert(reference, shape, cfg)
    report = verify(reference, backbone, shape, cfg)
    failed = [
        k for k in ("z", "x", "log_likelihood") if report[f"{k}_max_abs_diff"] > report[f"{k}_tolerance"]
    ]
    if failed:
        figures = ", ".join(
            f"{k} {report[f'{k}_max_abs_diff']:.3g} > {report[f'{k}_tolerance']:.3g}" for k in failed
        )
        raise FileFormatError(
            path,
            f"the imported backbone disagrees with the normflows model ({figures}): this Glow variant "
            "is not represented exactly; nothing written",
        )
    meta: dict[str, Any] = {
        "provenance": provenance(
            "imported", "normflows", file=Path(path).name, sha256=sha256_file(path), model=describe(shape)
        ),
        "import_options": to_plain_dict(cfg.model_dump(exclude={"verify_samples", "seed"})),
        "import_verification": report,
    }
    if cfg.dataset:
        meta["dataset"] = {"name": cfg.dataset, "split": "train"}
        meta.update(score_test_split(backbone, test, cfg.dataset, progress))
        other = "centered" if cfg.input_range == "unit" else "unit"
        alt = convert(reference, shape, cfg.model_copy(update={"input_range": other}))
        median = score_test_split(alt, test, cfg.dataset, progress).get("test_bits_per_dim_median")
        if median is not None:  # how the other input range would score: a wrong guess shows
            report[f"test_bits_per_dim_median_if_{other}"] = median
    backbone.save(out, **meta)
    return backbone, report


def score_test_split(
    backbone: Backbone, test: ImageDataset, dataset: str, progress: bool = True
) -> dict[str, Any]:
    """Bits/dim of the imported backbone on (the first :data:`MAX_SCORED` images of) ``test``,
    the test split of ``dataset``, as ``train-backbone`` records them; a median above ``n_bits`` (worse
    than uniform noise) means an option (``input_range``, ``scale_map``) does not match how the
    flow was trained. Non-finite figures are left out."""
    from flowcond.flow.train import bpd_per_image, bpd_stats

    n, chunk = min(len(test), MAX_SCORED), 250
    values = []
    with progress_bar(n, f"bits/dim on {dataset}", progress, unit="img", leave=False) as bar:
        for i, start in enumerate(range(0, n, chunk)):
            part = ImageDataset(test.images_at(slice(start, min(start + chunk, n))), {}, [], test.spec)
            values.append(bpd_per_image(backbone, part, seed=i))
            bar.update(len(part))
    stats = bpd_stats(torch.cat(values), backbone.config.n_bits)
    out = {
        "test_bits_per_dim": stats["mean"],
        "test_bits_per_dim_median": stats["median"],
        "test_images_worse_than_uniform": stats["worse_than_uniform"],
        "test_images_scored": n,
    }
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _test_split(name: str) -> ImageDataset:
    from flowcond.datasets import load_dataset

    return load_dataset(name, "test")


def _check_prior_class(path: str | os.PathLike, shape: GlowShape, cfg: NormflowsImportConfig) -> None:
    if shape.num_classes is None:
        if cfg.prior_class is not None:
            raise ConfigError(
                f"--prior-class {cfg.prior_class}: the prior of {path} is not class-conditional"
            )
        return
    if cfg.prior_class is None:
        raise FileFormatError(
            path,
            f"class-conditional prior ({shape.num_classes} classes; q0.I.loc"
            f"{'_cc' if shape.prior == 'glow' else ''}): flowcond's backbone has one unconditional prior; "
            f"pass --prior-class K (0..{shape.num_classes - 1}) to use class K's prior "
            "(the flow is imported exactly)",
        )
    if cfg.prior_class >= shape.num_classes:
        raise ConfigError(
            f"--prior-class {cfg.prior_class}: the prior has classes 0..{shape.num_classes - 1}"
        )


def offset(cfg: NormflowsImportConfig) -> float:
    """normflows input = flowcond input + offset."""
    return 0.5 if cfg.input_range == "unit" else 0.0


def convert(reference: torch.nn.Module, shape: GlowShape, cfg: NormflowsImportConfig) -> Backbone:
    """The flowcond backbone computing what ``reference`` computes (frozen)."""
    affine = shape.coupling == "affine"
    config = BackboneConfig(
        channels=shape.channels,
        height=shape.height,
        width=shape.width,
        levels=shape.levels,
        steps=shape.steps,
        hidden=shape.hidden,
        n_bits=cfg.n_bits,
        coupling=shape.coupling,
        scale_map=cfg.scale_map if affine else "sigmoid",
        lu=shape.lu,
        prior=shape.prior,
    )
    backbone = Backbone(config)
    src = {k: v.detach().to(torch.float32) for k, v in reference.state_dict().items()}
    weights = {k: src[k].clone() for k in backbone.flow.state_dict() if not k.startswith("q0.")}
    # fold the input offset into the image-side ActNorm: (y + o - t) = (y - (t - o))
    last = reference.flows[-1][shape.steps - 1].flows
    t_key = f"flows.{shape.levels - 1}.{shape.steps - 1}.flows.{len(last) - 1}.t"
    weights[t_key] = weights[t_key] - offset(cfg)
    k = cfg.prior_class
    for i, q in enumerate(reference.q0):
        loc, log_scale = _prior_params(q, k)
        p = f"q0.{i}."
        weights[p + "loc"], weights[p + "log_scale"] = loc, log_scale
        if shape.prior == "glow":
            weights[p + "loc_logs"] = torch.zeros_like(loc)
            weights[p + "log_scale_logs"] = torch.zeros_like(log_scale)
    backbone.flow.load_state_dict(weights, strict=True)
    return backbone.freeze()


@torch.no_grad()
def _prior_params(q: torch.nn.Module, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-scale of prior ``q`` (class ``k`` of a class-conditional one), float32."""
    import normflows as nf

    if isinstance(q, nf.distributions.GlowBase):
        loc = q.loc * torch.exp(q.loc_logs * q.logscale_factor)
        log_scale = q.log_scale * torch.exp(q.log_scale_logs * q.logscale_factor)
        if q.class_cond:
            loc = loc + q.loc_cc[k].view(1, -1, 1, 1)
            log_scale = log_scale + q.log_scale_cc[k].view(1, -1, 1, 1)
        return loc.float().clone(), log_scale.float().clone()
    if isinstance(q, nf.distributions.ClassCondDiagGaussian):
        return q.loc[..., k][None].float().clone(), q.log_scale[..., k][None].float().clone()
    return q.loc.float().clone(), q.log_scale.float().clone()


@torch.no_grad()
def verify(
    reference: torch.nn.Module, backbone: Backbone, shape: GlowShape, cfg: NormflowsImportConfig
) -> dict[str, Any]:
    """Max |difference| between the normflows model and the imported backbone, on
    ``cfg.verify_samples`` random images: raw latents (encode), log-likelihood, and images
    decoded from random latents at :data:`VERIFY_TEMPERATURE` and from the encoded latents."""
    g = torch.Generator().manual_seed(cfg.seed)
    n, o = cfg.verify_samples, offset(cfg)
    x = torch.rand(n, *backbone.image_shape, generator=g)
    y = backbone.preprocess(x, torch.rand(n, *backbone.image_shape, generator=g))
    labels = None if shape.num_classes is None else torch.full((n,), cfg.prior_class, dtype=torch.long)
    z_ref, _ = reference.inverse_and_log_det(y + o)
    z_fc, _ = backbone.encode_levels(y)
    ll_ref = reference.log_prob(y + o, labels)
    ll_fc = backbone.log_prob_input(y)
    eps = torch.randn(n, backbone.latent_dim, generator=g) * VERIFY_TEMPERATURE
    latents = [backbone.unstandardize(backbone.split_levels(eps)), [z.clone() for z in z_ref]]
    x_ref = torch.cat([reference.forward_and_log_det(lv)[0] - o for lv in latents])
    x_fc = torch.cat(
        [backbone._decode_flow(backbone.flatten_levels(backbone.standardize(lv))) for lv in latents]
    )
    finite = torch.isfinite(x_ref.reshape(len(x_ref), -1)).all(dim=1)
    report: dict[str, Any] = {"samples": n, "seed": cfg.seed, "relative_tolerance": RTOL}
    for name, a, b in (
        ("z", backbone.flatten_levels(z_fc), backbone.flatten_levels(z_ref)),
        ("x", x_fc[finite], x_ref[finite]),
        ("log_likelihood", ll_fc, ll_ref),
    ):
        diff = float((a - b).abs().max()) if b.numel() else math.inf
        if not math.isfinite(diff):
            diff = 1e300  # JSON-safe "disagrees": non-finite in one model only
        scale = float(b.abs().max()) if b.numel() else 1.0
        if not math.isfinite(scale):  # a non-finite reference would make any difference pass
            diff, scale = 1e300, 1.0
        report[f"{name}_max_abs_diff"] = diff
        report[f"{name}_tolerance"] = RTOL * max(1.0, scale)
    report["decoded_images_compared"] = int(finite.sum())
    report["decoded_images_skipped_nonfinite"] = int((~finite).sum())
    return report
