"""``flowcond evaluate``: the paper's Tables 1-3 and Fig. 3-6 for CAGlow, CGlow and Glow (+pre-stored).

One run, one dataset, one backbone shape, one seed:

1. load the frozen backbone and the class evaluator; resolve a dataset with a categorical class
   field *and* a binary attribute field (``mnist5k`` becomes ``mnist5k-morpho``: the same images
   with Morpho-MNIST attributes thick/slanted/wide/tall); load or train an attribute evaluator;
2. encode the dataset once (the latent cache, shared by CAGlow and the pre-stored features);
3. train the three conditional models, timing each: **CGlow** (same ``BackboneConfig``, trained end
   to end with a prior linear in ``[one-hot class, attributes]``, :mod:`flowcond.paper.baselines.cglow`),
   **CAGlow** (``ids`` + ``attributes`` (+ ``codes``) heads attached to the frozen backbone) and
   **Glow + pre-stored** (class-mean shifts and attribute mean differences of the backbone's
   latents, :mod:`flowcond.paper.baselines.prestored`);
4. judge generated images with the evaluators.

Every method is driven through the same function ``latents(class weights (N, K), attributes
(N, A), noise)``, so all of them get the same requested conditions and the same protocol:

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

Outputs in ``out``: ``results.json`` and ``results.md`` (atomic), the model files, and PNG figures
``fig3_*`` (conditions x identities), ``fig4_*`` (cumulative edits), ``fig5_*`` (interpolation
between classes), ``fig6_*`` (attribute sweeps; CAGlow's code sweep when codes are attached).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from flowcond.datasets import ImageDataset, load_dataset
from flowcond.errors import ConfigError
from flowcond.flow.backbone import Backbone
from flowcond.io.atomic import write_text
from flowcond.io.images import save_grid
from flowcond.paper import metrics
from flowcond.paper.baselines.cglow import CGlow, CGlowTrainConfig, train_cglow
from flowcond.paper.baselines.prestored import PreStored
from flowcond.paper.config import EvaluateConfig
from flowcond.paper.evaluator import Evaluator, train_evaluator
from flowcond.training import torch_threads

METHODS = ("CAGlow", "CGlow", "Glow + pre-stored")


# ------------------------------------------------------------------ the three generators
class Generator:
    """A conditional generator seen through ``latents(w, v, noise)`` and ``decode(z)``.

    ``w`` (N, K): class weights (one-hot; soft for interpolation), ``v`` (N, A): attributes in
    [0, 1] (outside for sweeps), ``noise``: a tuple of tensors with N rows.
    """

    name: str

    def noise(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def latents(self, w: torch.Tensor, v: torch.Tensor, noise: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def images(
        self, w: torch.Tensor, v: torch.Tensor, noise: tuple[torch.Tensor, ...], batch_size: int = 256
    ) -> torch.Tensor:
        out = []
        for i in range(0, len(w), batch_size):
            sl = slice(i, i + batch_size)
            out.append(self.decode(self.latents(w[sl], v[sl], tuple(t[sl] for t in noise))))
        return torch.cat(out)


class CAGlowGenerator(Generator):
    name = "CAGlow"

    def __init__(self, heads: Any, temperature: float) -> None:
        self.heads, self.T = heads, temperature
        ids = heads.kinds["ids"]
        with torch.no_grad():
            self.id_table = heads.inputs["ids"](torch.arange(ids.classes))  # (K, dim), linear in one-hot

    def noise(self, n, g):
        eps, eps_res = self.heads.noise(n, self.T, g)
        codes = [self.heads.kinds["codes"].sample_prior(n, g)] if "codes" in self.heads.kinds else []
        return (eps, eps_res, *codes)

    @torch.no_grad()
    def latents(self, w, v, noise):
        parts = []
        for name in self.heads.kinds:
            if name == "ids":
                parts.append(w @ self.id_table)
            elif name == "attributes":
                parts.append(self.heads.inputs[name](v))
            elif name == "codes":
                parts.append(self.heads.inputs[name](noise[2]))
        return self.heads.generate_from_input(torch.cat(parts, 1), noise[0], noise[1])

    def decode(self, z, batch_size=256):
        return self.heads.decode(z, batch_size)


class CGlowGenerator(Generator):
    name = "CGlow"

    def __init__(self, model: CGlow, temperature: float) -> None:
        self.model, self.T = model, temperature

    def noise(self, n, g):
        return (self.model.noise(n, self.T, g),)

    @torch.no_grad()
    def latents(self, w, v, noise):
        return self.model.latents(torch.cat([w, v.float()], 1), noise[0])

    def decode(self, z, batch_size=256):
        return self.model.decode(z, batch_size)


class PreStoredGenerator(Generator):
    name = "Glow + pre-stored"

    def __init__(self, backbone: Backbone, features: PreStored, temperature: float, alpha: float) -> None:
        self.backbone, self.features, self.T, self.alpha = backbone, features, temperature, alpha

    def noise(self, n, g):
        return (torch.randn(n, self.backbone.latent_dim, generator=g) * self.T,)

    @torch.no_grad()
    def latents(self, w, v, noise):
        f = self.features
        return noise[0] + w @ f.class_shifts + self.alpha * (v.float() - 0.5) @ f.deltas

    @torch.no_grad()
    def decode(self, z, batch_size=256):
        return torch.cat([self.backbone.decode(z[i : i + batch_size]) for i in range(0, len(z), batch_size)])


# ------------------------------------------------------------------------ metrics
def table_metrics(
    images: torch.Tensor,
    ids: torch.Tensor,
    attrs: torch.Tensor,
    evaluator: Evaluator,
    attr_evaluator: Evaluator,
    real_feats: torch.Tensor,
) -> dict[str, Any]:
    """Tables 1 and 2 for one set of generated images with requested ``ids`` and ``attrs``."""
    out: dict[str, Any] = {
        "accuracy": metrics.accuracy(evaluator.predict(images), ids),
        "fid": metrics.frechet_distance(evaluator.features(images), real_feats),
    }
    out.update(
        attribute_metrics(attr_evaluator.predict_proba(images), ids, attrs, attr_evaluator.class_names)
    )
    return out


def attribute_metrics(
    probs: torch.Tensor, ids: torch.Tensor, attrs: torch.Tensor, names: list[str]
) -> dict[str, Any]:
    """Attribute accuracy per attribute, and AMP variance across identities per attribute (over
    the images requested with that attribute on)."""
    acc = metrics.attribute_accuracy(probs, attrs)
    var = []
    for a in range(probs.shape[1]):
        on = attrs[:, a] > 0.5
        if on.sum() < 2:
            var.append(float("nan"))
            continue
        var.append(float(metrics.amp_variance(probs[on, a], ids[on])[0]))
    return {
        "attribute_accuracy": float(np.mean(acc)),
        "attribute_accuracy_per": dict(zip(names, acc.tolist(), strict=True)),
        "amp_variance": float(np.nanmean(var)),
        "amp_variance_per": dict(zip(names, var, strict=True)),
    }


def edit_metrics(amps: list[np.ndarray]) -> dict[str, Any]:
    """Table 3 from per-identity AMPs (K, A) of states 0..A (attribute t turned on in state t+1)."""
    edits = list(range(len(amps) - 1))
    cumulative = metrics.cumulative_interference(amps, edits)
    per_step = [metrics.interference(amps[t - 1], amps[t], edits[t - 1]) for t in range(1, len(amps))]
    effect = [
        float(np.mean(amps[t][:, edits[t - 1]] - amps[t - 1][:, edits[t - 1]])) for t in range(1, len(amps))
    ]
    return {"interference": cumulative, "interference_per_step": per_step, "edit_effect": effect}


# ------------------------------------------------------------------------ helpers
def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray | torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float | np.floating):
        x = float(x)
        return None if not math.isfinite(x) else round(x, 6)
    if isinstance(x, np.integer):
        return int(x)
    return x


def resolve_dataset(name: str, root: str | None = None) -> tuple[str, ImageDataset, ImageDataset]:
    """The dataset with a categorical and a binary field: ``name`` itself or ``name-morpho``."""
    from flowcond.registry import datasets

    for candidate in (name, f"{name}-morpho"):
        if candidate not in datasets():
            continue
        train = load_dataset(candidate, "train", root=root)
        kinds = {f.kind for f in train.schema.values()}
        if {"categorical", "binary"} <= kinds:
            return candidate, train, load_dataset(candidate, "test", root=root)
    raise ConfigError(
        f"evaluate needs a dataset with a categorical (class) and a binary (attributes) "
        f"label field; neither {name!r} nor {name + '-morpho'!r} has both"
    )


def _fields(ds: ImageDataset) -> tuple[Any, Any]:
    cf = next(f for f in ds.schema.values() if f.kind == "categorical")
    af = next(f for f in ds.schema.values() if f.kind == "binary")
    return cf, af


def _images(ds: ImageDataset, n: int | None = None) -> torch.Tensor:
    k = len(ds) if n is None else min(n, len(ds))
    if isinstance(ds.images, torch.Tensor):
        return ds.images[:k].float()
    return torch.stack([ds[i][0] for i in range(k)]).float()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------------ figures
@torch.no_grad()
def make_figures(
    gen: Generator, K: int, names: list[str], out: Path, tag: str, seed: int, heads: Any = None
) -> list[str]:
    """Fig. 3 (conditions x identities), Fig. 5 (interpolation 1 -> 7), Fig. 6 (sweeps)."""
    files = []
    A = len(names)
    # Fig. 3: rows = attribute conditions, columns = identities; one noise per column
    conds = [torch.zeros(A)] + [torch.eye(A)[a] for a in range(A)] + [torch.ones(A)]
    labels = ["none"] + names + ["all"]
    g = torch.Generator().manual_seed(seed + 3)
    noise = gen.noise(K, g)
    R = len(conds)
    w = torch.eye(K).repeat(R, 1)
    v = torch.stack(conds).repeat_interleave(K, 0)
    x = gen.images(w, v, tuple(t.repeat(R, *([1] * (t.dim() - 1))) for t in noise))
    files.append(
        str(
            save_grid(
                x,
                out / f"fig3_conditions_x_identities_{tag}.png",
                nrow=K,
                row_labels=labels,
                col_labels=[str(k) for k in range(K)],
            )
        )
    )
    # Fig. 5: class interpolation a -> b, 4 rows (noise), 8 steps
    a, b, steps, rows = 1 % K, 7 % K, 8, 4
    g = torch.Generator().manual_seed(seed + 5)
    noise = gen.noise(rows, g)
    t = torch.linspace(0, 1, steps)
    wa, wb = torch.eye(K)[a], torch.eye(K)[b]
    w = ((1 - t)[:, None] * wa + t[:, None] * wb).repeat(rows, 1)
    v = torch.zeros(rows * steps, A)
    x = gen.images(w, v, tuple(n.repeat_interleave(steps, 0) for n in noise))
    files.append(
        str(
            save_grid(
                x,
                out / f"fig5_interpolation_{tag}.png",
                nrow=steps,
                col_labels=[f"{s:.2f}" for s in t.tolist()],
            )
        )
    )
    # Fig. 6: sweep attribute 0 from -0.5 to 1.5 (beyond the trained range at both ends)
    g = torch.Generator().manual_seed(seed + 6)
    noise = gen.noise(rows, g)
    vals = torch.linspace(-0.5, 1.5, 9)
    w = torch.eye(K)[torch.arange(rows) % K].repeat_interleave(len(vals), 0)
    v = torch.zeros(rows * len(vals), A)
    v[:, 0] = vals.repeat(rows)
    x = gen.images(w, v, tuple(n.repeat_interleave(len(vals), 0) for n in noise))
    files.append(
        str(
            save_grid(
                x,
                out / f"fig6_sweep_{names[0]}_{tag}.png",
                nrow=len(vals),
                col_labels=[f"{s:g}" for s in vals.tolist()],
            )
        )
    )
    if heads is not None and "codes" in heads.kinds:
        from flowcond.caglow.generate import explore

        x, values = explore(heads, 0, steps=9, rows=4, seed=seed)
        files.append(
            str(save_grid(x, out / f"fig6_code0_{tag}.png", nrow=9, col_labels=[f"{s:.2f}" for s in values]))
        )
    return files


# ------------------------------------------------------------------------ the run
def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Run everything (see the module docstring); returns the results (also in ``out``)."""
    with torch_threads(cfg.threads):
        return _evaluate(cfg)


