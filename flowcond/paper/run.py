"""``flowcond evaluate``: the paper's Tables 1-3 and Fig. 3-6 for CAGlow, CGlow and Glow (+pre-stored).

One run, one dataset, one backbone shape, one seed:

1. load the frozen backbone and the class evaluator; resolve a dataset with a categorical class
   field *and* a binary attribute field (the named dataset, or a registered one that ``extends``
   it: ``mnist5k`` becomes ``mnist5k-morpho``, the same images with Morpho-MNIST attributes
   thick/slanted/wide/tall); find the condition plugins playing the class, attribute and code roles
   (:mod:`flowcond.paper.discovery`); load or train an attribute evaluator;
2. encode the dataset once (the latent cache, shared by CAGlow and the pre-stored features);
3. train the three conditional models, timing each: **CGlow** (same ``BackboneConfig``, trained end
   to end with a prior linear in ``[one-hot class, attributes]``, :mod:`flowcond.paper.baselines.cglow`),
   **CAGlow** (class + attribute (+ code) heads attached to the frozen backbone) and
   **Glow + pre-stored** (class-mean shifts and attribute mean differences of the backbone's
   latents, :mod:`flowcond.paper.baselines.prestored`);
4. judge generated images with the evaluators.

Every method is driven through the same function ``latents(class weights (N, K), attributes
(N, A), noise)`` (:mod:`flowcond.paper.generators`), so all of them get the same requested
conditions and the same protocol (:mod:`flowcond.paper.tables`):

* **Table 1** (``samples_per_class`` images per class ``k``, attributes drawn from their dataset
  frequencies): accuracy of the class evaluator against ``k``; FID (evaluator features) against
  real test images. "Glow (prior)" is the backbone's unconditional samples (FID only).
* **Table 2** (the same images): attribute accuracy (attribute evaluator vs requested attributes)
  and the variance across identities of AMP, computed per attribute over the images requested
  with that attribute on.
* **Table 3** (``samples_per_class`` per class; all attributes off, then turned on one by one in
  order, same noise): ``|delta AMP|`` of the attributes not yet edited after 1..A edits
  (``cumulative_interference``, relative to the start; undefined (n/a) once every attribute is
  edited), the per-step variant (``interference`` between consecutive states) and the *edit
  effect* (AMP gain of the edited attribute: a no-op edit would have zero interference too).
* bits/dim on the test set: the backbone's (shared by CAGlow and Glow) and CGlow's conditional one.

Glow (+pre-stored) conditional samples are **prior samples moved by the pre-stored features**:
``z = T eps + shift_k + alpha * sum_a (v_a - 1/2) delta_a``; encoding real test images of class
``k`` instead would score real images on Table 1, not a generator.

Outputs in ``out``: ``results.json`` and ``results.md`` (atomic, :mod:`flowcond.paper.report`), the
model files, and PNG figures (:mod:`flowcond.paper.figures`) ``fig3_*`` (conditions x
identities), ``fig4_*`` (cumulative edits), ``fig5_*`` (interpolation between classes), ``fig6_*``
(attribute sweeps; CAGlow's code sweep when codes are attached).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowcond.distributed import resolve_device
from flowcond.errors import ConfigError
from flowcond.flow.backbone import Backbone
from flowcond.io.atomic import write_text
from flowcond.paper import metrics
from flowcond.paper.config import EvaluateConfig
from flowcond.paper.context import Context, Judges, stage, timed
from flowcond.paper.discovery import class_and_attribute_fields, find_roles, resolve_dataset
from flowcond.paper.evaluator import Evaluator
from flowcond.paper.figures import fig4, make_figures
from flowcond.paper.generators import (
    CAGlowGenerator,
    CGlowGenerator,
    Generator,
    PreStoredGenerator,
    tag,
)
from flowcond.paper.models import attach_caglow, backbone_bits, cost, fit_prestored, train_cglow_baseline
from flowcond.paper.report import jsonable, markdown
from flowcond.paper.seeds import aggregate, total_cost, verdicts
from flowcond.paper.tables import Requested, edit_metrics, edit_states, requested, table_metrics
from flowcond.paper.train_evaluator import train_evaluator
from flowcond.training import torch_threads

__all__ = ["EvaluateConfig", "evaluate"]


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run everything (see the module docstring) once per seed; returns the results (also in
    ``out``): per-seed numbers, their mean and spread, and the claims judged against the spread."""
    with torch_threads(cfg.threads):
        t_run = time.perf_counter()
        ctx = load(cfg)
        attr_eval, attr_path = load_attribute_evaluator(ctx)
        features = fit_prestored(ctx)
        runs = [
            run_seed(ctx, attr_eval, attr_path, features, seed, figures=i == 0)
            for i, seed in enumerate(cfg.seed_list)
        ]
        report = build_report(ctx, attr_path, runs)
        report["wall_seconds"] = time.perf_counter() - t_run
        return write_report(ctx.out, report)


