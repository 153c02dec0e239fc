"""Training the CGlow baseline end to end (the ``train-backbone`` recipe on a conditional prior).

Reads top to bottom: build the model for the dataset's label fields, initialize ActNorm on a
random batch (or resume), then epochs of Adamax steps on ``bits/dim + weight_y * classification /
ln 2`` with warmup and gradient clipping, non-finite batches skipped and counted; an optional
callback every ``callback_every`` steps (accuracy-vs-time curves); test bits/dim at the end.

With ``checkpoint=True`` an epoch checkpoint ``OUT.ckpt.safetensors`` is written, and ``resume``
continues from it exactly; by default nothing but ``out`` is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from flowcond import distributed
from flowcond.datasets import ImageDataset
from flowcond.errors import ConfigError
from flowcond.flow.config import BackboneConfig
from flowcond.io.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from flowcond.paper.baselines.cglow import CGlow, CGlowConfig
from flowcond.training import (
    SkipBudget,
    Stopwatch,
    check_labels,
    checkpoint_path,
    dataset_binding,
    optimizer_step,
    progress_bar,
    refuse_changes,
    refuse_shorter,
)

CHECKPOINT_KIND = "cglow-checkpoint"


class CGlowTrainConfig(BaseModel):
    """Options of :func:`train_cglow` (same optimizer recipe as ``train-backbone``)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(200, ge=0)
    clip: float = Field(50.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    weight_y: float = Field(0.01, ge=0)
    seed: int = 0


def _labels_at(ds: ImageDataset, idx: Any) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in ds.labels.items()}


@torch.no_grad()
def cglow_bpd_per_image(
    model: CGlow, ds: ImageDataset, batch_size: int = 256, seed: int = 0, draws: int = 1
) -> torch.Tensor:
    """Conditional bits/dim of every image of ``ds`` (float64, on the CPU): uniform dequantization,
    the mean over ``draws`` noise draws from a fixed generator, computed on the model's device."""
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(ds), batch_size):
        part = slice(i, min(i + batch_size, len(ds)))
        x = ds.images_at(part).to(dev)
        labels = {k: v.to(dev) for k, v in _labels_at(ds, part).items()}
        bpd = sum(
            model.bits_per_dim(x, labels, torch.rand(x.shape, generator=g).to(dev)) for _ in range(draws)
        )
        out.append(bpd.double().cpu() / draws)
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def cglow_test_bits_per_dim(model: CGlow, ds: ImageDataset, batch_size: int = 256, seed: int = 0) -> float:
    """Mean conditional test bits/dim (uniform dequantization from a fixed generator)."""
    return float(cglow_bpd_per_image(model, ds, batch_size, seed).sum()) / max(len(ds), 1)


