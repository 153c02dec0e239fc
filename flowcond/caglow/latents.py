"""Latent cache: a dataset encoded once by a frozen backbone, as sharded safetensors with labels.

Layout: ``<cache_dir>/<backbone hash[:16]>/<dataset>-<split>/shard-00000.safetensors ...`` plus a
``manifest.json`` written last (atomically). A cache is reused only when its manifest names the same
backbone hash, dataset spec and size; a half-written cache (no manifest) is rebuilt. Images are
streamed through the backbone in batches and never all held in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowcond.datasets import ImageDataset
from flowcond.flow.backbone import Backbone
from flowcond.io import safefile
from flowcond.io.atomic import write_text
from flowcond.io.cache import cache_root

SHARD_KIND = "latent-shard"


def default_cache_dir() -> Path:
    """``$FLOWCOND_CACHE`` or ``~/.cache/flowcond``, plus ``latents``."""
    return cache_root() / "latents"


class LatentCache:
    """Real latents ``z = F(x)`` of one dataset split and their labels, stored in shards."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest

    def __len__(self) -> int:
        return int(self.manifest["size"])

    @property
    def shards(self) -> list[Path]:
        return [self.folder / s for s in self.manifest["shards"]]

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        dataset: ImageDataset,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
        shard_size: int = 20_000,
        progress: bool = True,
    ) -> LatentCache:
        """Return the cache for (backbone, dataset), encoding it first if needed."""
        spec = dict(dataset.spec)
        name = f"{spec.get('name', 'data')}-{spec.get('split', 'all')}".replace(os.sep, "_")
        folder = Path(cache_dir or default_cache_dir()) / backbone.content_hash[:16] / name
        want = {"backbone_hash": backbone.content_hash, "dataset": spec, "size": len(dataset)}
        manifest_path = folder / "manifest.json"
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except json.JSONDecodeError:
                manifest = {}
            if all(manifest.get(k) == v for k, v in want.items()) and all(
                (folder / s).is_file() for s in manifest.get("shards", [])
            ):
                return cls(folder, manifest)
        folder.mkdir(parents=True, exist_ok=True)
        shards: list[str] = []
        buf_z: list[torch.Tensor] = []
        buf_labels: dict[str, list[torch.Tensor]] = {k: [] for k in dataset.labels}
        count = 0

        def flush() -> None:
            nonlocal buf_z
            if not buf_z:
                return
            tensors = {"z": torch.cat(buf_z)}
            for k, v in buf_labels.items():
                tensors[f"label.{k}"] = torch.cat(v)
                v.clear()
            fname = f"shard-{len(shards):05d}.safetensors"
            safefile.write(
                folder / fname,
                tensors,
                {"kind": SHARD_KIND, "backbone_hash": backbone.content_hash},
            )
            shards.append(fname)
            buf_z = []

        device = backbone.device
        bar = tqdm(
            total=len(dataset),
            desc=f"encoding {name}",
            unit="img",
            disable=not progress,
            leave=False,
        )
        with torch.inference_mode():
            for start in range(0, len(dataset), batch_size):
                idx = range(start, min(start + batch_size, len(dataset)))
                x = dataset.images_at(slice(start, idx.stop))
                buf_z.append(backbone.encode(x.to(device)).float().cpu())
                for k in buf_labels:
                    buf_labels[k].append(dataset.labels[k][start : idx.stop])
                count += len(idx)
                bar.update(len(idx))
                if sum(len(b) for b in buf_z) >= shard_size:
                    flush()
        flush()
        bar.close()
        manifest = {**want, "latent_dim": backbone.latent_dim, "shards": shards}
        write_text(manifest_path, json.dumps(manifest, indent=1))
        return cls(folder, manifest)

    def load_shard(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tensors, _ = safefile.read(self.shards[i], SHARD_KIND)
        labels = {k[6:]: v for k, v in tensors.items() if k.startswith("label.")}
        return tensors["z"], labels

    def load_all(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every latent and label in memory (fine for MNIST-size data)."""
        zs, labels = [], {}
        for i in range(len(self.shards)):
            z, lab = self.load_shard(i)
            zs.append(z)
            for k, v in lab.items():
                labels.setdefault(k, []).append(v)
        return torch.cat(zs), {k: torch.cat(v) for k, v in labels.items()}
