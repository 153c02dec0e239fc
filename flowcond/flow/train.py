"""Stage 1 (paper Eq. 9): maximum-likelihood training of the Glow backbone, with exact resume.

Reads top to bottom: load data, build or resume, loop over epochs (uniform dequantization, warmup,
gradient clipping, non-finite batches skipped and counted), evaluate test bits/dim, checkpoint
atomically each epoch, then write the frozen backbone and a sample grid.

Every epoch draws its shuffling and dequantization noise from a generator seeded by
``(seed, epoch)``, so a run resumed from an epoch checkpoint is identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowcond.datasets import ImageDataset, load_dataset
from flowcond.errors import ConfigError, FileFormatError
from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig, TrainConfig
from flowcond.flow.fast_ops import retain_freed_memory
from flowcond.io import safefile
from flowcond.io.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from flowcond.training import (
    SkipBudget,
    Stopwatch,
    checkpoint_path,
    optimizer_step,
    progress_bar,
    refuse_changes,
    torch_threads,
)

CHECKPOINT_KIND = "backbone-checkpoint"
#: training options a resumed run must share with its checkpoint
RESUME_CHECKS = ("dataset", "batch_size", "seed", "optimizer")
STATE_KEYS = ("epoch", "step", "skipped", "history", "train_seconds")


def _outliers(stats: dict[str, float | int]) -> str:
    n = stats["worse_than_uniform"]
    if not n:
        return ""
    return f" (median {stats['median']:.4f}; {n} test image(s) score worse than uniform)"


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of optimizer step ``step``: linear warmup, constant, then the linear decay to 0
    over the last ``decay_epochs`` epochs."""
    lr = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
    if cfg.decay_epochs:
        left = cfg.epochs * steps_per_epoch - step
        lr *= min(1.0, max(left, 0) / (cfg.decay_epochs * steps_per_epoch))
    return lr


