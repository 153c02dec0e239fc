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
Inputs are ``(N, C, H, W)`` in [0, 1]. Training is :mod:`flowcond.paper.train_evaluator`.

Files are safetensors with a header (``kind: "evaluator"``) naming the network config, label
field, class names, test accuracy and dataset spec.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from pydantic import ValidationError

from flowcond.convnet import ConvFeatures
from flowcond.errors import ConfigError, FileFormatError, validation_message
from flowcond.io import safefile
from flowcond.paper.config import EvaluatorConfig

__all__ = ["KIND", "Evaluator", "EvaluatorConfig", "EvaluatorNet"]

KIND = "evaluator"


class EvaluatorNet(ConvFeatures):
    """conv blocks -> adaptive pool 4x4 -> FC ``feature_dim`` (features) -> linear head."""

    def __init__(self, cfg: EvaluatorConfig) -> None:
        super().__init__(cfg.channels, min(cfg.height, cfg.width), cfg.widths, cfg.feature_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.feature_dim, cfg.n_outputs)

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
        """Read and validate an evaluator file; :class:`FileFormatError` for anything wrong.

        The header is validated and the tensors its config implies (from a build on the ``meta``
        device, which allocates nothing) are compared with the ones the file holds before the
        network is built.
        """
        header, specs = safefile.read_layout(path, KIND)
        config = header.get("config")
        if not isinstance(config, dict):
            raise FileFormatError(path, "invalid evaluator config (config: must be a JSON object)")
        try:
            cfg = EvaluatorConfig.model_validate(config)
        except ValidationError as e:
            raise FileFormatError(path, f"invalid evaluator config ({validation_message(e)})") from None
        label = header.get("label")
        names = header.get("class_names")
        if not isinstance(label, str) or not isinstance(names, list) or len(names) != cfg.n_outputs:
            raise FileFormatError(path, "evaluator header lacks a label field name or its class names")
        if not all(isinstance(n, str) for n in names):
            raise FileFormatError(path, "invalid evaluator header: class_names: must be strings")
        if len(cfg.widths) > len(specs):  # 6 tensors per block: more blocks than tensors cannot fit
            raise FileFormatError(
                path,
                f"weights do not match the evaluator config: {len(cfg.widths)} blocks, {len(specs)} tensors",
            )
        if not all(1 <= w <= 2**31 for w in cfg.widths) or cfg.feature_dim > 2**31:
            raise FileFormatError(path, "invalid evaluator config (config.widths, feature_dim: out of range)")
        try:
            expected = safefile.meta_specs(lambda: EvaluatorNet(cfg))
        except Exception as e:  # what the header asks for cannot be built: the header is wrong
            raise FileFormatError(path, f"invalid evaluator config ({safefile.one_line(e)})") from None
        tensors, _ = safefile.read(path, KIND, expected, against="the evaluator config")
        net = EvaluatorNet(cfg)
        safefile.load_weights(net, tensors, path, against="the evaluator config")
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
    def _batched(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int
    ) -> torch.Tensor:
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
