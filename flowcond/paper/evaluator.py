"""The evaluator: a small CNN classifier that judges generated images (paper Tables 1-3).

It plays the role of the paper's pretrained GoogLeNet: trained on *real* images only, it gives the
accuracy of generated samples (does an image generated for digit 3 look like a 3?), the features
for "FID (evaluator features)" (its penultimate layer, ``features(x)``), and attribute
probabilities for AMP and interference.

It learns one label field of a dataset: a ``categorical`` field (softmax, cross-entropy;
``predict`` gives class indices) or a ``binary`` multi-attribute field (one sigmoid per attribute,
binary cross-entropy; ``predict`` gives 0/1 per attribute).

Network: ``len(widths)`` blocks of conv3x3 + batch norm + ReLU, each followed by a 2x2 max-pool
while the feature map is at least 8 pixels on its short side, then adaptive average pooling to
4x4, a fully connected feature layer of width ``feature_dim`` (ReLU), dropout and a linear head.
Inputs are ``(N, C, H, W)`` in [0, 1]. Training augments each image with a random shift (up to
``shift`` pixels), rotation (up to ``rotate`` degrees) and zoom (``1 +- scale``), zero fill.
Rotation and zoom default to 10 degrees and 10 % for class labels and to off for binary
attributes, which they could change (slant, thickness, width, height).

Files are safetensors with a header (``kind: "evaluator"``) naming the network config, label
field, class names, test accuracy and dataset spec.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ValidationError

from flowcond.datasets import ImageDataset, load_dataset
from flowcond.errors import ConfigError, FileFormatError
from flowcond.io import safefile
from flowcond.paper.config import EvaluatorConfig, EvaluatorTrainConfig
from flowcond.training import torch_threads

KIND = "evaluator"
#: default (rotation degrees, zoom) augmentation per label kind
AUTO_AUGMENT = {"categorical": (10.0, 0.1), "binary": (0.0, 0.0)}


class EvaluatorNet(nn.Module):
    """conv blocks -> adaptive pool 4x4 -> FC ``feature_dim`` (features) -> linear head."""

    def __init__(self, cfg: EvaluatorConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = cfg.channels, min(cfg.height, cfg.width)
        for w in cfg.widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            if size >= 8:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c = w
        layers.append(nn.AdaptiveAvgPool2d(4))
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c * 16, cfg.feature_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_dim, cfg.n_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class Evaluator:
    """A trained evaluator: network plus what it was trained on. Inference only (eval, no grad)."""

    def __init__(
        self,
        net: EvaluatorNet,
        config: EvaluatorConfig,
        label: str,
        class_names: list[str],
        info: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.net = net.to(device).eval()
        self.config = config
        self.label = label
        self.class_names = list(class_names)
        self.info = dict(info or {})
        self.device = torch.device(device)

    # --------------------------------------------------------------- files
    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Evaluator:
        """Read and validate an evaluator file; :class:`FileFormatError` for anything wrong."""
        tensors, header = safefile.read(path, KIND)
        try:
            cfg = EvaluatorConfig.model_validate(header.get("config"))
        except ValidationError as e:
            msg = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors()
            )
            raise FileFormatError(path, f"invalid evaluator config ({msg})") from None
        label = header.get("label")
        names = header.get("class_names")
        if not isinstance(label, str) or not isinstance(names, list) or len(names) != cfg.n_outputs:
            raise FileFormatError(path, "evaluator header lacks a label field name or its class names")
        net = EvaluatorNet(cfg)
        state = net.state_dict()
        missing = sorted(set(state) - set(tensors))
        extra = sorted(set(tensors) - set(state))
        if missing or extra:
            raise FileFormatError(
                path,
                f"weights do not match the evaluator config (missing {missing[:3]}, unexpected {extra[:3]})",
            )
        for k, v in state.items():
            if tuple(tensors[k].shape) != tuple(v.shape):
                raise FileFormatError(
                    path,
                    f"weight {k!r} has shape {tuple(tensors[k].shape)}, config needs {tuple(v.shape)}",
                )
        net.load_state_dict(tensors)
        info = {k: v for k, v in header.items() if k not in ("config", "label", "class_names")}
        return cls(net, cfg, label, names, info, device)

    def save(self, path: str | os.PathLike) -> None:
        tensors = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        header = {
            **self.info,
            "kind": KIND,
            "config": self.config.model_dump(),
            "label": self.label,
            "class_names": self.class_names,
            "content_hash": safefile.content_hash(tensors),
        }
        header.pop("format_version", None)
        safefile.write(path, tensors, header)

    @property
    def test_accuracy(self) -> float | None:
        return self.info.get("test_accuracy")

    # --------------------------------------------------------------- inference
    def _check(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        want = (self.config.channels, self.config.height, self.config.width)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ConfigError(
                f"evaluator expects images of shape (N, {want[0]}, {want[1]}, {want[2]}) "
                f"in [0, 1], got {tuple(x.shape)}"
            )
        return x.float()

    @torch.no_grad()
    def _batched(self, fn, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        x = self._check(x)
        outs = [fn(x[i : i + batch_size].to(self.device)).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else fn(x[:0].to(self.device)).cpu()

    def logits(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return self._batched(self.net, x, batch_size)

    def predict_proba(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities (N, K) (softmax), or attribute probabilities (N, A) (sigmoid)."""
        z = self.logits(x, batch_size)
        return z.softmax(1) if self.config.label_kind == "categorical" else z.sigmoid()

    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class indices (N,) (long), or 0/1 attributes (N, A) (float)."""
        z = self.logits(x, batch_size)
        return z.argmax(1) if self.config.label_kind == "categorical" else (z > 0).float()

    def features(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Penultimate-layer features (N, feature_dim), e.g. for FID (evaluator features)."""
        return self._batched(self.net.features, x, batch_size)


