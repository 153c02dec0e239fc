"""A backbone file's header, validated before any model is built (torch-free).

:func:`check_backbone_header` validates the config (with the bounds of :class:`BackboneConfig`)
and the types of the metadata other code reads (``dataset``, ``training``, bits/dim...);
:func:`expected_weights` computes from the config alone the name, dtype and shape of every tensor
the backbone's flow has, so that a header promising more than the file holds (``steps=10**6``,
``hidden=10**9``) is refused by comparing with the tensors present, before anything is built.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from flowcond.errors import FileFormatError, validation_message
from flowcond.flow.config import BackboneConfig
from flowcond.io.safefile import TensorSpec

#: the metadata keys of a backbone header that are not free-form metadata
RESERVED = ("kind", "config", "content_hash", "format_version")
_HASH = re.compile(r"[0-9a-f]{64}")


class DatasetSpec(BaseModel):
    """``dataset`` of a backbone header: the spec of the dataset it was trained on."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    split: str | None = None


class BackboneMetadata(BaseModel):
    """The metadata of a backbone header that flowcond reads (others are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    dataset: DatasetSpec | None = None
    test_bits_per_dim: float | None = None
    test_bits_per_dim_median: float | None = None
    test_images_worse_than_uniform: int | None = None
    training: dict[str, Any] | None = None
    history: list[Any] | None = None
    provenance: Provenance | None = None


class Provenance(BaseModel):
    """``provenance`` of a backbone header: where the weights came from."""

    model_config = ConfigDict(extra="allow")

    source: Literal["trained", "imported"]
    library: str | None = None
    library_version: str | None = None
    date: str | None = None
    dataset: str | None = None
    steps: int | None = None
    file: str | None = None
    sha256: str | None = None


class _Training(BaseModel):
    model_config = ConfigDict(extra="allow")

    seconds: float | None = None
    steps: int | None = None
    epochs: int | None = None


def check_backbone_header(path: str | os.PathLike, header: dict[str, Any]) -> BackboneConfig:
    """The config of a backbone header; FileFormatError naming the file and the field for a
    missing or invalid config (out of bounds included), content hash or metadata field."""
    if "config" not in header:
        raise FileFormatError(path, "backbone header has no config")
    data = header["config"]
    if not isinstance(data, dict):
        raise FileFormatError(
            path, f"invalid backbone config in header: config must be a JSON object, not {_type(data)}"
        )
    try:
        config = BackboneConfig.from_header(data)
    except ValidationError as e:
        raise FileFormatError(
            path, f"invalid backbone config in header: {validation_message(e, 'config')}"
        ) from None
    except (TypeError, ValueError) as e:
        raise FileFormatError(path, f"invalid backbone config in header: config: {e}") from None
    if not -(2**63) <= config.seed < 2**64:
        raise FileFormatError(path, "invalid backbone config in header: config.seed: out of range")
    digest = header.get("content_hash")
    if not isinstance(digest, str):
        raise FileFormatError(path, "backbone header has no content hash")
    if not _HASH.fullmatch(digest):
        raise FileFormatError(path, "invalid backbone header: content_hash: not a SHA-256 hex digest")
    check_metadata(path, header)
    return config


def check_metadata(path: str | os.PathLike, header: dict[str, Any]) -> None:
    """The metadata fields flowcond reads have the right types (``dataset`` an object...)."""
    meta = {k: v for k, v in header.items() if k not in RESERVED}
    try:
        model = BackboneMetadata.model_validate(meta)
    except ValidationError as e:
        raise FileFormatError(path, f"invalid backbone header: {validation_message(e)}") from None
    try:
        if model.training is not None:
            _Training.model_validate(model.training)
    except ValidationError as e:
        raise FileFormatError(path, f"invalid backbone header: {validation_message(e, 'training')}") from None


def provenance(source: str, library: str, **fields: Any) -> dict[str, Any]:
    """A ``provenance`` record: ``source`` ("trained" or "imported"), the library that made the
    weights and its installed version, today's date (UTC) and ``fields`` (dataset, steps, file...)."""
    try:
        version = importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        version = None
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"source": source, "library": library, "library_version": version, "date": date, **fields}


def describe_provenance(header: dict[str, Any]) -> dict[str, Any]:
    """Where a (validated) backbone header says its weights came from. Files written before
    ``provenance`` existed were trained here when they hold ``training`` (source
    ``"trained here"``, with the dataset and steps), otherwise the source is ``"unknown"``."""
    if isinstance(header.get("provenance"), dict):
        return header["provenance"]
    training = header.get("training")
    if not isinstance(training, dict):
        return {"source": "unknown"}
    out: dict[str, Any] = {"source": "trained here", "library": "flowcond"}
    dataset = header.get("dataset")
    if isinstance(dataset, dict) and dataset.get("name"):
        out["dataset"] = dataset["name"]
    if training.get("steps") is not None:
        out["steps"] = training["steps"]
    return out


def expected_weights(config: BackboneConfig, prefix: str = "") -> dict[str, TensorSpec]:
    """Name, dtype and shape of every tensor of the flow ``Backbone(config).flow`` (its state
    dict), computed without building it. It mirrors ``flowcond.flow.backbone._build_flow`` and
    normflows' ``GlowBlock`` (coupling net, invertible 1x1 convolution, ActNorm) and
    ``GlowBase`` priors; ``tests/core/test_headers.py`` checks it against built models."""
    C, L, K, h = config.channels, config.levels, config.steps, config.hidden
    affine = config.coupling == "affine"
    net = "net.net" if affine and config.scale_map == "softclamp" else "net"
    out: dict[str, TensorSpec] = {}

    def add(name: str, *shape: int) -> None:
        out[prefix + name] = TensorSpec("F32", tuple(shape))

    for i in range(L):
        c = C * 2 ** (L + 1 - i)  # channels of every step of level i
        for j in range(K):
            p = f"flows.{i}.{j}.flows."
            params = (2 if affine else 1) * (c // 2)
            coupling = f"{p}0.flows.1.param_map.{net}."
            add(coupling + "0.weight", h, (c + 1) // 2, 3, 3)
            add(coupling + "0.bias", h)
            add(coupling + "2.weight", h, h, 1, 1)
            add(coupling + "2.bias", h)
            add(coupling + "4.weight", params, h, 3, 3)
            add(coupling + "4.bias", params)
            actnorm = 1
            if c > 1:
                actnorm = 2
                if config.lu:
                    for name in ("L", "U", "P", "eye"):
                        add(f"{p}1.{name}", c, c)
                    add(f"{p}1.log_S", c)
                    add(f"{p}1.sign_S", c)
                else:
                    add(f"{p}1.W", c, c)
            add(f"{p}{actnorm}.s", 1, c, 1, 1)
            add(f"{p}{actnorm}.t", 1, c, 1, 1)
            add(f"{p}{actnorm}.data_dep_init_done")
        q = C * 2 ** (L + 1) if i == 0 else C * 2 ** (L - i)
        if config.prior == "diag":  # DiagGaussian: one mean and log-scale per dimension
            f = 2 ** (L if i == 0 else L - i)
            for name in ("loc", "log_scale"):
                add(f"q0.{i}.{name}", 1, q, config.height // f, config.width // f)
            continue
        for name in ("loc", "loc_logs", "log_scale", "log_scale_logs"):
            add(f"q0.{i}.{name}", 1, q, 1, 1)
    return out


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )
