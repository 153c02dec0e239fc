"""Stages 2-3 of ``flowcond evaluate``: fit or train the three compared models, timing each, and
the cost table (wall time, steps, bits/dim of each model's training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowcond.caglow.attach import attach
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.caglow.latents import LatentCache
from flowcond.paper.baselines import CGlow, CGlowTrainConfig, PreStored
from flowcond.paper.baselines.cglow_train import cglow_bpd_per_image
from flowcond.paper.context import Context, stage, timed
from flowcond.paper.discovery import plugin_options
from flowcond.paper.model_cache import cached_cglow


def fit_prestored(ctx: Context) -> PreStored:
    """Encode train and test sets once (the latent cache CAGlow reuses) and fit Glow's pre-stored
    features on the train latents; writes ``prestored.safetensors``."""
    cfg, bb, P = ctx.cfg, ctx.backbone, ctx.cfg.progress
    stage("encode the dataset (latent cache)", P)
    (cache, _test_cache), ctx.timings["encode_seconds"] = timed(
        lambda: (
            LatentCache.build(bb, ctx.train, cfg.cache_dir, progress=P),
            LatentCache.build(bb, ctx.test, cfg.cache_dir, progress=P),
        )
    )
    stage("Glow + pre-stored features", P)
    z_all, labels_all = cache.load_all()
    features, ctx.timings["prestored_fit_seconds"] = timed(
        lambda: PreStored.fit_dataset(bb, z_all, labels_all, ctx.train.schema, ctx.cf.name, ctx.af.name)
    )
    features.save(ctx.out / "prestored.safetensors")
    return features


def attach_caglow(ctx: Context) -> tuple[Heads, dict[str, Any]]:
    """Attach the class, attribute (and code) heads to the frozen backbone; writes
    ``caglow.heads.safetensors``."""
    cfg, roles = ctx.cfg, ctx.roles
    stage("CAGlow: attach heads to the frozen backbone", cfg.progress)
    acfg = AttachConfig(
        plugins=[roles.classes, roles.attributes] + ([roles.codes] if roles.codes else []),
        plugin_options=plugin_options(roles, ctx.cf.name, ctx.af.name, cfg.codes),
        dataset=ctx.dataset,
        root=cfg.root,
        steps=cfg.attach_steps,
        batch_size=cfg.attach_batch_size,
        seed=cfg.seed,
        cache_dir=cfg.cache_dir,
        checkpoint_every=max(cfg.attach_steps, 1),
    )
    out = ctx.out / "caglow.heads.safetensors"
    device = str(ctx.backbone.device)  # --device
    heads, summary = attach(cfg.backbone, acfg, out, progress=cfg.progress, device=device)
    heads.eval()
    ctx.timings["attach_train_seconds"] = summary["train_seconds"]
    ctx.timings["attach_total_seconds"] = summary["total_seconds"]
    return heads, summary


def train_cglow_baseline(ctx: Context) -> tuple[CGlow, dict[str, Any]]:
    """Train CGlow (the backbone's shape, conditional prior) end to end, or reuse the one trained
    with the same options, seed and data from the model cache (``--model-cache``)."""
    cfg = ctx.cfg
    stage(f"CGlow: train end to end (seed {cfg.seed})", cfg.progress)
    options = CGlowTrainConfig(
        epochs=cfg.cglow_epochs,
        max_steps=cfg.cglow_max_steps,
        batch_size=cfg.cglow_batch_size,
        lr=cfg.cglow_lr,
        seed=cfg.seed,
    )
    folder = cfg.model_cache or Path(cfg.out) / "models"
    cglow, summary, reused = cached_cglow(
        folder,
        ctx.backbone.config,
        ctx.train,
        ctx.test,
        options,
        ctx.cf.name,
        ctx.af.name,
        progress=cfg.progress,
        device=str(ctx.backbone.device),
    )
    if reused:
        stage(f"CGlow: reused the trained model from {folder}", cfg.progress)
    ctx.timings["cglow_train_seconds"] = summary["training"]["seconds"]
    ctx.timings["cglow_reused"] = reused
    return cglow, summary


#: dequantization noise draws averaged in each test image's bits/dim
BPD_DRAWS = 2
_BACKBONE_BITS: dict[tuple[str, int], dict[str, Any]] = {}


def backbone_bits(ctx: Context) -> dict[str, Any]:
    """The backbone's test bits/dim, the standard figure (:meth:`Backbone.bits_per_dim`: uniform
    dequantization, the variational bound, averaged over ``BPD_DRAWS`` noise draws): mean and
    median over test images and how many score worse than uniform. Computed once per backbone."""
    from flowcond.flow.train import bpd_per_image

    key = (ctx.backbone.content_hash, len(ctx.test))
    if key not in _BACKBONE_BITS:
        bpd = bpd_per_image(ctx.backbone, ctx.test, seed=0, draws=BPD_DRAWS)
        _BACKBONE_BITS[key] = bits_summary(bpd, ctx.backbone.config.n_bits)
    return _BACKBONE_BITS[key]


def bits_summary(bpd: torch.Tensor, n_bits: int) -> dict[str, Any]:
    """Mean, median and worse-than-uniform count of per-image bits/dim, with how they were made."""
    from flowcond.flow.train import bpd_stats

    return {**bpd_stats(bpd, n_bits), "dequantization": "uniform", "draws": BPD_DRAWS}


def cglow_bits(model: CGlow, ds: Any, seed: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """CGlow's conditional test bits/dim, the same figure as :func:`backbone_bits` (on the
    model's device)."""
    bpd = cglow_bpd_per_image(model, ds, batch_size, seed, draws=BPD_DRAWS)
    return bits_summary(bpd, model.config.n_bits)


def cost(
    ctx: Context, attach_summary: dict[str, Any], cglow_summary: dict[str, Any], cglow: CGlow
) -> dict[str, Any]:
    """What each model trains, its wall time, steps and test bits/dim (results.json ``cost``)."""
    t, bpd = ctx.timings, backbone_bits(ctx)
    return {
        "CAGlow": {
            "trained": "heads on the frozen backbone",
            "seconds": t["encode_seconds"] + t["attach_train_seconds"],
            "detail": {"encode": t["encode_seconds"], "attach": t["attach_train_seconds"]},
            "bits_per_dim": bpd,
            "steps": attach_summary["steps"],
        },
        "CGlow": {
            "trained": "whole flow, end to end",
            "seconds": t["cglow_train_seconds"],
            "bits_per_dim": cglow_bits(cglow, ctx.test),
            "bits_per_dim_kind": "conditional",
            "steps": cglow_summary["training"]["steps"],
            "reused": t.get("cglow_reused", False),
        },
        "Glow + pre-stored": {
            "trained": "latent mean differences",
            "seconds": t["encode_seconds"] + t["prestored_fit_seconds"],
            "bits_per_dim": bpd,
        },
        "Glow backbone (stage 1, shared)": {
            "trained": "whole flow",
            "seconds": (ctx.backbone.metadata.get("training") or {}).get("seconds"),
            "bits_per_dim": bpd,
        },
    }
