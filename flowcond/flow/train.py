"""Stage 1 (paper Eq. 9): maximum-likelihood training of the Glow backbone, with exact resume.

Reads top to bottom: load data, build or resume, loop over epochs (uniform dequantization, warmup,
gradient clipping, non-finite batches skipped and counted), evaluate test bits/dim, checkpoint
atomically each epoch, then write the frozen backbone and a sample grid.

Every epoch draws its shuffling and dequantization noise from a generator seeded by
``(seed, epoch)``, so a run resumed from an epoch checkpoint is identical to an uninterrupted one;
a run stopped mid-epoch by ``max_steps`` checkpoints that generator and where it stopped, and
continues from there. A checkpoint records the backbone config, the training options and the data
(:func:`flowcond.training.dataset_binding`); resuming with any of them changed is refused with a
one-line error naming the fields, except ``epochs`` and ``max_steps``, which may be raised (the
header lists the segments run and the options each ran with).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowcond import distributed
from flowcond.datasets import ImageDataset, load_dataset
from flowcond.errors import ConfigError, FileFormatError
from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig, TrainConfig
from flowcond.flow.fast_ops import retain_freed_memory
from flowcond.flow.header import provenance
from flowcond.flow.loss import CompiledLoss, TrainingLoss  # noqa: F401  (CompiledLoss: benchmarks)
from flowcond.io import safefile
from flowcond.io.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from flowcond.io.outputs import check_locations
from flowcond.training import (
    SkipBudget,
    Stopwatch,
    checkpoint_path,
    dataset_binding,
    optimizer_step,
    progress_bar,
    refuse_changes,
    refuse_shorter,
    torch_threads,
)

CHECKPOINT_KIND = "backbone-checkpoint"
#: training options a resumed run may change: where to stop (raised only), how to run it (threads,
#: compiled or not, fast path: the same function) and where data and output live
MAY_CHANGE_ON_RESUME = (
    "epochs max_steps threads root download out resume progress compile fast device precision".split()
)
#: training options a resumed run must share with its checkpoint (lr, warmup, decay, clip, ...)
RESUME_CHECKS = tuple(k for k in TrainConfig.model_fields if k not in MAY_CHANGE_ON_RESUME)
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
def bpd_per_image(
    model: Backbone, ds: ImageDataset, batch_size: int = 256, seed: int = 0, draws: int = 1
) -> torch.Tensor:
    """Bits/dim of every image of ``ds``: the standard figure (:meth:`Backbone.bits_per_dim`:
    uniform dequantization, averaged over ``draws`` noise draws from a fixed generator)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(ds), batch_size):
        x = ds.images_at(slice(start, start + batch_size)).to(model.device)
        out.append(model.bits_per_dim(x, draws=draws, generator=g).double().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def mean_bits_per_dim(
    model: Backbone, ds: ImageDataset, batch_size: int = 256, seed: int = 0, draws: int = 1
) -> float:
    """Mean test bits/dim (:func:`bpd_per_image`)."""
    return bpd_stats(bpd_per_image(model, ds, batch_size, seed, draws), model.config.n_bits)["mean"]


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
    ckpt: Path,
    model: Backbone,
    opt: torch.optim.Optimizer,
    bcfg: BackboneConfig,
    cfg: TrainConfig,
    data: dict[str, Any],
    steps_per_epoch: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Restore model and optimizer from ``ckpt``; refuse one of another config, options or data.

    Returns the loop state and, for a checkpoint written mid-epoch, where that epoch stopped
    (``position``, ``losses``, ``skipped`` and its generator ``rng``), else ``None``.
    """
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
    if isinstance(header.get("data"), dict):  # older checkpoints: the dataset name only
        refuse_changes(ckpt, "dataset", header["data"], data)
    if isinstance(header.get("epoch"), int):
        refuse_shorter(ckpt, "--epochs", cfg.epochs, header["epoch"], "complete epochs")
    if isinstance(header.get("step"), int):
        refuse_shorter(ckpt, "--max-steps", cfg.max_steps, header["step"], "steps")
    partial = _partial(ckpt, header.get("partial"), steps_per_epoch * cfg.batch_size)
    generators = {"data_rng": partial["rng"]} if partial else None
    header = load_checkpoint(
        ckpt, CHECKPOINT_KIND, {"model": model.flow}, {"optim": opt}, generators, require=STATE_KEYS
    )
    state = {k: header[k] for k in STATE_KEYS}
    segments = header.get("segments")
    valid = isinstance(segments, list) and all(isinstance(x, dict) for x in segments)
    state["segments"] = segments if valid else [{"from": 0, "to": state["step"]}]
    if partial:  # that epoch's entry and skips are counted again when it completes
        state["skipped"] -= partial["skipped"]
        if state["history"] and state["history"][-1].get("partial"):
            state["history"].pop()
    return state, partial


def _partial(ckpt: Path, info: Any, rows: int) -> dict[str, Any] | None:
    """Where a checkpoint written mid-epoch stopped (see :func:`_resume`), validated."""
    if info is None:
        return None
    info = info if isinstance(info, dict) else {}
    losses, pos = info.get("losses"), info.get("position")
    numbers = (
        isinstance(losses, list) and len(losses) == 2 and all(isinstance(v, int | float) for v in losses)
    )
    if not (numbers and isinstance(pos, int) and 0 < pos < rows and isinstance(info.get("skipped"), int)):
        raise FileFormatError(ckpt, "invalid checkpoint: malformed 'partial' entry")
    return {**info, "rng": torch.Generator()}


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
    """Train a backbone; returns the frozen model and a summary (also stored in its file header).

    Under torchrun (``torchrun --nproc-per-node N -m flowcond train-backbone ...``) every process
    runs this: each takes every N-th image of each global batch of ``batch_size`` (the same
    batches and dequantization noise as one process), DDP averages the gradients, and rank 0
    alone writes the checkpoint and the backbone (:mod:`flowcond.flow.loss`).
    """
    with torch_threads(cfg.threads), distributed.session(cfg.device):
        return _train_backbone(bcfg, cfg)


def _train_backbone(bcfg: BackboneConfig, cfg: TrainConfig) -> tuple[Backbone, dict[str, Any]]:
    check_locations({"out": cfg.out, "checkpoint": checkpoint_path(cfg.out)})
    train = load_dataset(cfg.dataset, "train", root=cfg.root, download=cfg.download)
    test = load_dataset(cfg.dataset, "test", root=cfg.root, download=cfg.download)
    if tuple(train.image_shape) != bcfg.image_shape:
        raise ConfigError(
            f"dataset {cfg.dataset!r} has images {tuple(train.image_shape)}, the backbone config "
            f"expects {bcfg.image_shape}"
        )
    world = distributed.world()
    if cfg.fast and world.device.type == "cpu":
        retain_freed_memory()  # fewer page faults: see flowcond.flow.fast_ops.retain_freed_memory
    torch.manual_seed(cfg.seed)
    model = Backbone(bcfg)
    model.fast = cfg.fast
    model.to(world.device)
    opt = _make_optimizer(model, cfg)
    ckpt = checkpoint_path(cfg.out)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    data = dataset_binding(train)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "skipped": 0, "history": [], "train_seconds": 0.0}
    state["segments"], partial = [], None
    if cfg.resume and ckpt.exists():
        state, partial = _resume(ckpt, model, opt, bcfg, cfg, data, steps_per_epoch)
    else:
        g0 = torch.Generator().manual_seed(cfg.seed)
        first = torch.randperm(len(train), generator=g0)[: max(cfg.batch_size, 256)]
        # ActNorm's data-dependent init: every rank sees the same seeded batch, then takes
        # rank 0's result (identical on CPU; GPU kernels may differ in the last bits)
        model.initialize(train.images_at(first).to(world.device))
        distributed.broadcast_module(model)
    segment = {"from": state["step"], "to": state["step"], "epochs": cfg.epochs, "max_steps": cfg.max_steps}
    state["segments"].append(segment)

    loss_fn = TrainingLoss(model, cfg.precision, cfg.compile, world)
    show = cfg.progress and world.is_main
    clock = Stopwatch(state["train_seconds"])
    model.train()
    for epoch in range(state["epoch"], cfg.epochs):
        if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
            break
        clock.start()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(train), generator=g)
        pos, loss_sum, loss_n, skipped = 0, 0.0, 0, 0
        if partial is not None:  # continue the epoch a checkpoint stopped in
            g, pos, skipped = partial["rng"], partial["position"], partial["skipped"]
            (loss_sum, loss_n), partial = partial["losses"], None
        desc = f"epoch {epoch + 1}/{cfg.epochs}"
        bar = progress_bar(steps_per_epoch, desc, show, initial=pos // cfg.batch_size, leave=False)
        budget = SkipBudget(steps_per_epoch // 2, lambda n, e=epoch: _diverged(e, n, ckpt), skipped=skipped)
        while pos < len(order):
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                break
            batch = order[pos : pos + cfg.batch_size]
            pos += cfg.batch_size
            noise = torch.rand((len(batch), *train.image_shape), generator=g)  # the global batch's
            mine = world.shard(len(batch))  # this rank's images (all of them in one process)
            x, noise = train.images_at(batch[mine]), noise[mine]
            lr = learning_rate(cfg, state["step"], steps_per_epoch)
            loss = train_step(model, opt, x.to(model.device), noise.to(model.device), lr, cfg.clip, loss_fn)
            bar.update()
            if loss is None:
                budget.skip()
                continue
            state["step"] = segment["to"] = state["step"] + 1
            loss_sum, loss_n = loss_sum + loss, loss_n + 1
            bar.set_postfix(bpd=f"{loss:.3f}", lr=f"{lr:.1e}")
        bar.close()
        complete = pos >= len(order)
        state["train_seconds"] = clock.stop()
        state["skipped"] += budget.skipped
        stats = bpd_stats(bpd_per_image(model, test, seed=cfg.seed), bcfg.n_bits)
        train_bpd = loss_sum / max(loss_n, 1)
        entry = {
            "epoch": epoch + 1,
            "train_bpd": train_bpd,
            "test_bpd": stats["mean"],
            "test_median_bpd": stats["median"],
            "test_worse_than_uniform": stats["worse_than_uniform"],
            "skipped": budget.skipped,
        }
        if complete:
            state["epoch"], state["partial"] = epoch + 1, None
        else:  # stopped by max_steps: a resumed run continues this epoch where it stopped
            entry.update(partial=True, batches=pos // cfg.batch_size)
            state["partial"] = {"position": pos, "losses": [loss_sum, loss_n], "skipped": budget.skipped}
        state["history"].append(entry)
        part = "" if complete else f" ({pos // cfg.batch_size}/{steps_per_epoch} batches, --max-steps)"
        if world.is_main:  # rank 0 alone reports and writes (atomically)
            tqdm.write(
                f"epoch {epoch + 1}{part}: train {train_bpd:.4f} bits/dim, test {stats['mean']:.4f} bits/dim"
                + _outliers(stats)
                + (f", {budget.skipped} non-finite batches skipped" if budget.skipped else "")
            )
            save_checkpoint(
                ckpt,
                CHECKPOINT_KIND,
                {**state, "train_config": cfg.model_dump(), "config": bcfg.model_dump(), "data": data},
                modules={"model": model.flow},
                optimizers={"optim": opt},
                generators=None if complete else {"data_rng": g},
            )
        if not complete:
            break

    model.freeze()
    summary = _summary(model, test, cfg, state, compiled=loss_fn.compiled)
    if world.is_main:
        model.save(cfg.out, **summary)
    distributed.barrier()  # the other ranks return once the backbone is written
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
            **{k: v for k, v in cfg.model_dump().items() if k in RESUME_CHECKS and k != "dataset"},
            "compiled": compiled,
            "precision": cfg.precision,
            "segments": [seg for seg in state["segments"] if seg["to"] > seg["from"]],
        },
        "history": state["history"],
        "provenance": provenance("trained", "flowcond", dataset=test.spec.get("name"), steps=state["step"]),
    }


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
