"""Trained baselines saved once and reused across ``flowcond evaluate`` runs.

CGlow is the expensive model of an evaluation (an hour per seed on a CPU for the full budget). Its
file is kept in a cache folder under a key that hashes everything its training depends on: the
backbone config, the CGlow training options (seed included), the label fields and the data itself
(:func:`flowcond.training.dataset_binding`: name, split, size, label fingerprint). The key is also
written into the file's header; on reuse the header must carry the same key and the same binding,
else the file is retrained (and replaced), never silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flowcond.datasets import ImageDataset
from flowcond.errors import FlowcondError
from flowcond.flow.config import BackboneConfig
from flowcond.paper.baselines import CGlow, CGlowTrainConfig, train_cglow
from flowcond.training import dataset_binding


def cache_key(what: str, **parts: Any) -> str:
    """A short stable hash of ``what`` and JSON-able ``parts`` (sorted keys)."""
    blob = json.dumps({"what": what, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cglow_key(
    config: BackboneConfig,
    options: CGlowTrainConfig,
    train: ImageDataset,
    class_field: str,
    attribute_field: str,
) -> tuple[str, dict[str, Any]]:
    """The cache key of a CGlow training run and the binding it hashes."""
    binding = {
        "backbone_config": config.model_dump(),
        "options": options.model_dump(),
        "data": dataset_binding(train),
        "fields": [class_field, attribute_field],
    }
    return cache_key("cglow", **binding), binding


def cached_cglow(
    folder: str | Path,
    config: BackboneConfig,
    train: ImageDataset,
    test: ImageDataset,
    options: CGlowTrainConfig,
    class_field: str,
    attribute_field: str,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[CGlow, dict[str, Any], bool]:
    """The CGlow trained with ``options`` on ``train``: from ``folder`` when a file with the same
    key (checked in its header) is there, else trained and saved there. Returns the model, its
    summary (``test_bits_per_dim``, ``training``) and whether it was reused. ``device``: where it
    trains, and where the returned model lives."""
    key, binding = cglow_key(config, options, train, class_field, attribute_field)
    path = Path(folder) / f"cglow-seed{options.seed}-{key}.safetensors"
    wait_for_trainer(path, progress)
    if path.exists():
        try:
            model = CGlow.load(path)
        except FlowcondError as e:
            tqdm.write(f"model cache: {path} unreadable ({e}); retraining")
        else:
            meta = model.metadata
            if meta.get("cache_key") == key and meta.get("cache_binding") == json.loads(json.dumps(binding)):
                summary = {
                    "test_bits_per_dim": meta.get("test_bits_per_dim"),
                    "training": meta.get("training"),
                }
                return model.to(device), summary, True
            tqdm.write(f"model cache: {path} records another training run; retraining")
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = training_marker(path)
    marker.write_text(str(os.getpid()))
    try:
        model, summary = train_cglow(
            config,
            train,
            test,
            options,
            out=None,
            progress=progress,
            class_field=class_field,
            attribute_field=attribute_field,
            device=device,
        )
        model.save(path, **summary, cache_key=key, cache_binding=binding)
    finally:
        marker.unlink(missing_ok=True)
    return model, summary, False


def training_marker(path: Path) -> Path:
    """The file saying which process is training the model of ``path`` (its pid)."""
    return path.with_name(path.name + ".training")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_trainer(path: Path, progress: bool, poll: float = 10.0) -> None:
    """Wait while another live process is training the model of ``path`` (evaluate runs sharing
    a model cache then train each model once)."""
    marker = training_marker(path)
    announced = False
    while marker.exists():
        try:
            pid = int(marker.read_text().strip() or 0)
        except (OSError, ValueError):
            return
        if pid == os.getpid() or not _alive(pid):
            return
        if not announced:
            if progress:
                tqdm.write(f"model cache: process {pid} is training {path.name}; waiting for it")
            announced = True
        time.sleep(poll)
