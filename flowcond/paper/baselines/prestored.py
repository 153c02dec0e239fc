"""Baseline Glow + pre-stored features (openai/glow's attribute manipulation).

On the frozen backbone's standardized latents ``z = F(x)`` of a labelled dataset:

* per attribute ``a``: ``delta_a = mean(z | a = 1) - mean(z | a = 0)``; an edit is ``z + alpha *
  delta_a`` (``-alpha`` turns it off), and cumulative edits add the deltas one after another;
* per class ``k`` (for "class-conditional" samples of a model that has no class input):
  ``shift_k = mean(z | class k) - mean(z)``.

Conditional samples (our choice; documented in ``flowcond evaluate``): a prior sample ``eps ~
N(0, T^2 I)`` moved to the class and to the requested attributes,
``z = eps + shift_k + alpha * sum_a (v_a - 1/2) delta_a``. Starting from a class-centred sample
(whose attributes are "average"), ``(v_a - 1/2) delta_a`` moves it half-way to either side, so
turning one attribute on from off adds exactly ``alpha * delta_a`` — the openai/glow edit.

Files: safetensors with ``kind: "prestored"``, naming the backbone's content hash.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from flowcond.caglow.metrics import plausible
from flowcond.errors import ConfigError, FileFormatError
from flowcond.flow.backbone import Backbone
from flowcond.io import safefile

KIND = "prestored"


class PreStored:
    """Class shifts ``(K, D)`` and attribute deltas ``(A, D)`` in a backbone's latent space."""

    def __init__(
        self,
        class_shifts: torch.Tensor | None,
        deltas: torch.Tensor | None,
        class_names: list[str] | None = None,
        attribute_names: list[str] | None = None,
        backbone_hash: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.class_shifts = class_shifts
        self.deltas = deltas
        self.class_names = list(class_names or [])
        self.attribute_names = list(attribute_names or [])
        self.backbone_hash = backbone_hash
        self.info = dict(info or {})

    @property
    def n_classes(self) -> int:
        return 0 if self.class_shifts is None else len(self.class_shifts)

    @property
    def n_attributes(self) -> int:
        return 0 if self.deltas is None else len(self.deltas)

    # --------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        z: torch.Tensor,
        classes: torch.Tensor | None = None,
        attributes: torch.Tensor | None = None,
        class_names: list[str] | None = None,
        attribute_names: list[str] | None = None,
        n_classes: int | None = None,
        backbone_hash: str | None = None,
    ) -> PreStored:
        """Mean differences from latents ``z`` (N, D), class ids (N,) and 0/1 attributes (N, A).

        Latents the backbone explodes on (:func:`~flowcond.caglow.metrics.plausible`: non-finite,
        or norm over 10x the median) are left out: one of norm 1e8 would rule every mean; the
        ``info`` records ``left_out``."""
        keep = plausible(z)
        z = z[keep].double()
        classes = None if classes is None else classes[keep]
        attributes = None if attributes is None else attributes[keep]
        shifts = deltas = None
        if classes is not None:
            K = int(n_classes if n_classes is not None else int(classes.max()) + 1)
            mean = z.mean(0)
            shifts = torch.zeros(K, z.shape[1], dtype=torch.float64)
            for k in range(K):
                sel = classes == k
                if sel.any():
                    shifts[k] = z[sel].mean(0) - mean
        if attributes is not None:
            a = attributes.float() > 0.5
            deltas = torch.zeros(a.shape[1], z.shape[1], dtype=torch.float64)
            for j in range(a.shape[1]):
                on, off = a[:, j], ~a[:, j]
                if not on.any() or not off.any():
                    raise ConfigError(
                        f"pre-stored features: attribute {j} is never "
                        f"{'on' if not on.any() else 'off'} in the data"
                    )
                deltas[j] = z[on].mean(0) - z[off].mean(0)
        return cls(
            None if shifts is None else shifts.float(),
            None if deltas is None else deltas.float(),
            class_names,
            attribute_names,
            backbone_hash,
            {"fit_size": len(z), "left_out": int((~keep).sum())},
        )

    @classmethod
    def fit_dataset(
        cls,
        backbone: Backbone,
        z: torch.Tensor,
        labels: dict[str, torch.Tensor],
        schema: dict,
        class_field: str | None = None,
        attribute_field: str | None = None,
    ) -> PreStored:
        """:meth:`fit` on a latent cache's ``z``/``labels`` using the dataset's label schema."""
        cf = (
            schema.get(class_field)
            if class_field
            else next((f for f in schema.values() if f.kind == "categorical"), None)
        )
        af = (
            schema.get(attribute_field)
            if attribute_field
            else next((f for f in schema.values() if f.kind == "binary"), None)
        )
        return cls.fit(
            z,
            labels[cf.name] if cf else None,
            labels[af.name] if af else None,
            list(cf.names) if cf else None,
            list(af.names) if af else None,
            n_classes=cf.size if cf else None,
            backbone_hash=backbone.content_hash,
        )

    # --------------------------------------------------------------- editing
    def edit(self, z: torch.Tensor, attribute: int, alpha: float = 1.0) -> torch.Tensor:
        """openai/glow's manipulation ``z + alpha * delta_attribute``."""
        return z + alpha * self.deltas[attribute]

    def cumulative(self, z: torch.Tensor, attributes: list[int], alpha: float = 1.0) -> list[torch.Tensor]:
        """``[z, z + a*d_0, z + a*d_0 + a*d_1, ...]`` (Fig. 4)."""
        out = [z]
        for j in attributes:
            out.append(self.edit(out[-1], j, alpha))
        return out

    def latents(
        self,
        eps: torch.Tensor,
        ids: torch.Tensor | None = None,
        attributes: torch.Tensor | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
    ) -> torch.Tensor:
        """``eps + beta * shift_ids + alpha * sum_a (v_a - 1/2) delta_a`` (either part optional)."""
        z = eps
        if ids is not None and self.class_shifts is not None:
            z = z + beta * self.class_shifts[ids.long()]
        if attributes is not None and self.deltas is not None:
            z = z + alpha * (attributes.float() - 0.5) @ self.deltas
        return z

    # ----------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Write the shifts and deltas (safetensors, ``kind: prestored``)."""
        tensors = {}
        if self.class_shifts is not None:
            tensors["class_shifts"] = self.class_shifts
        if self.deltas is not None:
            tensors["deltas"] = self.deltas
        header = {
            **self.info,
            "kind": KIND,
            "class_names": self.class_names,
            "attribute_names": self.attribute_names,
            "backbone_hash": self.backbone_hash,
            "content_hash": safefile.content_hash(tensors),
        }
        safefile.write(path, tensors, header)

    @classmethod
    def load(cls, path: str | os.PathLike, backbone: Backbone | None = None) -> PreStored:
        """Read a file; FileFormatError if ``backbone`` is given and is not the one it was fit on,
        or for a header or tensors that do not fit together (naming the field)."""
        header, specs = safefile.read_layout(path, KIND)
        names = {}
        for field in ("class_names", "attribute_names"):
            value = header.get(field)
            if value is not None and not (isinstance(value, list) and all(isinstance(n, str) for n in value)):
                raise FileFormatError(path, f"invalid prestored header: {field}: must be a list of strings")
            names[field] = value or []
        bb_hash = header.get("backbone_hash")
        if bb_hash is not None and not isinstance(bb_hash, str):
            raise FileFormatError(path, "invalid prestored header: backbone_hash: must be a string")
        if backbone is not None and bb_hash != backbone.content_hash:
            raise FileFormatError(path, "was computed on another backbone")
        _check_layout(path, specs, names)
        tensors, header = safefile.read(path, KIND)
        info = {
            k: v
            for k, v in header.items()
            if k
            not in (
                "kind",
                "class_names",
                "attribute_names",
                "backbone_hash",
                "content_hash",
                "format_version",
            )
        }
        return cls(
            tensors.get("class_shifts"),
            tensors.get("deltas"),
            names["class_names"],
            names["attribute_names"],
            bb_hash,
            info,
        )


def _check_layout(
    path: str | os.PathLike,
    specs: dict[str, safefile.TensorSpec],
    names: dict[str, list[str]],
) -> None:
    """``class_shifts`` (K, D) and ``deltas`` (A, D), float32, of one width D; as many names as
    rows, when names are given."""
    extra = sorted(set(specs) - {"class_shifts", "deltas"})
    if extra:
        raise FileFormatError(path, f"invalid prestored file: unexpected tensor {extra[0]!r}")
    dims = set()
    for name, field in (("class_shifts", "class_names"), ("deltas", "attribute_names")):
        spec = specs.get(name)
        if spec is None:
            continue
        if spec.dtype != "F32" or len(spec.shape) != 2:
            raise FileFormatError(
                path, f"invalid prestored file: {name} is {spec.dtype} {list(spec.shape)}, not F32 (rows, D)"
            )
        dims.add(spec.shape[1])
        if names[field] and len(names[field]) != spec.shape[0]:
            raise FileFormatError(
                path, f"invalid prestored header: {field}: {len(names[field])} names for {spec.shape[0]} rows"
            )
    if len(dims) > 1:
        raise FileFormatError(path, "invalid prestored file: class_shifts and deltas of different widths")
