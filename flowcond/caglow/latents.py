"""Latent cache: a dataset encoded once by a frozen backbone, as sharded safetensors with labels.

Layout: ``<cache_dir>/<backbone hash[:16]>/<dataset>-<split>/shard-00000.safetensors ...`` plus a
``manifest.json`` written last (atomically). Images are streamed through the backbone in batches
and never all held in memory.

Nothing in a cache is trusted. The manifest names the cache format, the backbone hash, the
dataset spec, size, label schema, a fingerprint of the labels and the dataset plugin's distribution
and version, and lists every shard with its first row, row count, shapes and content hash; each
shard's header repeats its content hash, the backbone hash and the dataset spec.
:meth:`LatentCache.build` rebuilds a cache whose manifest is missing, unreadable, of an older
format or made for other data; :meth:`LatentCache.load_shard`
checks each shard it reads (content hash against the manifest, backbone, dataset, shapes and
dtypes, label ranges and equality with the dataset's own labels, finite latents of plausible
size) and re-encodes one that fails. Every rebuild says why in one line on stderr.

Nothing holds the whole dataset either (format 3): images are decoded by DataLoader workers,
each shard is written batch by batch, checked in chunks, and attach reads its batches of rows
from the open shard files (:meth:`LatentCache.rows`, :mod:`flowcond.caglow.shards`). Under
torchrun, rank ``r`` of ``n`` encodes shards ``r, r + n, ...`` and rank 0 writes the one manifest.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowcond.caglow.shards import (
    Damaged,
    LatentRows,
    ShardFile,
    default_workers,
    gather,
    image_batches,
    rank_and_size,
    same_values,
    write_shard,
)
from flowcond.datasets import ImageDataset
from flowcond.errors import FileFormatError, FlowcondError
from flowcond.flow.backbone import Backbone
from flowcond.io.atomic import write_text
from flowcond.io.cache import cache_root
from flowcond.training import check_labels, label_problem, labels_fingerprint

SHARD_KIND = "latent-shard"
#: version of the manifest and shard layout; caches of another version are rebuilt
CACHE_FORMAT = 3  # 3: shards written and read in a streaming way (same tensors as 2)
#: standardized latents of a working flow are O(1), but its inverse can explode on an unseen image
#: (the shipped MNIST-5k backbone encodes one test digit to a latent of norm 1e8); a cached latent
#: above this is damage, not data
LATENT_LIMIT = 1e20
_SHARD_NAME = re.compile(r"shard-\d{5}\.safetensors")


def default_cache_dir() -> Path:
    """``$FLOWCOND_CACHE`` or ``~/.cache/flowcond``, plus ``latents``."""
    return cache_root() / "latents"


def dataset_provider(dataset: ImageDataset) -> dict[str, Any] | None:
    """The distribution (name and version) whose plugin loaded ``dataset``: part of the cache
    key, so that a new release of a dataset plugin re-encodes (None: not loaded by a plugin)."""
    provider = getattr(dataset, "provider", None) or {}
    if not provider.get("distribution") and not provider.get("version"):
        return None
    return {"distribution": provider.get("distribution"), "version": provider.get("version")}


def _say(message: str) -> None:
    """One line on stderr (between progress bars)."""
    tqdm.write(message, file=sys.stderr)


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(value, default=str))


class LatentCache:
    """Real latents ``z = F(x)`` of one dataset split and their labels, stored in shards.

    Made by :meth:`build`, a cache knows its backbone and dataset and re-encodes any shard that
    fails its checks when loaded; one made from a folder and manifest alone refuses such a shard
    (:class:`FileFormatError`).
    """

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        backbone: Backbone | None = None,
        dataset: ImageDataset | None = None,
        batch_size: int = 256,
        workers: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.backbone = backbone
        self.dataset = dataset
        self.batch_size = batch_size
        self.workers = default_workers(dataset) if workers is None else workers
        self._hash = backbone.content_hash if backbone is not None else manifest.get("backbone_hash")

    def __len__(self) -> int:
        return int(self.manifest["size"])

    @property
    def shards(self) -> list[Path]:
        return [self.folder / s["file"] for s in self.manifest["shards"]]

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        backbone: Backbone,
        dataset: ImageDataset,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
        shard_size: int = 20_000,
        progress: bool = True,
        workers: int | None = None,
    ) -> LatentCache:
        """Return the cache for (backbone, dataset), encoding it first if needed.

        Labels of ``dataset`` that do not fit its schema are a :class:`ConfigError`. ``workers``:
        DataLoader processes decoding lazily loaded images (default: up to 4, one core left
        free; 0 for images held in memory).
        """
        check_labels(dataset)
        bb_hash = backbone.content_hash
        spec = _json(dict(dataset.spec))
        name = f"{spec.get('name', 'data')}-{spec.get('split', 'all')}".replace(os.sep, "_")
        folder = Path(cache_dir or default_cache_dir()) / bb_hash[:16] / name
        want = {
            "format": CACHE_FORMAT,
            "backbone_hash": bb_hash,
            "dataset": spec,
            "size": len(dataset),
            "latent_dim": backbone.latent_dim,
            "labels": _json({k: _label_info(v) for k, v in dataset.labels.items()}),
            "labels_fingerprint": labels_fingerprint(dataset),
            "dataset_provider": dataset_provider(dataset),
        }
        cache = cls(folder, {}, backbone, dataset, batch_size, workers)
        manifest, why = _read_manifest(folder / "manifest.json", want)
        rank, size = rank_and_size()
        if size > 1 and not all(gather(manifest is not None)):  # every rank uses it, or none
            manifest, why = None, why or "another rank cannot use it"
        if manifest is not None:
            cache.manifest = manifest
            return cache
        if why and rank == 0:
            _say(f"latent cache {folder}: {why}; rebuilding it")
        cache._encode_all(want, shard_size, progress)
        return cache

    def _encode_all(self, want: dict[str, Any], shard_size: int, progress: bool) -> None:
        rank, size = rank_and_size()
        if rank == 0:
            (self.folder / "manifest.json").unlink(missing_ok=True)  # no manifest until complete
        n = len(self.dataset)
        shard_size = max(1, shard_size)
        plan = [(start, min(shard_size, n - start)) for start in range(0, n, shard_size)]
        mine = [j for j in range(len(plan)) if j % size == rank]
        bar = tqdm(
            total=sum(plan[j][1] for j in mine),
            desc=f"encoding {self.folder.name}",
            unit="img",
            disable=not progress or rank != 0,
            leave=False,
        )
        entries = {j: self._write_shard(f"shard-{j:05d}.safetensors", *plan[j], bar) for j in mine}
        bar.close()
        if size > 1:
            entries = {j: e for part in gather(entries) for j, e in part.items()}
        shards = [entries[j] for j in range(len(plan))]
        self.manifest = {**want, "shards": shards}
        if rank == 0:
            keep = {s["file"] for s in shards}
            for old in self.folder.glob("shard-*.safetensors"):
                if old.name not in keep and _SHARD_NAME.fullmatch(old.name):
                    old.unlink(missing_ok=True)
            self._write_manifest()
        if size > 1:
            gather(None)  # the manifest exists before any rank goes on

    def _write_manifest(self) -> None:
        write_text(self.folder / "manifest.json", json.dumps(self.manifest, indent=1))

    def _latents(self, start: int, rows: int, bar: Any = None) -> Iterator[torch.Tensor]:
        """Latents of rows ``start .. start + rows`` of the dataset, batch by batch, checked."""
        bb, ds = self.backbone, self.dataset
        for first, x in image_batches(ds, start, rows, self.batch_size, self.workers):
            with torch.inference_mode():
                z = bb.encode(x.to(bb.device)).float().cpu()
            bad = ~(z.abs() <= LATENT_LIMIT).all(dim=1)
            if bad.any():
                raise FlowcondError(
                    f"backbone {self._hash[:12]} encodes {int(bad.sum())} image(s) of dataset "
                    f"{ds.spec.get('name')!r} ({ds.spec.get('split')}) to non-finite latents "
                    f"(or |z| > {LATENT_LIMIT:g}; first: image {first + int(bad.nonzero()[0])}); "
                    f"this backbone does not fit these images"
                )
            if bar is not None:
                bar.update(len(z))
            yield z

    def _write_shard(self, fname: str, start: int, rows: int, bar: Any = None) -> dict[str, Any]:
        """Encode and write one shard, streaming; returns its manifest entry."""
        labels = {k: v[start : start + rows] for k, v in self.dataset.labels.items()}
        header = {
            "kind": SHARD_KIND,
            "backbone_hash": self._hash,
            "dataset": _json(dict(self.dataset.spec)),
            "start": start,
            "rows": rows,
        }
        dim = self.backbone.latent_dim
        latents = self._latents(start, rows, bar)
        digest = write_shard(self.folder / fname, header, labels, rows, dim, latents)
        shapes = {f"label.{k}": [_dtype(v), list(v.shape)] for k, v in labels.items()}
        shapes["z"] = ["float32", [rows, dim]]
        entry = {"file": fname, "start": start, "rows": rows, "content_hash": digest, "shapes": shapes}
        return {**entry, "rank": rank_and_size()[0]}  # the process that encoded it

    # ------------------------------------------------------------------- load
    def load_shard(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latents ``(rows, latent_dim)`` and labels of shard ``i``, checked (see the module doc)."""
        shard = self._open(i)
        try:
            rows = self.manifest["shards"][i]["rows"]
            return torch.from_numpy(shard.block(0, rows, self.manifest["latent_dim"])), shard.labels
        finally:
            shard.close()

    def rows(self) -> LatentRows:
        """Every shard checked (and re-encoded if it fails) and kept open: ``rows[idx]`` reads
        latents from disk, ``rows.labels`` holds the labels. What attach trains on."""
        files: list[ShardFile] = []
        try:
            for i in range(len(self.manifest["shards"])):
                files.append(self._open(i))
        except BaseException:
            for f in files:
                f.close()
            raise
        labels = {k: torch.cat([f.labels[k] for f in files]) for k in self.manifest["labels"] if files}
        starts = [s["start"] for s in self.manifest["shards"]]
        return LatentRows(files, starts, self.manifest["latent_dim"], labels)

    def _open(self, i: int) -> ShardFile:
        """Shard ``i`` opened and checked; re-encoded first when it fails (with a backbone)."""
        entry = self.manifest["shards"][i]
        path = self.folder / entry["file"]
        try:
            return self._checked(path, entry)
        except Damaged as e:
            if self.backbone is None or self.dataset is None:
                raise FileFormatError(path, f"{e}; rebuild the cache with LatentCache.build") from None
            _say(f"latent cache {path}: {e}; re-encoding its {entry['rows']} rows")
            entry = self._write_shard(entry["file"], entry["start"], entry["rows"])
            self.manifest["shards"][i] = entry
            self._write_manifest()
        try:
            return self._checked(path, entry)
        except Damaged as e:
            raise FileFormatError(path, f"{e} right after re-encoding it") from None

    def load_all(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every latent and label in memory (fine for MNIST-size data)."""
        if not self.manifest["shards"]:
            dim = self.manifest.get("latent_dim", 0)
            return torch.zeros(0, dim), {k: torch.zeros(0) for k in self.manifest.get("labels", {})}
        zs, labels = [], {}
        for i in range(len(self.manifest["shards"])):
            z, lab = self.load_shard(i)
            zs.append(z)
            for k, v in lab.items():
                labels.setdefault(k, []).append(v)
        return torch.cat(zs), {k: torch.cat(v) for k, v in labels.items()}

    def _checked(self, path: Path, entry: dict[str, Any]) -> ShardFile:
        """Shard ``path`` opened, if every check passes (its labels in ``.labels``), else
        :class:`Damaged` saying why."""
        shard = ShardFile(path)
        try:
            self._check(shard, entry)
        except BaseException:
            shard.close()
            raise
        return shard

    def _check(self, shard: ShardFile, entry: dict[str, Any]) -> None:
        header = shard.header
        problem = shard.verify(entry["content_hash"], LATENT_LIMIT)  # the bytes against the hash
        if header.get("backbone_hash") != self._hash:
            raise Damaged(f"written for backbone {str(header.get('backbone_hash'))[:12]}")
        if header.get("dataset") != self.manifest["dataset"]:
            raise Damaged("written for another dataset")
        rows, start = entry["rows"], entry["start"]
        names = {"z", *(f"label.{k}" for k in self.manifest["labels"])}
        if set(shard.specs) != names:
            raise Damaged(f"holds tensors {sorted(shard.specs)}, expected {sorted(names)}")
        z = shard.specs["z"]
        want = (rows, self.manifest["latent_dim"])
        if z.dtype != "F32" or tuple(z.shape) != want:
            raise Damaged(f"latents are {z.dtype} {tuple(z.shape)}, expected F32 {want}")
        if problem:
            raise Damaged(problem)
        shard.labels = {}
        for k, info in self.manifest["labels"].items():
            t = shard.tensor(f"label.{k}")
            if _label_info(t) != info or len(t) != rows:
                raise Damaged(f"labels {k!r} are {t.dtype} {tuple(t.shape)}, expected {info} x {rows}")
            field = self.dataset.schema.get(k) if self.dataset is not None else None
            problem = label_problem(t, field, rows) if field is not None else None
            if problem:
                raise Damaged(f"labels {k!r} {problem}")
            if self.dataset is not None and not same_values(t, self.dataset.labels[k][start : start + rows]):
                raise Damaged(f"labels {k!r} differ from the dataset's")
            shard.labels[k] = t


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _label_info(t: torch.Tensor) -> dict[str, Any]:
    return {"dtype": _dtype(t), "shape": list(t.shape[1:])}


def _read_manifest(path: Path, want: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the manifest, "") when it is valid and made for ``want``; else (None, why not to use it),
    with an empty reason for a first build."""
    if not path.is_file():
        partial = any(path.parent.glob("shard-*.safetensors"))
        return None, "incomplete (no manifest: an earlier encoding was interrupted)" if partial else ""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, RecursionError, ValueError):  # JSONDecodeError too
        return None, "manifest.json is unreadable or not JSON"
    if not isinstance(manifest, dict):
        return None, "manifest.json is not a JSON object"
    if manifest.get("format") != CACHE_FORMAT:
        if "format" not in manifest:
            return None, "written by an older flowcond without content hashes"
        return None, f"cache format {manifest.get('format')!r}, this flowcond writes {CACHE_FORMAT}"
    changed = [k for k, v in want.items() if manifest.get(k) != v]
    if changed:
        return None, f"made for other data ({', '.join(changed)} differ)"
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not _valid_shards(shards, want["size"]):
        return None, "manifest.json lists its shards wrongly"
    return manifest, ""


def _valid_shards(shards: list[Any], size: int) -> bool:
    """Each shard a {file, start, rows, content_hash} entry, the rows contiguous and complete."""
    start = 0
    for s in shards:
        if not (
            isinstance(s, dict)
            and isinstance(s.get("file"), str)
            and _SHARD_NAME.fullmatch(s["file"])
            and s.get("start") == start
            and isinstance(s.get("rows"), int)
            and not isinstance(s.get("rows"), bool)
            and s["rows"] > 0
            and isinstance(s.get("content_hash"), str)
        ):
            return False
        start += s["rows"]
    return start == size and len({s["file"] for s in shards}) == len(shards)
