"""Training the evaluator (:mod:`flowcond.paper.evaluator`) on real images of one label field.

Reads top to bottom: validate the options, pick the label field, then :func:`_fit`: AdamW with a
linear warmup then cosine decay of the learning rate, each batch augmented with a random shift (up
to ``shift`` pixels), rotation (up to ``rotate`` degrees) and zoom (``1 +- scale``), zero fill
(:mod:`flowcond.augment`); test accuracy after each epoch. Rotation and zoom default to 10
degrees and 10 % for class labels and to off for binary attributes, which they could change
(slant, thickness, width, height).

With ``checkpoint=True`` an epoch checkpoint ``OUT.ckpt.safetensors`` is written, and ``resume``
continues from it exactly (on the CPU); by default nothing but ``out`` is written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from flowcond.augment import random_affine
from flowcond.datasets import ImageDataset, load_dataset
from flowcond.errors import ConfigError, validation_message
from flowcond.io.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from flowcond.paper.config import EvaluatorConfig, EvaluatorTrainConfig
from flowcond.paper.evaluator import Evaluator, EvaluatorNet
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
    torch_threads,
    warmup_cosine,
)

CHECKPOINT_KIND = "evaluator-checkpoint"
#: default (rotation degrees, zoom) augmentation per label kind
AUTO_AUGMENT = {"categorical": (10.0, 0.1), "binary": (0.0, 0.0)}


def train_evaluator(
    dataset: str | tuple[ImageDataset, ImageDataset] = "mnist5k",
    out: str | os.PathLike | None = None,
    root: str | None = None,
    download: bool = False,
    progress: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    checkpoint: bool = False,
    resume: bool = False,
    **options: Any,
) -> tuple[Evaluator, dict[str, Any]]:
    """Train an evaluator on real images of ``dataset`` (a registered name or a (train, test) pair).

    ``options`` are :class:`EvaluatorTrainConfig` fields (``label``, ``epochs``, ``lr``, ...).
    Returns the evaluator and a summary (test accuracy, seconds, steps, per-epoch history); writes
    the evaluator to ``out`` when given. ``threads`` sets torch's intra-op threads for the run (1
    is fastest on a busy machine: small convolutions gain little from more threads and suffer
    badly from oversubscription). ``checkpoint``/``resume``: epoch checkpoints beside ``out``.
    """
    try:
        cfg = EvaluatorTrainConfig(**options)
    except ValidationError as e:
        raise ConfigError(f"invalid evaluator training options: {validation_message(e)}") from None
    if (checkpoint or resume) and out is None:
        raise ConfigError("evaluator checkpoints are written beside out: give out")
    if isinstance(dataset, str):
        train = load_dataset(dataset, "train", root=root, download=download)
        test = load_dataset(dataset, "test", root=root, download=download)
    else:
        train, test = dataset
    label = cfg.label or next(iter(train.schema))
    if label not in train.schema:
        raise ConfigError(
            f"dataset {train.spec.get('name')!r} has no label {label!r}; "
            f"its labels: {', '.join(train.schema)}"
        )
    field = train.schema[label]
    if field.kind not in ("categorical", "binary"):
        raise ConfigError(
            f"label {label!r} is {field.kind}; the evaluator learns categorical or binary labels"
        )
    # rotation and zoom change geometric attributes (slant, thickness, size): default them off
    # for binary attribute labels, on for class labels
    cfg = cfg.model_copy(
        update={
            "rotate": cfg.rotate if cfg.rotate is not None else AUTO_AUGMENT[field.kind][0],
            "scale": cfg.scale if cfg.scale is not None else AUTO_AUGMENT[field.kind][1],
        }
    )
    c, h, w = train.image_shape
    net_cfg = EvaluatorConfig(
        channels=c,
        height=h,
        width=w,
        n_outputs=field.size,
        label_kind=field.kind,
        widths=cfg.widths,
        feature_dim=cfg.feature_dim,
        dropout=cfg.dropout,
    )
    names = list(field.names) or [str(i) for i in range(field.size)]
    ckpt = checkpoint_path(out) if (checkpoint or resume) and out is not None else None
    with torch_threads(threads):
        net, summary = _fit(net_cfg, cfg, train, test, label, progress, device, ckpt, resume)
    info = {
        "test_accuracy": summary["test_accuracy"],
        "train_accuracy": summary["train_accuracy"],
        "dataset": train.describe(),
        "test_dataset": test.describe(),
        "training": {
            **cfg.model_dump(),
            "label": label,
            "steps": summary["steps"],
            "seconds": round(summary["seconds"], 2),
        },
    }
    evaluator = Evaluator(net.cpu(), net_cfg, label, names, info)
    if out is not None:
        evaluator.save(out)
    return evaluator, summary


def _fit(
    net_cfg: EvaluatorConfig,
    cfg: EvaluatorTrainConfig,
    train: ImageDataset,
    test: ImageDataset,
    label: str,
    progress: bool,
    device: str,
    ckpt: Path | None,
    resume: bool,
) -> tuple[EvaluatorNet, dict[str, Any]]:
    """The training loop: returns the trained network (eval mode) and the summary."""
    kind = net_cfg.label_kind
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    check_labels(train)
    check_labels(test)
    data = {"train": dataset_binding(train), "test": dataset_binding(test), "label": label}
    x_train, y_train = train.all_images(), _targets(train, label)
    x_test, y_test = test.all_images().to(device), _targets(test, label).to(device)
    net = EvaluatorNet(net_cfg).to(device)
    total_steps = cfg.epochs * math.ceil(len(x_train) / cfg.batch_size)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    params = list(net.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_factor = warmup_cosine(total_steps)
    loss_fn = nn.CrossEntropyLoss() if kind == "categorical" else nn.BCEWithLogitsLoss()
    # dropout draws from torch's global generator: it is part of an exact resume
    parts: dict[str, Any] = {
        "modules": {"net": net},
        "optimizers": {"optim": opt},
        "generators": {"rng": g, "torch_rng": torch.default_generator},
    }
    state: dict[str, Any] = {"epoch": 0, "step": 0, "skipped": 0, "history": [], "train_seconds": 0.0}
    if resume and ckpt is not None and ckpt.exists():
        header = checkpoint_state(ckpt, CHECKPOINT_KIND)
        keys = [k for k in cfg.model_dump() if k not in ("epochs", "max_steps")]
        refuse_changes(ckpt, "evaluator options", header.get("train_config") or {}, cfg.model_dump(), keys)
        if isinstance(header.get("data"), dict):  # older checkpoints did not record it
            refuse_changes(ckpt, "dataset", header["data"], data)
        if isinstance(header.get("epoch"), int):
            refuse_shorter(ckpt, "epochs", cfg.epochs, header["epoch"], "epochs")
        if isinstance(header.get("step"), int):
            refuse_shorter(ckpt, "max_steps", cfg.max_steps, header["step"], "steps")
        header = load_checkpoint(ckpt, CHECKPOINT_KIND, **parts, require=tuple(state))
        state = {k: header[k] for k in state}

    budget = SkipBudget(
        max(10, total_steps // 10),
        lambda n: f"evaluator training diverged: {n} non-finite steps; lower --lr",
        skipped=state["skipped"],
    )
    bar = progress_bar(total_steps, f"evaluator ({label})", progress, initial=state["step"], unit="step")
    clock = Stopwatch(state["train_seconds"])
    clock.start()
    net.train()
    for epoch in range(state["epoch"], cfg.epochs):
        if state["step"] >= total_steps:
            break
        order = torch.randperm(len(x_train), generator=g)
        running, seen = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            if state["step"] >= total_steps:
                break
            idx = order[i : i + cfg.batch_size]
            xb = random_affine(x_train[idx], cfg.shift, cfg.rotate, cfg.scale, g).to(device)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(state["step"])
            loss = loss_fn(net(xb), y_train[idx].to(device))
            if not optimizer_step(loss, opt, params):
                budget.skip()
                continue
            state["step"] += 1
            running += loss.item() * len(idx)
            seen += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / seen:.4f}")
        test_acc = _score(net, kind, x_test, y_test)
        state["history"].append(
            {"epoch": epoch + 1, "loss": running / max(seen, 1), "test_accuracy": test_acc}
        )
        state["epoch"], state["skipped"] = epoch + 1, budget.skipped
        bar.set_postfix(epoch=epoch + 1, loss=f"{running / max(seen, 1):.4f}", test_acc=f"{test_acc:.4f}")
        if ckpt is not None:
            with clock.paused():
                state["train_seconds"] = clock.seconds
                extra = {"train_config": cfg.model_dump(), "config": net_cfg.model_dump(), "data": data}
                save_checkpoint(ckpt, CHECKPOINT_KIND, {**state, **extra}, **parts)
    bar.close()
    seconds = clock.stop()
    summary = {
        "test_accuracy": state["history"][-1]["test_accuracy"],
        "train_accuracy": _score(net, kind, x_train.to(device), y_train.to(device)),
        "seconds": seconds,
        "steps": state["step"],
        "epochs": len(state["history"]),
        "history": state["history"],
    }
    return net.eval(), summary


def _targets(ds: ImageDataset, label: str) -> torch.Tensor:
    field = ds.schema[label]
    t = ds.labels[label]
    return t.long() if field.kind == "categorical" else t.float()


def _score(net: EvaluatorNet, kind: str, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Accuracy: fraction of correct classes, or of correct attribute bits (over all attributes)."""
    was = net.training
    net.eval()
    correct, total = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            z = net(x[i : i + batch_size])
            t = y[i : i + batch_size]
            if kind == "categorical":
                correct += float((z.argmax(1) == t).sum())
                total += len(t)
            else:
                correct += float(((z > 0).float() == t).sum())
                total += t.numel()
    net.train(was)
    return correct / max(total, 1)