def run_seed(
    ctx: Context, attr_eval: Evaluator, attr_path: str, features: Any, seed: int, figures: bool
) -> dict[str, Any]:
    """Train (or reuse) and judge every method with ``seed``; model files go to ``OUT/seedN``,
    figures (first seed only) to ``OUT``."""
    cfg = ctx.cfg.model_copy(update={"seed": seed})
    sctx = dataclasses.replace(ctx, cfg=cfg, out=ctx.out / f"seed{seed}", timings=dict(ctx.timings))
    sctx.out.mkdir(parents=True, exist_ok=True)
    stage(f"seed {seed}: real-data references", cfg.progress)
    judges = Judges.build(sctx, attr_eval, attr_path)
    heads, attach_summary = attach_caglow(sctx)
    cglow, cglow_summary = train_cglow_baseline(sctx)
    gens: list[Generator] = [
        CAGlowGenerator(heads, cfg.temperature, ctx.roles, ctx.K),
        CGlowGenerator(cglow, cfg.temperature),
        PreStoredGenerator(ctx.backbone, features, cfg.temperature, cfg.alpha),
    ]
    results, files = judge_all(sctx, gens, judges, ctx.out if figures else None)
    results["Glow (prior)"] = glow_prior(sctx, judges)
    return {
        "seed": seed,
        "results": results,
        "reference": judges.reference,
        "cost": cost(sctx, attach_summary, cglow_summary, cglow),
        "timings": sctx.timings,
        "figures": files,
    }


