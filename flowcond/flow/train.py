"""Stage 1 (paper Eq. 9): maximum-likelihood training of the Glow backbone, with exact resume.

Reads top to bottom: load data, build or resume, loop over epochs (uniform dequantization, warmup,
gradient clipping, non-finite batches skipped and counted), evaluate test bits/dim, checkpoint
atomically each epoch, then write the frozen backbone and a sample grid.

Every epoch draws its shuffling and dequantization noise from a generator seeded by
``(seed, epoch)``, so a run resumed from an epoch checkpoint is identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowcond.datasets import ImageDataset, load_dataset
from flowcond.errors import ConfigError, FileFormatError, FlowcondError
from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig, TrainConfig
from flowcond.flow.fast import retain_freed_memory
from flowcond.io import safefile
from flowcond.training import torch_threads

CHECKPOINT_KIND = "backbone-checkpoint"


def checkpoint_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".ckpt.safetensors")


def _batches(ds: ImageDataset, batch_size: int, order: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if isinstance(ds.images, torch.Tensor):
            yield ds.images[idx]
        else:
            yield torch.stack([ds[int(i)][0] for i in idx])


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
    for x in _batches(ds, batch_size, torch.arange(len(ds))):
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


def _save_checkpoint(path: Path, model: Backbone, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.flow.state_dict().items()}
    opt_sd = opt.state_dict()
    for idx, st in opt_sd["state"].items():
        for key, val in st.items():
            tensors[f"optim.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    header = {"kind": CHECKPOINT_KIND, "param_groups": opt_sd["param_groups"], **state}
    safefile.write(path, tensors, header)


def _load_checkpoint(
    path: Path, model: Backbone, opt: torch.optim.Optimizer, bcfg: BackboneConfig, cfg: TrainConfig
) -> dict[str, Any]:
    tensors, header = safefile.read(path, CHECKPOINT_KIND)
    try:
        written_for = BackboneConfig.from_header(header.get("config"))
    except (TypeError, ValueError) as e:
        raise FileFormatError(
            path, f"invalid backbone config in checkpoint: {safefile.one_line(e)}"
        ) from None
    if written_for != bcfg:
        changed = {k: v for k, v in written_for.model_dump().items() if bcfg.model_dump()[k] != v}
        raise ConfigError(
            f"{path}: the checkpoint was written for backbone config {changed} (now "
            f"{ {k: getattr(bcfg, k) for k in changed} }); resume with the same options or "
            f"choose another --out"
        )
    old_train = header.get("train_config") or {}
    for key in ("dataset", "batch_size", "seed", "optimizer"):
        if key in old_train and old_train[key] != getattr(cfg, key):
            raise ConfigError(
                f"{path}: the checkpoint was trained with {key}={old_train[key]!r}, not "
                f"{getattr(cfg, key)!r}; resume with the same value or choose another --out"
            )
    try:
        model.flow.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                state.setdefault(int(idx), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": header["param_groups"]})
        needed = ("epoch", "step", "skipped", "history", "train_seconds")
        missing = [k for k in needed if k not in header]
        if missing:
            raise KeyError(", ".join(missing))
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise FileFormatError(path, f"invalid checkpoint: {safefile.one_line(e)}") from None
    return header


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
    if not torch.isfinite(loss):
        return None
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if not torch.isfinite(grad_norm):
        opt.zero_grad(set_to_none=True)
        return None
    opt.step()
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
        retain_freed_memory()  # fewer page faults: see flowcond.flow.fast.retain_freed_memory
    torch.manual_seed(cfg.seed)
    model = Backbone(bcfg)
    model.fast = cfg.fast
    opt = _make_optimizer(model, cfg)
    ckpt = checkpoint_path(cfg.out)
    state: dict[str, Any] = {"epoch": 0, "step": 0, "skipped": 0, "history": [], "train_seconds": 0.0}
    if cfg.resume and ckpt.exists():
        header = _load_checkpoint(ckpt, model, opt, bcfg, cfg)
        state = {k: header[k] for k in state}
    else:
        g0 = torch.Generator().manual_seed(cfg.seed)
        first = torch.randperm(len(train), generator=g0)[: max(cfg.batch_size, 256)]
        model.initialize(next(_batches(train, len(first), first)))

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    loss_fn = CompiledLoss(model) if cfg.compile else None
    model.train()
    for epoch in range(state["epoch"], cfg.epochs):
        if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
            break
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(train), generator=g)
        bar = tqdm(
            _batches(train, cfg.batch_size, order),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        skipped_epoch, losses = 0, []
        for x in bar:
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                break
            noise = torch.rand(x.shape, generator=g)
            lr = learning_rate(cfg, state["step"], steps_per_epoch)
            loss = train_step(model, opt, x.to(model.device), noise.to(model.device), lr, cfg.clip, loss_fn)
            if loss is None:
                skipped_epoch += 1
                if skipped_epoch > steps_per_epoch // 2:
                    raise FlowcondError(_diverged(epoch, skipped_epoch, ckpt))
                continue
            state["step"] += 1
            losses.append(loss)
            bar.set_postfix(bpd=f"{loss:.3f}", lr=f"{lr:.1e}")
        state["skipped"] += skipped_epoch
        state["train_seconds"] += time.perf_counter() - t0
        stats = bpd_stats(bpd_per_image(model, test, seed=cfg.seed), bcfg.n_bits)
        train_bpd = sum(losses) / max(len(losses), 1)
        state["history"].append(
            {
                "epoch": epoch + 1,
                "train_bpd": train_bpd,
                "test_bpd": stats["mean"],
                "test_median_bpd": stats["median"],
                "test_worse_than_uniform": stats["worse_than_uniform"],
                "skipped": skipped_epoch,
            }
        )
        state["epoch"] = epoch + 1
        tqdm.write(
            f"epoch {epoch + 1}: train {train_bpd:.4f} bits/dim, test {stats['mean']:.4f} bits/dim"
            + _outliers(stats)
            + (f", {skipped_epoch} non-finite batches skipped" if skipped_epoch else "")
        )
        _save_checkpoint(
            ckpt, model, opt, {**state, "train_config": cfg.model_dump(), "config": bcfg.model_dump()}
        )

    model.freeze()
    last = state["history"][-1] if state["history"] else {}
    if "test_median_bpd" in last:  # the last epoch evaluated the final weights already
        stats = {
            "mean": last["test_bpd"],
            "median": last["test_median_bpd"],
            "worse_than_uniform": last["test_worse_than_uniform"],
        }
    else:  # no epoch run here, or a checkpoint from before the median was recorded
        stats = bpd_stats(bpd_per_image(model, test, seed=cfg.seed), bcfg.n_bits)
    summary = {
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
            "compiled": bool(loss_fn is not None and loss_fn.failed is None),
        },
        "history": state["history"],
    }
    model.save(cfg.out, **summary)
    return model, summary


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