@torch.no_grad()
def bpd_per_image(model: Backbone, ds: ImageDataset, batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    """Bits/dim of every image of ``ds`` with uniform dequantization noise from a fixed generator."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(ds), batch_size):
        x = ds.images_at(slice(start, start + batch_size))
        noise = torch.rand(x.shape, generator=g)
        out.append(model.bits_per_dim(x.to(model.device), noise.to(model.device)).double().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def evaluate_bpd(model: Backbone, ds: ImageDataset, batch_size: int = 256, seed: int = 0) -> float:
    """Mean test bits/dim with uniform dequantization noise from a fixed generator."""
    return bpd_stats(bpd_per_image(model, ds, batch_size, seed), model.config.n_bits)["mean"]


def bpd_stats(bpd: torch.Tensor, n_bits: int) -> dict[str, float | int]:
    """Mean and median bits/dim, and how many images score worse than a uniform distribution
    (``n_bits`` bits/dim): a flow's inverse can explode on a few unseen images (Behrmann et al.,
    2021), and one such image dominates the mean."""
    if len(bpd) == 0:
        return {"mean": 0.0, "median": 0.0, "worse_than_uniform": 0}
    return {
        "mean": float(bpd.mean()),
        "median": float(bpd.nan_to_num(nan=float("inf")).median()),  # NaN ranks as the worst
        "worse_than_uniform": int((~(bpd <= n_bits)).sum()),
    }


def _make_optimizer(model: Backbone, cfg: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.Adamax if cfg.optimizer == "adamax" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=1e-5)


def _resume(
    ckpt: Path, model: Backbone, opt: torch.optim.Optimizer, bcfg: BackboneConfig, cfg: TrainConfig
) -> dict:
    """Restore model and optimizer from ``ckpt``; refuse one of another config or run."""
    header = checkpoint_state(ckpt, CHECKPOINT_KIND)
    try:
        written_for = BackboneConfig.from_header(header.get("config"))
    except (TypeError, ValueError) as e:
        raise FileFormatError(
            ckpt, f"invalid backbone config in checkpoint: {safefile.one_line(e)}"
        ) from None
    refuse_changes(ckpt, "backbone config", written_for.model_dump(), bcfg.model_dump())
    old_train = header.get("train_config") or {}
    refuse_changes(ckpt, "training options", old_train, cfg.model_dump(), RESUME_CHECKS)
    return load_checkpoint(ckpt, CHECKPOINT_KIND, {"model": model.flow}, {"optim": opt}, require=STATE_KEYS)


def train_step(
    model: Backbone,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    noise: torch.Tensor,
    lr: float,
    clip: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float | None:
    """One maximum-likelihood step on images ``x`` with dequantization ``noise``.

    ``loss_fn(x, noise)`` (default: mean ``model.bits_per_dim``) gives the loss. Returns the
    batch's mean bits/dim, or ``None`` when the loss or the gradient is not finite (then nothing
    is updated).
    """
    for group in opt.param_groups:
        group["lr"] = lr
    loss = loss_fn(x, noise) if loss_fn is not None else model.bits_per_dim(x, noise).mean()
    if not optimizer_step(loss, opt, list(model.parameters()), clip):
        return None
    return float(loss.detach())


def train_backbone(bcfg: BackboneConfig, cfg: TrainConfig) -> tuple[Backbone, dict[str, Any]]:
    """Train a backbone; returns the frozen model and a summary (also stored in its file header)."""
    with torch_threads(cfg.threads):
        return _train_backbone(bcfg, cfg)


def _train_backbone(bcfg: BackboneConfig, cfg: TrainConfig) -> tuple[Backbone, dict[str, Any]]:
    train = load_dataset(cfg.dataset, "train", root=cfg.root, download=cfg.download)
    test = load_dataset(cfg.dataset, "test", root=cfg.root, download=cfg.download)
    if tuple(train.image_shape) != bcfg.image_shape:
        raise ConfigError(
            f"dataset {cfg.dataset!r} has images {tuple(train.image_shape)}, the backbone config "
            f"expects {bcfg.image_shape}"
        )
    if cfg.fast:
        retain_freed_memory()  # fewer page faults: see flowcond.flow.fast_ops.retain_freed_memory
    torch.manual_seed(cfg.seed)
    model = Backbone(bcfg)
    model.fast = cfg.fast
    opt = _make_optimizer(model, cfg)
    ckpt = checkpoint_path(cfg.out)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "skipped": 0, "history": [], "train_seconds": 0.0}
    if cfg.resume and ckpt.exists():
        header = _resume(ckpt, model, opt, bcfg, cfg)
        state = {k: header[k] for k in state}
    else:
        g0 = torch.Generator().manual_seed(cfg.seed)
        first = torch.randperm(len(train), generator=g0)[: max(cfg.batch_size, 256)]
        model.initialize(train.images_at(first))

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    loss_fn = CompiledLoss(model) if cfg.compile else None
    clock = Stopwatch(state["train_seconds"])
    model.train()
    for epoch in range(state["epoch"], cfg.epochs):
        if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
            break
        clock.start()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(train), generator=g)
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress, leave=False)
        budget = SkipBudget(steps_per_epoch // 2, lambda n, e=epoch: _diverged(e, n, ckpt))
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                break
            x = train.images_at(order[start : start + cfg.batch_size])
            noise = torch.rand(x.shape, generator=g)
            lr = learning_rate(cfg, state["step"], steps_per_epoch)
            loss = train_step(model, opt, x.to(model.device), noise.to(model.device), lr, cfg.clip, loss_fn)
            bar.update()
            if loss is None:
                budget.skip()
                continue
            state["step"] += 1
            losses.append(loss)
            bar.set_postfix(bpd=f"{loss:.3f}", lr=f"{lr:.1e}")
        bar.close()
        state["train_seconds"] = clock.stop()
        state["skipped"] += budget.skipped
        stats = bpd_stats(bpd_per_image(model, test, seed=cfg.seed), bcfg.n_bits)
        train_bpd = sum(losses) / max(len(losses), 1)
        state["history"].append(
            {
                "epoch": epoch + 1,
                "train_bpd": train_bpd,
                "test_bpd": stats["mean"],
                "test_median_bpd": stats["median"],
                "test_worse_than_uniform": stats["worse_than_uniform"],
                "skipped": budget.skipped,
            }
        )
        state["epoch"] = epoch + 1
        tqdm.write(
            f"epoch {epoch + 1}: train {train_bpd:.4f} bits/dim, test {stats['mean']:.4f} bits/dim"
            + _outliers(stats)
            + (f", {budget.skipped} non-finite batches skipped" if budget.skipped else "")
        )
        save_checkpoint(
            ckpt,
            CHECKPOINT_KIND,
            {**state, "train_config": cfg.model_dump(), "config": bcfg.model_dump()},
            modules={"model": model.flow},
            optimizers={"optim": opt},
        )

    model.freeze()
    summary = _summary(model, test, cfg, state, compiled=bool(loss_fn is not None and loss_fn.failed is None))
    model.save(cfg.out, **summary)
    return model, summary


def _summary(
    model: Backbone, test: ImageDataset, cfg: TrainConfig, state: dict[str, Any], compiled: bool
) -> dict[str, Any]:
    """What the backbone file's header records about its training."""
    last = state["history"][-1] if state["history"] else {}
    if "test_median_bpd" in last:  # the last epoch evaluated the final weights already
        stats = {
            "mean": last["test_bpd"],
            "median": last["test_median_bpd"],
            "worse_than_uniform": last["test_worse_than_uniform"],
        }
    else:  # no epoch run here, or a checkpoint from before the median was recorded
        stats = bpd_stats(bpd_per_image(model, test, seed=cfg.seed), model.config.n_bits)
    return {
        "dataset": test.spec | {"split": "train"},
        "test_bits_per_dim": stats["mean"],
        "test_bits_per_dim_median": stats["median"],
        "test_images_worse_than_uniform": stats["worse_than_uniform"],
        "training": {
            "epochs": state["epoch"],
            "steps": state["step"],
            "skipped_batches": state["skipped"],
            "seconds": round(state["train_seconds"], 1),
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "decay_epochs": cfg.decay_epochs,
            "optimizer": cfg.optimizer,
            "seed": cfg.seed,
            "compiled": compiled,
        },
        "history": state["history"],
    }