def _stage(msg: str, progress: bool) -> None:
    if progress:
        tqdm.write(f"== {msg}")


def _evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    from flowcond.caglow.attach import AttachConfig, attach
    from flowcond.caglow.latents import LatentCache

    t_run = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    P = cfg.progress
    backbone = Backbone.load(cfg.backbone)
    evaluator = Evaluator.load(cfg.evaluator)
    dataset_name = cfg.dataset or (backbone.metadata.get("dataset") or {}).get("name")
    if not dataset_name:
        raise ConfigError("the backbone names no training dataset: pass --dataset")
    dataset_name, train, test = resolve_dataset(dataset_name, cfg.root)
    if tuple(train.image_shape) != backbone.image_shape:
        raise ConfigError(
            f"dataset {dataset_name!r} has images {tuple(train.image_shape)}, the backbone "
            f"expects {backbone.image_shape}"
        )
    cf, af = _fields(train)
    K, A, names = cf.size, af.size, list(af.names) or [str(i) for i in range(af.size)]
    if evaluator.config.label_kind != "categorical" or evaluator.config.n_outputs != K:
        raise ConfigError(
            f"{cfg.evaluator}: expected a {K}-class evaluator of {cf.name!r}, got "
            f"{evaluator.config.n_outputs} {evaluator.config.label_kind} outputs"
        )
    timings: dict[str, Any] = {}

    # ---- attribute evaluator
    _stage("attribute evaluator", P)
    if cfg.attr_evaluator:
        attr_eval = Evaluator.load(cfg.attr_evaluator)
        attr_eval_path = cfg.attr_evaluator
    else:
        attr_eval_path = str(out / "attr_evaluator.safetensors")
        (attr_eval, _), secs = _timed(
            lambda: train_evaluator(
                (train, test),
                out=attr_eval_path,
                progress=P,
                label=af.name,
                epochs=cfg.attr_evaluator_epochs,
                seed=cfg.seed,
            )
        )
        timings["attribute_evaluator_train_seconds"] = secs
    if attr_eval.config.label_kind != "binary" or attr_eval.config.n_outputs != A:
        raise ConfigError(f"the attribute evaluator must judge the {A} binary attributes of {af.name!r}")

    # ---- real data references
    x_test = _images(test, cfg.fid_real)
    real_feats = evaluator.features(x_test)
    x_train_ref = _images(train, cfg.fid_real)
    reference = {
        "class_accuracy_real_test": metrics.accuracy(evaluator.predict(_images(test)), test.labels[cf.name]),
        "fid_real_train_vs_test": metrics.frechet_distance(evaluator.features(x_train_ref), real_feats),
        **{
            f"{k}_real_test": v
            for k, v in attribute_metrics(
                attr_eval.predict_proba(_images(test)),
                test.labels[cf.name],
                test.labels[af.name].float(),
                names,
            ).items()
        },
    }

    # ---- shared latent cache (real latents F(x)) and pre-stored features
    _stage("encode the dataset (latent cache)", P)
    (cache, test_cache), secs = _timed(
        lambda: (
            LatentCache.build(backbone, train, cfg.cache_dir, progress=P),
            LatentCache.build(backbone, test, cfg.cache_dir, progress=P),
        )
    )
    timings["encode_seconds"] = secs
    _stage("Glow + pre-stored features", P)
    z_all, labels_all = cache.load_all()
    features, secs = _timed(
        lambda: PreStored.fit_dataset(backbone, z_all, labels_all, train.schema, cf.name, af.name)
    )
    timings["prestored_fit_seconds"] = secs
    features.save(out / "prestored.safetensors")

    # ---- CAGlow: attach heads
    _stage("CAGlow: attach heads to the frozen backbone", P)
    plugins = ["ids", "attributes"] + (["codes"] if cfg.codes else [])
    acfg = AttachConfig(
        plugins=plugins,
        plugin_options={
            "ids": {"field": cf.name},
            "attributes": {"field": af.name},
            **({"codes": {"n": cfg.codes}} if cfg.codes else {}),
        },
        dataset=dataset_name,
        root=cfg.root,
        steps=cfg.attach_steps,
        batch_size=cfg.attach_batch_size,
        seed=cfg.seed,
        cache_dir=cfg.cache_dir,
        checkpoint_every=max(cfg.attach_steps, 1),
    )
    heads_path = out / "caglow.heads.safetensors"
    heads, attach_summary = attach(cfg.backbone, acfg, heads_path, progress=P)
    heads.eval()
    timings["attach_train_seconds"] = attach_summary["train_seconds"]
    timings["attach_total_seconds"] = attach_summary["total_seconds"]

    # ---- CGlow: end to end
    _stage("CGlow: train end to end", P)
    copts = CGlowTrainConfig(
        epochs=cfg.cglow_epochs,
        max_steps=cfg.cglow_max_steps,
        batch_size=cfg.cglow_batch_size,
        lr=cfg.cglow_lr,
        seed=cfg.seed,
    )
    cglow, cglow_summary = train_cglow(
        backbone.config,
        train,
        test,
        copts,
        out=out / "cglow.safetensors",
        progress=P,
        class_field=cf.name,
        attribute_field=af.name,
    )
    timings["cglow_train_seconds"] = cglow_summary["training"]["seconds"]

    gens: list[Generator] = [
        CAGlowGenerator(heads, cfg.temperature),
        CGlowGenerator(cglow, cfg.temperature),
        PreStoredGenerator(backbone, features, cfg.temperature, cfg.alpha),
    ]

    # ---- conditions shared by every method
    n = cfg.samples_per_class
    g = torch.Generator().manual_seed(cfg.seed + 1000)
    ids = torch.arange(K).repeat_interleave(n)
    w = torch.eye(K)[ids]
    freq = train.labels[af.name].float().mean(0)
    attrs = torch.bernoulli(freq.expand(len(ids), -1), generator=g)

    results: dict[str, Any] = {}
    figures: list[str] = []
    bar = tqdm(total=3 * len(gens), desc="generate + judge", disable=not P)
    for gen in gens:
        tag = gen.name.lower().replace(" + ", "_").replace(" ", "_").replace("-", "")
        noise = gen.noise(len(ids), torch.Generator().manual_seed(cfg.seed))
        x = gen.images(w, attrs, noise)
        res = table_metrics(x, ids, attrs, evaluator, attr_eval, real_feats)
        bar.update(1)
        # Table 3: all off, then attributes on one by one (same noise)
        v = torch.zeros(len(ids), A)
        amps, states = [], []
        for t in range(A + 1):
            if t:
                v = v.clone()
                v[:, t - 1] = 1.0
            xs = gen.images(w, v, noise)
            states.append(xs)
            amps.append(metrics.attribute_mean_probability(attr_eval.predict_proba(xs), ids).amp)
        res.update(edit_metrics(amps))
        bar.update(1)
        # Fig. 4 from the Table 3 states: one sample of each of up to 8 identities
        rows = [k * n for k in range(min(K, 8))]
        grid = torch.stack([s[rows] for s in states], 1).reshape(-1, *x.shape[1:])
        figures.append(
            str(
                save_grid(
                    grid,
                    out / f"fig4_cumulative_edits_{tag}.png",
                    nrow=A + 1,
                    row_labels=[f"{cf.name}={k}" for k in range(len(rows))],
                    col_labels=["start"] + [f"+{a}" for a in names],
                )
            )
        )
        figures += make_figures(gen, K, names, out, tag, cfg.seed, heads if gen.name == "CAGlow" else None)
        bar.update(1)
        results[gen.name] = res
    bar.close()
    # Glow (prior): unconditional samples, FID only
    gp = torch.Generator().manual_seed(cfg.seed)
    xp = torch.cat(
        [backbone.sample(min(256, len(ids) - i), cfg.temperature, gp) for i in range(0, len(ids), 256)]
    )
    results["Glow (prior)"] = {"fid": metrics.frechet_distance(evaluator.features(xp), real_feats)}

    bb_train = (backbone.metadata.get("training") or {}).get("seconds")
    bpd_backbone = backbone.metadata.get("test_bits_per_dim")
    if bpd_backbone is None:
        from flowcond.flow.train import evaluate_bpd

        bpd_backbone = evaluate_bpd(backbone, test, seed=cfg.seed)
    cost = {
        "CAGlow": {
            "trained": "heads on the frozen backbone",
            "seconds": timings["encode_seconds"] + timings["attach_train_seconds"],
            "detail": {"encode": timings["encode_seconds"], "attach": timings["attach_train_seconds"]},
            "bits_per_dim": bpd_backbone,
            "steps": attach_summary["steps"],
        },
        "CGlow": {
            "trained": "whole flow, end to end",
            "seconds": timings["cglow_train_seconds"],
            "bits_per_dim": cglow_summary["test_bits_per_dim"],
            "bits_per_dim_kind": "conditional",
            "steps": cglow_summary["training"]["steps"],
        },
        "Glow + pre-stored": {
            "trained": "latent mean differences",
            "seconds": timings["encode_seconds"] + timings["prestored_fit_seconds"],
            "bits_per_dim": bpd_backbone,
        },
        "Glow backbone (stage 1, shared)": {
            "trained": "whole flow",
            "seconds": bb_train,
            "bits_per_dim": bpd_backbone,
        },
    }
    report = {
        "config": cfg.model_dump(),
        "dataset": dataset_name,
        "classes": {"field": cf.name, "n": K},
        "attributes": {"field": af.name, "names": names},
        "backbone": {
            "path": cfg.backbone,
            "content_hash": backbone.content_hash,
            "config": backbone.config.model_dump(),
        },
        "evaluators": {
            "class": cfg.evaluator,
            "attributes": attr_eval_path,
            "attribute_test_accuracy": attr_eval.test_accuracy,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
        "reference": reference,
        "cost": cost,
        "timings": timings,
        "results": results,
        "claims": claims(results),
        "figures": [os.path.relpath(f, out) for f in figures],
        "wall_seconds": time.perf_counter() - t_run,
    }
    report = _jsonable(report)
    write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "results.md", markdown(report))
    return report