def load(cfg: EvaluateConfig) -> Context:
    """Stage 1: backbone, class evaluator, dataset (with class and attribute fields) and roles."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)  # a GPU asked for and missing: before any loading
    backbone = Backbone.load(cfg.backbone, map_location=device)
    evaluator = Evaluator.load(cfg.evaluator, device)
    name = cfg.dataset or (backbone.metadata.get("dataset") or {}).get("name")
    if not name:
        raise ConfigError("the backbone names no training dataset: pass --dataset")
    name, train, test = resolve_dataset(name, cfg.root)
    if tuple(train.image_shape) != backbone.image_shape:
        raise ConfigError(
            f"dataset {name!r} has images {tuple(train.image_shape)}, the backbone "
            f"expects {backbone.image_shape}"
        )
    cf, af = class_and_attribute_fields(train)
    if evaluator.config.label_kind != "categorical" or evaluator.config.n_outputs != cf.size:
        raise ConfigError(
            f"{cfg.evaluator}: expected a {cf.size}-class evaluator of {cf.name!r}, got "
            f"{evaluator.config.n_outputs} {evaluator.config.label_kind} outputs"
        )
    roles = find_roles(cfg)
    return Context(cfg, out, backbone, evaluator, name, train, test, cf, af, roles)


def load_attribute_evaluator(ctx: Context) -> tuple[Evaluator, str]:
    """Stage 1b: the attribute evaluator (loaded, or trained once with the first seed)."""
    cfg = ctx.cfg
    stage("attribute evaluator", cfg.progress)
    if cfg.attr_evaluator:
        attr_eval, path = Evaluator.load(cfg.attr_evaluator, ctx.backbone.device), cfg.attr_evaluator
    else:
        path = str(ctx.out / "attr_evaluator.safetensors")
        (attr_eval, _), ctx.timings["attribute_evaluator_train_seconds"] = timed(
            lambda: train_evaluator(
                (ctx.train, ctx.test),
                out=path,
                progress=cfg.progress,
                label=ctx.af.name,
                epochs=cfg.attr_evaluator_epochs,
                seed=cfg.seed_list[0],
                device=str(ctx.backbone.device),
            )
        )
    if attr_eval.config.label_kind != "binary" or attr_eval.config.n_outputs != ctx.A:
        raise ConfigError(
            f"the attribute evaluator must judge the {ctx.A} binary attributes of {ctx.af.name!r}"
        )
    return attr_eval, path


def judge_all(
    ctx: Context, gens: list[Generator], judges: Judges, fig_dir: Path | None
) -> tuple[dict[str, Any], list[str]]:
    """Stage 4: Tables 1-3, coverage and (into ``fig_dir``, if given) the figures of every
    generator, on the same requested conditions."""
    cfg = ctx.cfg
    labels = ctx.train.labels
    req = requested(
        ctx.K, cfg.samples_per_class, labels[ctx.cf.name], labels[ctx.af.name], cfg.seed, cfg.prior
    )
    results: dict[str, Any] = {}
    figures: list[str] = []
    with tqdm(total=3 * len(gens), desc="generate + judge", disable=not cfg.progress) as bar:
        for gen in gens:
            results[gen.name], files = judge(ctx, gen, req, judges, bar, fig_dir)
            figures += files
    return results, figures


def judge(
    ctx: Context, gen: Generator, req: Requested, judges: Judges, bar: Any, fig_dir: Path | None
) -> tuple[dict[str, Any], list[str]]:
    """Tables 1-3, coverage and Fig. 3-6 of one generator; its results and figure paths."""
    noise = gen.noise(len(req.ids), torch.Generator().manual_seed(ctx.cfg.seed))
    x = gen.images(req.w, req.attrs, noise)
    res = table_metrics(x, req.ids, req.attrs, judges.classes, judges.attributes, judges.real_feats)
    res["coverage"] = judges.coverage.judge(judges.classes, x, req.ids)
    bar.update(1)
    amps, states = edit_states(gen, req, noise, ctx.A, judges.attributes)
    res.update(edit_metrics(amps))
    bar.update(1)
    figures: list[str] = []
    if fig_dir is not None:
        path = fig_dir / f"fig4_cumulative_edits_{tag(gen)}.png"
        figures = [str(fig4(states, req.per_class, ctx.K, ctx.cf.name, ctx.names, path))]
        figures += make_figures(gen, ctx.K, ctx.names, fig_dir, tag(gen), ctx.cfg.seed)
    bar.update(1)
    return res, figures


def glow_prior(ctx: Context, judges: Judges) -> dict[str, Any]:
    """The backbone's unconditional samples, as many as each method's: FID only."""
    n, T = ctx.K * ctx.cfg.samples_per_class, ctx.cfg.temperature
    g = torch.Generator().manual_seed(ctx.cfg.seed)
    x = torch.cat([ctx.backbone.sample(min(256, n - i), T, g).cpu() for i in range(0, n, 256)])
    return {"fid": metrics.frechet_distance(judges.classes.features(x), judges.real_feats)}


def build_report(ctx: Context, attr_path: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything results.json holds (``wall_seconds`` is added by :func:`evaluate`): the run,
    each seed's numbers (``per_seed``), their mean and spread (``results``, ``reference``,
    ``cost``: ``{"mean", "std", "values"}`` per number) and the claims judged against the spread."""
    cfg, bb = ctx.cfg, ctx.backbone
    results = aggregate([r["results"] for r in runs])
    return {
        "config": cfg.model_dump(),
        "seeds": cfg.seed_list,
        "dataset": ctx.dataset,
        "classes": {"field": ctx.cf.name, "n": ctx.K},
        "attributes": {"field": ctx.af.name, "names": ctx.names},
        "roles": ctx.roles.to_dict(),
        "backbone": {
            "path": cfg.backbone,
            "content_hash": bb.content_hash,
            "config": bb.config.model_dump(),
            "bits_per_dim": backbone_bits(ctx),
        },
        "evaluators": {"class": cfg.evaluator, "attributes": attr_path},
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "reference": aggregate([r["reference"] for r in runs]),
        "cost": aggregate([r["cost"] for r in runs]),
        "total_training_seconds": total_cost(runs),
        "timings": ctx.timings,
        "results": results,
        "claims": verdicts(results),
        "per_seed": [{k: v for k, v in r.items() if k != "figures"} for r in runs],
        "figures": [os.path.relpath(f, ctx.out) for r in runs for f in r["figures"]],
    }


def write_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write results.json and results.md (atomically); returns the JSON-clean report."""
    report = jsonable(report)
    write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "results.md", markdown(report))
    return report