def train_cglow(
    config: BackboneConfig,
    train: ImageDataset,
    test: ImageDataset | None = None,
    options: CGlowTrainConfig | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[CGlow, dict[str, Any]], None] | None = None,
    callback_every: int | None = None,
    class_field: str | None = None,
    attribute_field: str | None = None,
    checkpoint: bool = False,
    resume: bool = False,
    device: str = "cpu",
) -> tuple[CGlow, dict[str, Any]]:
    """Train a CGlow end to end on ``train``; returns the frozen model and a summary.

    ``callback(model, info)`` is called every ``callback_every`` steps and at the end (the model in
    eval mode, no gradients; its time is not counted in ``train_seconds``) — for accuracy-vs-time
    curves. ``checkpoint``/``resume``: epoch checkpoints beside ``out``. ``device``: where it
    trains (:func:`flowcond.distributed.resolve_device`).

    Under torchrun every process calls this: each takes every N-th image of each global batch of
    ``batch_size`` (the same batches and noise as one process), DDP averages the gradients of its
    share of the global loss, ActNorm is initialized from the same batch and broadcast from rank 0,
    and rank 0 alone writes ``out`` and the checkpoints (as ``train-backbone``).
    """
    world = distributed.init(device) if distributed.launched() else None
    dev = world.device if world is not None else distributed.resolve_device(device)
    opts = options or CGlowTrainConfig()
    if tuple(train.image_shape) != config.image_shape:
        raise ConfigError(
            f"dataset images {tuple(train.image_shape)} do not fit the backbone config {config.image_shape}"
        )
    if (checkpoint or resume) and out is None:
        raise ConfigError("CGlow checkpoints are written beside out: give out")
    check_labels(train)
    data = dataset_binding(train)
    cg = CGlowConfig.from_dataset(train, class_field, attribute_field, weight_y=opts.weight_y)
    torch.manual_seed(opts.seed)
    model = CGlow(config, cg).to(dev)
    g = torch.Generator().manual_seed(opts.seed)
    unused = {id(p) for p in model.backbone.flow.q0.parameters()}
    params = [p for p in model.parameters() if id(p) not in unused]
    opt = torch.optim.Adamax(params, lr=opts.lr, weight_decay=1e-5)
    parts: dict[str, Any] = {
        "modules": {"model": model},
        "optimizers": {"optim": opt},
        "generators": {"rng": g},
    }
    ckpt = checkpoint_path(out) if (checkpoint or resume) and out is not None else None
    state: dict[str, Any] = {"epoch": 0, "step": 0, "skipped": 0, "history": [], "train_seconds": 0.0}
    if resume and ckpt is not None and ckpt.exists():
        state = _resume(ckpt, {"config": config, "cglow": cg, "options": opts}, data, parts, tuple(state))
    else:
        first = torch.randperm(len(train), generator=g)[: max(opts.batch_size, 256)]
        model.backbone.initialize(train.images_at(first).to(dev))
    distributed.broadcast_module(model)
    step_losses = _step_losses(model, world, unused)

    total = opts.epochs * math.ceil(len(train) / opts.batch_size)
    if opts.max_steps is not None:
        total = min(total, opts.max_steps)
    budget = SkipBudget(
        max(10, total // 2),
        lambda n: f"CGlow training diverged: {n} non-finite batches",
        skipped=state["skipped"],
    )
    bar = progress_bar(total, "cglow", progress and distributed.is_main(), initial=state["step"])
    clock = Stopwatch(state["train_seconds"])
    clock.start()
    model.train()
    for epoch in range(state["epoch"], opts.epochs):
        if state["step"] >= total:
            break
        order = torch.randperm(len(train), generator=g)
        for i in range(0, len(order), opts.batch_size):
            if state["step"] >= total:
                break
            batch = order[i : i + opts.batch_size]
            noise = torch.rand((len(batch), *train.image_shape), generator=g)  # the global batch's
            mine = slice(None) if world is None else world.shard(len(batch))  # this rank's share
            idx, noise = batch[mine], noise[mine].to(dev)
            x, labels = (
                train.images_at(idx).to(dev),
                {k: v.to(dev) for k, v in _labels_at(train, idx).items()},
            )
            for group in opt.param_groups:
                group["lr"] = opts.lr * min(1.0, (state["step"] + 1) / max(opts.warmup, 1))
            ls = step_losses(x, labels, noise)
            loss = ls["bpd"] + opts.weight_y * ls["cls"] / math.log(2.0)
            if world is not None:  # this rank's share of the global mean, which is the value
                loss = distributed.global_mean(loss * len(x), len(x), world.size)
            if not optimizer_step(loss, opt, params, opts.clip):
                budget.skip()
                continue
            state["step"] += 1
            bar.update(1)
            bar.set_postfix(bpd=f"{ls['bpd'].item():.3f}", cls=f"{ls['cls'].item():.3f}")
            step = state["step"]
            if callback is not None and callback_every and step % callback_every == 0 and step < total:
                with clock.paused(), torch.no_grad():
                    model.eval()
                    callback(model, {"step": step, "train_seconds": clock.seconds})
                    model.train()
        state["history"].append({"epoch": epoch + 1, "step": state["step"]})
        state["epoch"], state["skipped"] = epoch + 1, budget.skipped
        if ckpt is not None and distributed.is_main():
            with clock.paused():
                state["train_seconds"] = clock.seconds
                extra = {
                    "config": config.model_dump(),
                    "cglow": cg.model_dump(),
                    "options": opts.model_dump(),
                    "data": data,
                }
                save_checkpoint(ckpt, CHECKPOINT_KIND, {**state, **extra}, **parts)
    train_seconds = clock.stop()
    bar.close()
    model.freeze()
    if callback is not None:
        callback(model, {"step": state["step"], "train_seconds": train_seconds})
    test_bpd = cglow_test_bits_per_dim(model, test, seed=opts.seed) if test is not None else None
    summary = {
        "dataset": train.spec,
        "test_bits_per_dim": test_bpd,
        "training": {
            **opts.model_dump(),
            "steps": state["step"],
            "skipped_batches": budget.skipped,
            "epochs_run": len(state["history"]),
            "seconds": round(train_seconds, 2),
        },
    }
    if out is not None and distributed.is_main():
        model.save(out, **summary)
    distributed.barrier()
    return model, summary


def _step_losses(model: CGlow, world: distributed.World | None, unused: set[int]) -> Callable:
    """``model.losses``, through DDP under torchrun (the flow's unused Glow prior ignored)."""
    if world is None or world.size == 1:
        return model.losses
    from torch.nn.parallel import DistributedDataParallel as DDP

    class _Losses(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor, labels: dict, noise: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.model.losses(x, labels, noise)

    module = _Losses()
    ignored = [name for name, p in module.named_parameters() if id(p) in unused]
    DDP._set_params_and_buffers_to_ignore_for_model(module, ignored)
    ids = [world.device] if world.device.type == "cuda" else None
    return DDP(module, device_ids=ids)


def _resume(
    ckpt: os.PathLike,
    configs: dict[str, BaseModel],
    data: dict[str, Any],
    parts: dict[str, Any],
    keys: tuple[str, ...],
) -> dict[str, Any]:
    """Restore model, optimizer and generator from ``ckpt``; return its ``keys`` of the state.

    Refuses (one-line :class:`ConfigError`) a checkpoint of another backbone config, other label
    fields, other data or other training options (but ``epochs`` and ``max_steps``, which may be
    raised).
    """
    old = checkpoint_state(ckpt, CHECKPOINT_KIND)
    names = {"config": "backbone config", "cglow": "CGlow config", "options": "training options"}
    for key, what in names.items():
        new = configs[key].model_dump()
        checked = [k for k in new if key != "options" or k not in ("epochs", "max_steps")]
        refuse_changes(ckpt, what, old.get(key) or {}, new, checked)
    if isinstance(old.get("data"), dict):  # older checkpoints did not record it
        refuse_changes(ckpt, "dataset", old["data"], data)
    opts = configs["options"]
    if isinstance(old.get("epoch"), int):
        refuse_shorter(ckpt, "epochs", opts.epochs, old["epoch"], "epochs")
    if isinstance(old.get("step"), int):
        refuse_shorter(ckpt, "max_steps", opts.max_steps, old["step"], "steps")
    header = load_checkpoint(ckpt, CHECKPOINT_KIND, **parts, require=keys)
    return {k: header[k] for k in keys}