# ------------------------------------------------------------------------ verdicts and tables
FID_TOLERANCE = 1.25


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's four claims, each confirmed or refuted by this run's numbers."""
    ca, cg, ps = (results[m] for m in METHODS)
    glow_fid = results.get("Glow (prior)", {}).get("fid")
    out = [
        {
            "claim": "Table 1: CAGlow accuracy > CGlow accuracy",
            "confirmed": ca["accuracy"] > cg["accuracy"],
            "evidence": f"CAGlow {ca['accuracy']:.3f} vs CGlow {cg['accuracy']:.3f}",
        },
    ]
    if glow_fid is not None:
        out.append(
            {
                "claim": f"Table 1: CAGlow FID close to Glow's (at most {FID_TOLERANCE}x Glow prior's)",
                "confirmed": ca["fid"] <= FID_TOLERANCE * glow_fid,
                "evidence": f"CAGlow {ca['fid']:.2f} vs Glow (prior) {glow_fid:.2f}",
            }
        )
    out.append(
        {
            "claim": "Table 2: CAGlow has the lowest AMP variance across identities",
            "confirmed": ca["amp_variance"] < min(cg["amp_variance"], ps["amp_variance"]),
            "evidence": f"CAGlow {ca['amp_variance']:.4f}, CGlow {cg['amp_variance']:.4f}, "
            f"Glow + pre-stored {ps['amp_variance']:.4f}",
        }
    )
    steps = [t for t, x in enumerate(ca["interference"]) if x is not None and math.isfinite(x)]
    lower = all(ca["interference"][t] < min(cg["interference"][t], ps["interference"][t]) for t in steps)
    out.append(
        {
            "claim": "Table 3: CAGlow has lower interference than both baselines at every step",
            "confirmed": bool(steps) and lower,
            "evidence": "; ".join(
                f"after {t + 1}: CAGlow {ca['interference'][t]:.3f}, CGlow "
                f"{cg['interference'][t]:.3f}, pre-stored {ps['interference'][t]:.3f}"
                for t in steps
            )
            + f" (edit effects CAGlow {_fmt_list(ca['edit_effect'])}, CGlow "
            f"{_fmt_list(cg['edit_effect'])}, pre-stored {_fmt_list(ps['edit_effect'])})"
            + _weak_edits(results),
        }
    )
    return out


#: mean AMP gain of the edited attribute below which an edit counts as (nearly) a no-op
WEAK_EDIT = 0.05


def _weak_edits(results: dict[str, Any]) -> str:
    """A caveat naming methods whose edits barely move the edited attribute (low interference is
    then vacuous: an edit that changes nothing interferes with nothing)."""
    weak = [
        f"{m} ({np.mean(results[m]['edit_effect']):.3f})"
        for m in METHODS
        if np.mean(results[m]["edit_effect"]) < WEAK_EDIT
    ]
    if not weak:
        return ""
    return f". Caveat: mean edit effect below {WEAK_EDIT} for " + ", ".join(weak) + " (weak edits)"


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _fmt_list(xs: list, digits: int = 2) -> str:
    return "[" + ", ".join(_fmt(x, digits) for x in xs) + "]"


def markdown(r: dict[str, Any]) -> str:
    """The results laid out like the paper's Tables 1-3, plus cost and verdicts."""
    res, names = r["results"], r["attributes"]["names"]
    bb = r["backbone"]["config"]
    L = [
        f"# flowcond evaluate: {r['dataset']}",
        "",
        f"Backbone `{r['backbone']['path']}` ({bb['levels']} x {bb['steps']}, hidden {bb['hidden']}, hash "
        f"{r['backbone']['content_hash'][:12]}), seed {r['config']['seed']}, temperature "
        f"{r['config']['temperature']}, {r['config']['samples_per_class']} samples per class, "
        f"{r['machine']['torch_threads']} torch thread(s) on {r['machine']['cpus']} CPUs; "
        f"whole run {r['wall_seconds']:.0f} s.",
        "",
        "## Cost: wall time of each model's training",
        "",
        "| model | what is trained | seconds | steps | test bits/dim |",
        "|---|---|---:|---:|---:|",
    ]
    for m, c in r["cost"].items():
        bpd = _fmt(c.get("bits_per_dim"), 4) + (" (conditional)" if c.get("bits_per_dim_kind") else "")
        L.append(f"| {m} | {c['trained']} | {_fmt(c.get('seconds'), 1)} | {c.get('steps', '')} | {bpd} |")
    L += [
        "",
        "CAGlow's seconds are encoding the dataset once plus attaching; the encoding is shared "
        "with Glow + pre-stored.",
        "",
        "## Table 1: class-conditional generation",
        "",
        "| method | accuracy | FID (evaluator features) |",
        "|---|---:|---:|",
    ]
    for m in ("Glow (prior)", *METHODS):
        L.append(f"| {m} | {_fmt(res[m].get('accuracy'))} | {_fmt(res[m].get('fid'), 2)} |")
    ref = r["reference"]
    L.append(
        f"| real test images | {_fmt(ref['class_accuracy_real_test'])} | "
        f"{_fmt(ref['fid_real_train_vs_test'], 2)} (train vs test) |"
    )
    L += [
        "",
        "## Table 2: attribute accuracy and variance of AMP across identities",
        "",
        "| method | attribute accuracy | "
        + " | ".join(names)
        + " | AMP variance | "
        + " | ".join(f"var {a}" for a in names)
        + " |",
        "|---|" + "---:|" * (2 * len(names) + 2),
    ]
    rows = [(m, res[m]) for m in METHODS] + [
        (
            "real test images",
            {
                "attribute_accuracy": ref["attribute_accuracy_real_test"],
                "attribute_accuracy_per": ref["attribute_accuracy_per_real_test"],
                "amp_variance": ref["amp_variance_real_test"],
                "amp_variance_per": ref["amp_variance_per_real_test"],
            },
        )
    ]
    for m, x in rows:
        L.append(
            f"| {m} | {_fmt(x['attribute_accuracy'])} | "
            + " | ".join(_fmt(x["attribute_accuracy_per"][a]) for a in names)
            + f" | {_fmt(x['amp_variance'], 4)} | "
            + " | ".join(_fmt(x["amp_variance_per"][a], 4) for a in names)
            + " |"
        )
    A = len(names)
    L += [
        "",
        "## Table 3: interference of cumulative edits",
        "",
        f"Start: all attributes off; edit t turns on {', then '.join(names)}. |delta AMP| of the "
        "attributes not yet edited, relative to the start (n/a once all are edited); per step: "
        "between consecutive states, over the attributes other than the one just edited; edit "
        "effect: AMP gain of the edited attribute (higher means the edit works).",
        "",
        "| method | "
        + " | ".join(f"after {t}" for t in range(1, A + 1))
        + " | "
        + " | ".join(f"step {t}" for t in range(1, A + 1))
        + " | "
        + " | ".join(f"effect +{a}" for a in names)
        + " |",
        "|---|" + "---:|" * (3 * A),
    ]
    for m in METHODS:
        x = res[m]
        L.append(
            f"| {m} | "
            + " | ".join(_fmt(v) for v in x["interference"])
            + " | "
            + " | ".join(_fmt(v) for v in x["interference_per_step"])
            + " | "
            + " | ".join(_fmt(v) for v in x["edit_effect"])
            + " |"
        )
    L += ["", "## The paper's claims", ""]
    for c in r["claims"]:
        L.append(f"- **{'confirmed' if c['confirmed'] else 'refuted'}**: {c['claim']}. {c['evidence']}")
    L += ["", "## Figures", ""] + [f"- [{f}]({f})" for f in r["figures"]]
    L += [
        "",
        "Glow + pre-stored conditional samples are prior samples moved by the pre-stored "
        "features: z = T eps + shift_class + alpha * sum_a (v_a - 1/2) delta_a (alpha = "
        f"{r['config']['alpha']}). FID uses the evaluator's features, not Inception: compare it only "
        "within runs using the same evaluator.",
        "",
    ]
    return "\n".join(L)