# ----------------------------------------------------------------------- training
def _all_images(ds: ImageDataset) -> torch.Tensor:
    if isinstance(ds.images, torch.Tensor):
        return ds.images.float()
    return torch.stack([ds[i][0] for i in range(len(ds))]).float()


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by an independent integer offset in [-max_shift, max_shift] (zero fill)."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    p = max_shift
    xp = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]
    return xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_affine(
    x: torch.Tensor,
    max_shift: float,
    max_rotate: float = 0.0,
    max_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random shift (up to ``max_shift`` pixels), rotation (up to ``max_rotate`` degrees) and
    zoom (factor in ``1 +- max_scale``) per image; bilinear, zero fill. Integer shifts only
    (exact, :func:`random_shift`) when rotation and zoom are off."""
    if max_rotate <= 0 and max_scale <= 0:
        return random_shift(x, int(max_shift), generator)
    n, _, h, w = x.shape

    def uniform(bound: float) -> torch.Tensor:
        return (2 * torch.rand(n, generator=generator) - 1) * bound

    angle = uniform(math.radians(max_rotate))
    zoom = 1.0 + uniform(max_scale)
    tx, ty = uniform(2.0 * max_shift / w), uniform(2.0 * max_shift / h)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _targets(ds: ImageDataset, label: str) -> torch.Tensor:
    field = ds.schema[label]
    t = ds.labels[label]
    return t.long() if field.kind == "categorical" else t.float()


def _warmup_cosine(total: int, warmup_frac: float = 0.15):
    """Learning-rate factor: linear warmup over ``warmup_frac`` of the steps, then cosine to 0."""
    warmup = max(1, round(warmup_frac * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return factor


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


def train_evaluator(
    dataset: str | tuple[ImageDataset, ImageDataset] = "mnist5k",
    out: str | os.PathLike | None = None,
    root: str | None = None,
    download: bool = False,
    progress: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    **options: Any,
) -> tuple[Evaluator, dict[str, Any]]:
    """Train an evaluator on real images of ``dataset`` (a registered name or a (train, test) pair).

    ``options`` are :class:`EvaluatorTrainConfig` fields (``label``, ``epochs``, ``lr``, ...).
    AdamW, learning rate with linear warmup then cosine decay, random shift/rotation/zoom
    augmentation. Returns the evaluator and a summary (test accuracy, seconds, steps, per-epoch
    history); writes the evaluator to ``out`` when given. ``threads`` sets torch's intra-op threads
    for the run (1 is fastest on a busy machine: small convolutions gain little from more threads
    and suffer badly from oversubscription).
    """
    try:
        cfg = EvaluatorTrainConfig(**options)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid evaluator training options: {msgs}") from None
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
    with torch_threads(threads):
        net, summary = _fit(net_cfg, cfg, train, test, label, progress, device)
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
) -> tuple[EvaluatorNet, dict[str, Any]]:
    from tqdm.auto import tqdm

    kind = net_cfg.label_kind
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x_train, y_train = _all_images(train), _targets(train, label)
    x_test, y_test = _all_images(test).to(device), _targets(test, label).to(device)
    net = EvaluatorNet(net_cfg).to(device)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(total_steps))
    loss_fn = nn.CrossEntropyLoss() if kind == "categorical" else nn.BCEWithLogitsLoss()

    t0 = time.perf_counter()
    step = 0
    history: list[dict[str, Any]] = []
    bar = tqdm(total=total_steps, desc=f"evaluator ({label})", unit="step", disable=not progress)
    net.train()
    for epoch in range(cfg.epochs):
        if step >= total_steps:
            break
        order = torch.randperm(len(x_train), generator=g)
        running, seen = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            if step >= total_steps:
                break
            idx = order[i : i + cfg.batch_size]
            xb = random_affine(x_train[idx], cfg.shift, cfg.rotate, cfg.scale, g).to(device)
            loss = loss_fn(net(xb), y_train[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running += loss.item() * len(idx)
            seen += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{running / seen:.4f}")
        test_acc = _score(net, kind, x_test, y_test)
        history.append({"epoch": epoch + 1, "loss": running / seen, "test_accuracy": test_acc})
        bar.set_postfix(epoch=epoch + 1, loss=f"{running / seen:.4f}", test_acc=f"{test_acc:.4f}")
    bar.close()
    seconds = time.perf_counter() - t0
    summary = {
        "test_accuracy": history[-1]["test_accuracy"],
        "train_accuracy": _score(net, kind, x_train.to(device), y_train.to(device)),
        "seconds": seconds,
        "steps": step,
        "epochs": len(history),
        "history": history,
    }
    return net, summary
