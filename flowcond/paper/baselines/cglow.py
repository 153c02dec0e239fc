"""Baseline CGlow: the same Glow shape trained end to end with a conditional prior (paper Sec. 4).

The flow ``F`` is a :class:`~flowcond.flow.backbone.Backbone` of the given :class:`BackboneConfig`
(its own per-level ``GlowBase`` priors are not used). The prior is conditional on ``c = [one-hot
class, multi-hot attributes]``: every latent dimension is Gaussian with mean and log-scale *linear*
in ``c`` (``loc = W_loc c + b_loc``, ``log_scale = W_ls c + b_ls``, both zero-initialized). With
classes only this is exactly normflows' ``ClassCondDiagGaussian`` (a mean and scale per class);
with attributes it is the multi-label prior of the issue. As in openai/glow's ``--ycond``, a linear
classifier on the spatially averaged coarsest latent level predicts the class (cross-entropy) and
the attributes (binary cross-entropy); the loss is ``bits/dim + weight_y * classification / ln 2``.

Sampling draws ``eps ~ N(0, T^2 I)`` and decodes ``z = loc(c) + exp(log_scale(c)) * eps``, so
the same ``eps`` with another condition is CGlow's attribute edit.

Files are safetensors with ``kind: "cglow"``: the weights of flow, prior and classifier, the
backbone config, the label fields and a content hash; written atomically. Training is
:mod:`flowcond.paper.baselines.cglow_train`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from flowcond.datasets import ImageDataset
from flowcond.errors import ConfigError, FileFormatError, validation_message
from flowcond.flow.backbone import Backbone
from flowcond.flow.config import BackboneConfig
from flowcond.flow.header import expected_weights
from flowcond.io import safefile

KIND = "cglow"


class CGlowConfig(BaseModel):
    """What a CGlow conditions on (stored in its file next to the backbone config)."""

    model_config = ConfigDict(extra="forbid")

    class_field: str | None = None
    n_classes: int = Field(0, ge=0)
    class_names: list[str] = Field(default_factory=list)
    attribute_field: str | None = None
    n_attributes: int = Field(0, ge=0)
    attribute_names: list[str] = Field(default_factory=list)
    attribute_frequencies: list[float] = Field(default_factory=list)
    weight_y: float = Field(0.01, ge=0, description="weight of the classification loss on z")

    @property
    def cond_dim(self) -> int:
        return self.n_classes + self.n_attributes

    @classmethod
    def from_dataset(
        cls,
        dataset: ImageDataset,
        class_field: str | None = None,
        attribute_field: str | None = None,
        weight_y: float = 0.01,
    ) -> CGlowConfig:
        """First categorical field as classes, first binary field as attributes (or the named ones)."""
        schema = dataset.schema

        def pick(name: str | None, kind: str) -> Any:
            if name is not None:
                if name not in schema or schema[name].kind != kind:
                    raise ConfigError(
                        f"CGlow: {name!r} is not a {kind} label field of dataset {dataset.spec.get('name')!r}"
                    )
                return schema[name]
            return next((f for f in schema.values() if f.kind == kind), None)

        cf, af = pick(class_field, "categorical"), pick(attribute_field, "binary")
        if cf is None and af is None:
            raise ConfigError(
                f"CGlow needs a categorical or binary label field; dataset "
                f"{dataset.spec.get('name')!r} has none"
            )
        freqs = dataset.labels[af.name].float().mean(0).tolist() if af is not None else []
        return cls(
            class_field=cf.name if cf else None,
            n_classes=cf.size if cf else 0,
            class_names=list(cf.names) if cf else [],
            attribute_field=af.name if af else None,
            n_attributes=af.size if af else 0,
            attribute_names=list(af.names) if af else [],
            attribute_frequencies=[round(float(p), 6) for p in freqs],
            weight_y=weight_y,
        )


class CGlow(nn.Module):
    """Glow with a conditional prior and a classifier on ``z`` (trained end to end)."""

    def __init__(
        self, config: BackboneConfig, cglow: CGlowConfig, metadata: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.cglow = cglow
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.backbone = Backbone(config)
        D = config.dim
        width = max(cglow.cond_dim, 1)
        self.prior_loc = nn.Linear(width, D)
        self.prior_log_scale = nn.Linear(width, D)
        for lin in (self.prior_loc, self.prior_log_scale):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        top = self.backbone.latent_shapes[0][0]
        self.classifier = nn.Linear(top, max(cglow.cond_dim, 1))
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    # ------------------------------------------------------------ conditions
    @property
    def latent_dim(self) -> int:
        return self.backbone.latent_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.backbone.image_shape

    def condition(
        self, ids: torch.Tensor | None = None, attributes: torch.Tensor | None = None, n: int | None = None
    ) -> torch.Tensor:
        """``[one-hot ids, attributes]`` ``(B, cond_dim)``; a missing part is all zeros."""
        cfg = self.cglow
        if n is None:
            n = len(ids) if ids is not None else len(attributes)
        parts = []
        if cfg.n_classes:
            parts.append(
                F.one_hot(ids.long(), cfg.n_classes).float()
                if ids is not None
                else torch.zeros(n, cfg.n_classes)
            )
        if cfg.n_attributes:
            parts.append(attributes.float() if attributes is not None else torch.zeros(n, cfg.n_attributes))
        return torch.cat(parts, 1) if parts else torch.zeros(n, 1)

    def labels_condition(
        self, labels: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Dataset labels -> (condition ``c``, class ids or ``None``, float attributes or ``None``)."""
        cfg = self.cglow
        ids = labels[cfg.class_field] if cfg.class_field else None
        attrs = labels[cfg.attribute_field].float() if cfg.attribute_field else None
        return self.condition(ids, attrs, n=len(next(iter(labels.values())))), ids, attrs

    def prior(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-scale ``(B, D)`` of the raw flat latent given conditions ``c``."""
        return self.prior_loc(c), self.prior_log_scale(c)

    # ------------------------------------------------------------ likelihood
    def _levels(self, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.backbone.encode_levels(y)

    def losses(
        self, x: torch.Tensor, labels: dict[str, torch.Tensor], noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-batch ``bpd`` (conditional bits/dim, mean) and ``cls`` (classification loss, nats)."""
        c, ids, attrs = self.labels_condition(labels)
        levels, log_det = self._levels(self.backbone.preprocess(x, noise))
        z = self.backbone.flatten_levels(levels)
        loc, log_scale = self.prior(c)
        log_p = (
            -0.5 * ((z - loc) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
        ).sum(1) + log_det
        D = self.latent_dim
        bpd = (-log_p + D * math.log(self.backbone.bins)) / (D * math.log(2.0))
        logits = self.classifier(levels[0].mean(dim=(2, 3)))
        cls = torch.zeros((), device=x.device)
        cfg = self.cglow
        if cfg.n_classes:
            cls = cls + F.cross_entropy(logits[:, : cfg.n_classes], ids.long())
        if cfg.n_attributes:
            cls = cls + F.binary_cross_entropy_with_logits(logits[:, cfg.n_classes :], attrs)
        return {"bpd": bpd.mean(), "cls": cls, "bpd_per_sample": bpd.detach(), "logits": logits.detach()}

    @torch.no_grad()
    def bits_per_dim(
        self, x: torch.Tensor, labels: dict[str, torch.Tensor], noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Conditional bits/dim per sample, ``-log2 p(x | c) / D`` at ``n_bits``."""
        return self.losses(x, labels, noise)["bpd_per_sample"]

    # ------------------------------------------------------------ generation
    def noise(
        self, n: int, temperature: float = 0.7, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator) * temperature

    def latents(self, c: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Raw flat latents ``loc(c) + exp(log_scale(c)) * eps``."""
        loc, log_scale = self.prior(c)
        return loc + torch.exp(log_scale) * eps

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Raw flat latents -> images in [0, 1] (through the backbone's standardized decode)."""
        bb = self.backbone
        y = bb.flatten_levels(bb.standardize(bb.split_levels(z.to(bb.device))))
        return bb.decode_in_batches(y, batch_size).to(z.device)

    @torch.no_grad()
    def generate(self, c: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.decode(self.latents(c, eps))

    @torch.no_grad()
    def sample(
        self,
        ids: torch.Tensor | None = None,
        attributes: torch.Tensor | None = None,
        n: int | None = None,
        temperature: float = 0.7,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Images for the given conditions (attributes from their dataset frequencies if omitted)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        n = n if n is not None else len(ids if ids is not None else attributes)
        if ids is not None and ids.dim() == 0:
            ids = ids.expand(n)
        if attributes is None and self.cglow.n_attributes:
            freq = torch.tensor(self.cglow.attribute_frequencies).expand(n, -1)
            attributes = torch.bernoulli(freq, generator=g)
        c = self.condition(ids, attributes, n)
        return self.generate(c, self.noise(n, temperature, g))

    # ------------------------------------------------------------ files
    def freeze(self) -> CGlow:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def save(self, path: str | os.PathLike, **metadata: Any) -> str:
        weights = self.weights()
        digest = safefile.content_hash(weights)
        meta = {**self.metadata, **metadata}
        header = {
            **meta,
            "kind": KIND,
            "config": self.config.model_dump(),
            "cglow": self.cglow.model_dump(),
            "content_hash": digest,
        }
        safefile.write(path, weights, header)
        self.metadata = meta
        return digest

    @classmethod
    def load(cls, path: str | os.PathLike) -> CGlow:
        """Read and validate a CGlow file; the tensors its header implies are compared with the
        ones the file holds before the model is built (FileFormatError naming the field)."""
        header, specs = safefile.read_layout(path, KIND)
        for field in ("config", "cglow"):
            if not isinstance(header.get(field), dict):
                raise FileFormatError(path, f"invalid cglow header: {field}: must be a JSON object")
        try:
            config = BackboneConfig(**header["config"])
        except ValidationError as e:
            raise FileFormatError(path, f"invalid cglow header: {validation_message(e, 'config')}") from None
        try:
            cglow = CGlowConfig(**header["cglow"])
        except ValidationError as e:
            raise FileFormatError(path, f"invalid cglow header: {validation_message(e, 'cglow')}") from None
        check_cglow_config(path, cglow)
        expected = cls.expected_weights(config, cglow)
        tensors, header = safefile.read(path, KIND, expected)
        reserved = ("kind", "config", "cglow", "content_hash", "format_version")
        model = cls(config, cglow, {k: v for k, v in header.items() if k not in reserved})
        safefile.load_weights(model, tensors, path)
        return model.freeze()

    @staticmethod
    def expected_weights(config: BackboneConfig, cglow: CGlowConfig) -> dict[str, safefile.TensorSpec]:
        """Name, dtype and shape of every tensor of ``CGlow(config, cglow)``, without building it."""
        out = expected_weights(config, prefix="backbone.flow.")
        D, width = config.dim, max(cglow.cond_dim, 1)
        top = config.channels * 2 ** (config.levels + 1)  # channels of the coarsest latent level
        for name, (rows, cols) in {
            "prior_loc": (D, width),
            "prior_log_scale": (D, width),
            "classifier": (width, top),
        }.items():
            out[f"{name}.weight"] = safefile.TensorSpec("F32", (rows, cols))
            out[f"{name}.bias"] = safefile.TensorSpec("F32", (rows,))
        return out


def check_cglow_config(path: str | os.PathLike, cglow: CGlowConfig) -> None:
    """The label lists of a CGlow header fit its class and attribute counts."""
    problems = []
    if cglow.class_names and len(cglow.class_names) != cglow.n_classes:
        problems.append(f"cglow.class_names: {len(cglow.class_names)} for {cglow.n_classes} classes")
    if cglow.attribute_names and len(cglow.attribute_names) != cglow.n_attributes:
        problems.append(
            f"cglow.attribute_names: {len(cglow.attribute_names)} for {cglow.n_attributes} attributes"
        )
    if cglow.n_attributes and len(cglow.attribute_frequencies) != cglow.n_attributes:
        problems.append(
            f"cglow.attribute_frequencies: {len(cglow.attribute_frequencies)} for "
            f"{cglow.n_attributes} attributes"
        )
    if not all(0.0 <= p <= 1.0 for p in cglow.attribute_frequencies):
        problems.append("cglow.attribute_frequencies: must be in [0, 1]")
    if problems:
        raise FileFormatError(path, f"invalid cglow header: {'; '.join(problems)}")
