"""Stages 2-3 of ``flowcond evaluate``: fit or train the three compared models, timing each, and
the cost table (wall time, steps, bits/dim of each model's training)."""

from __future__ import annotations

from typing import Any

from flowcond.caglow.attach import attach
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.caglow.latents import LatentCache
from flowcond.paper.baselines import CGlow, CGlowTrainConfig, PreStored, train_cglow
from flowcond.paper.context import Context, stage, timed
from flowcond.paper.discovery import plugin_options


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
    heads, summary = attach(cfg.backbone, acfg, ctx.out / "caglow.heads.safetensors", progress=cfg.progress)
    heads.eval()
    ctx.timings["attach_train_seconds"] = summary["train_seconds"]
    ctx.timings["attach_total_seconds"] = summary["total_seconds"]
    return heads, summary


def train_cglow_baseline(ctx: Context) -> tuple[CGlow, dict[str, Any]]:
    """Train CGlow (the backbone's shape, conditional prior) end to end; writes ``cglow.safetensors``."""
    cfg = ctx.cfg
    stage("CGlow: train end to end", cfg.progress)
    options = CGlowTrainConfig(
        epochs=cfg.cglow_epochs,
        max_steps=cfg.cglow_max_steps,
        batch_size=cfg.cglow_batch_size,
        lr=cfg.cglow_lr,
        seed=cfg.seed,
    )
    cglow, summary = train_cglow(
        ctx.backbone.config,
        ctx.train,
        ctx.test,
        options,
        out=ctx.out / "cglow.safetensors",
        progress=cfg.progress,
        class_field=ctx.cf.name,
        attribute_field=ctx.af.name,
    )
    ctx.timings["cglow_train_seconds"] = summary["training"]["seconds"]
    return cglow, summary


def backbone_bits_per_dim(ctx: Context) -> float:
    """The backbone's test bits/dim: stored in its file, else computed on the test set."""
    bpd = ctx.backbone.metadata.get("test_bits_per_dim")
    if bpd is None:
        from flowcond.flow.train import mean_bits_per_dim

        bpd = mean_bits_per_dim(ctx.backbone, ctx.test, seed=ctx.cfg.seed)
    return bpd


def cost(ctx: Context, attach_summary: dict[str, Any], cglow_summary: dict[str, Any]) -> dict[str, Any]:
    """What each model trains, its wall time, steps and test bits/dim (results.json ``cost``)."""
    t, bpd = ctx.timings, backbone_bits_per_dim(ctx)
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
            "bits_per_dim": cglow_summary["test_bits_per_dim"],
            "bits_per_dim_kind": "conditional",
            "steps": cglow_summary["training"]["steps"],
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