class CompiledLoss:
    """``torch.compile`` of the mean bits/dim of ``model``; eager from the first failure on.

    Compiling happens on the first call (and once more for the smaller last batch of an epoch);
    anything going wrong there (no C++ compiler, an unsupported torch build...) is reported once
    and training continues with the eager loss, which computes the same function.
    """

    def __init__(self, model: Backbone) -> None:
        self.model = model
        self.failed: str | None = None
        if model._fast is not None:
            model._fast.fuse_training = False  # inductor fuses by itself
        try:
            self._compiled = torch.compile(self._eager)
        except Exception as e:  # noqa: BLE001 - any failure: fall back
            self._fail(e)

    def _eager(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.model.bits_per_dim(x, noise).mean()

    def _fail(self, e: Exception) -> None:
        self.failed = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        if self.model._fast is not None:
            self.model._fast.fuse_training = True
        warnings.warn(
            f"torch.compile failed, training continues without it ({self.failed})",
            RuntimeWarning,
            stacklevel=3,
        )

    def __call__(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.failed is None:
            try:
                return self._compiled(x, noise)
            except Exception as e:  # noqa: BLE001 - any failure: fall back
                self._fail(e)
        return self._eager(x, noise)


def _diverged(epoch: int, skipped: int, ckpt: Path) -> str:
    where = (
        f"the last good checkpoint is {ckpt} (continue from it with --resume)"
        if ckpt.exists()
        else f"no checkpoint was written yet ({ckpt})"
    )
    return (
        f"training diverged in epoch {epoch + 1}: {skipped} non-finite batches; lower --lr or "
        f"raise --warmup; {where}"
    )


def save_sample_grid(
    model: Backbone, path: str | Path, n: int = 64, temperature: float = 0.7, seed: int = 0
) -> None:
    """Write an ``n``-image sample grid PNG at ``temperature`` (atomic)."""
    from flowcond.io.images import save_grid

    with torch.no_grad():
        x = model.sample(n, temperature, generator=torch.Generator().manual_seed(seed))
    save_grid(x, path, nrow=int(math.sqrt(n)))
