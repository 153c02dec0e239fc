"""Latent cache: a dataset encoded once by a frozen backbone, as sharded safetensors with labels.

Layout: ``<cache_dir>/<backbone hash[:16]>/<dataset>-<split>/shard-00000.safetensors ...`` plus a
``manifest.json`` written last (atomically). Images are streamed through the backbone in batches
and never all held in memory.

Nothing in a cache is trusted. The manifest names the cache format, the backbone hash, the
dataset spec, size, label schema and a fingerprint of the labels, and lists every shard with its
first row, row count, shapes and content hash; each shard's header repeats its content hash, the
backbone hash and the dataset spec. :meth:`LatentCache.build` rebuilds a cache whose manifest is
missing, unreadable, of an older format or made for other data; :meth:`LatentCache.load_shard`
checks each shard it reads (content hash against the manifest, backbone, dataset, shapes and
dtypes, label ranges and equality with the dataset's own labels, finite latents of plausible
size) and re-encodes one that fails. Every rebuild says why in one line on stderr.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from flowcond.datasets import ImageDataset
from flowcond.errors import FileFormatError, FlowcondError
from flowcond.flow.backbone import Backbone
from flowcond.io import safefile
from flowcond.io.atomic import write_text
from flowcond.io.cache import cache_root
from flowcond.training import check_labels, label_problem, labels_fingerprint

SHARD_KIND = "latent-shard"
#: version of the manifest and shard layout; caches of another version are rebuilt
CACHE_FORMAT = 2
#: standardized latents of a working flow are O(1), but its inverse can explode on an unseen image
#: (the shipped MNIST-5k backbone encodes one test digit to a latent of norm 1e8); a cached latent
#: above this is damage, not data
LATENT_LIMIT = 1e20
_SHARD_NAME = re.compile(r"shard-\d{5}\.safetensors")


def default_cache_dir() -> Path:
    """``$FLOWCOND_CACHE`` or ``~/.cache/flowcond``, plus ``latents``."""
    return cache_root() / "latents"


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
    ) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.backbone = backbone
        self.dataset = dataset
        self.batch_size = batch_size
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
    ) -> LatentCache:
        """Return the cache for (backbone, dataset), encoding it first if needed.

        Labels of ``dataset`` that do not fit its schema are a :class:`ConfigError`.
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
        }
        cache = cls(folder, {}, backbone, dataset, batch_size)
        manifest, why = _read_manifest(folder / "manifest.json", want)
        if manifest is not None:
            cache.manifest = manifest
            return cache
        if why:
            _say(f"latent cache {folder}: {why}; rebuilding it")
        cache._encode_all(want, shard_size, progress)
        return cache

    def _encode_all(self, want: dict[str, Any], shard_size: int, progress: bool) -> None:
        (self.folder / "manifest.json").unlink(missing_ok=True)  # no manifest until complete
        n = len(self.dataset)
        shard_size = max(1, shard_size)
        shards = []
        bar = tqdm(
            total=n, desc=f"encoding {self.folder.name}", unit="img", disable=not progress, leave=False
        )
        for start in range(0, n, shard_size):
            rows = min(shard_size, n - start)
            entry, _ = self._write_shard(f"shard-{len(shards):05d}.safetensors", start, rows, bar)
            shards.append(entry)
        bar.close()
        keep = {s["file"] for s in shards}
        for old in self.folder.glob("shard-*.safetensors"):
            if old.name not in keep and _SHARD_NAME.fullmatch(old.name):
                old.unlink(missing_ok=True)
        self.manifest = {**want, "shards": shards}
        self._write_manifest()

    def _write_manifest(self) -> None:
        write_text(self.folder / "manifest.json", json.dumps(self.manifest, indent=1))

    def _encode(self, start: int, rows: int, bar: Any = None) -> dict[str, torch.Tensor]:
        """Latents and labels of rows ``start .. start + rows`` of the dataset, checked."""
        bb, ds = self.backbone, self.dataset
        zs = []
        with torch.inference_mode():
            for i in range(start, start + rows, self.batch_size):
                stop = min(i + self.batch_size, start + rows)
                zs.append(bb.encode(ds.images_at(slice(i, stop)).to(bb.device)).float().cpu())
                if bar is not None:
                    bar.update(stop - i)
        z = torch.cat(zs) if zs else torch.zeros(0, bb.latent_dim)
        bad = ~(z.abs() <= LATENT_LIMIT).all(dim=1)
        if bad.any():
            raise FlowcondError(
                f"backbone {self._hash[:12]} encodes {int(bad.sum())} image(s) of dataset "
                f"{ds.spec.get('name')!r} ({ds.spec.get('split')}) to non-finite latents "
                f"(or |z| > {LATENT_LIMIT:g}; first: image {start + int(bad.nonzero()[0])}); this "
                f"backbone does not fit these images"
            )
        tensors = {"z": z.contiguous()}
        for k, v in ds.labels.items():
            tensors[f"label.{k}"] = v[start : start + rows].contiguous()
        return tensors

    def _write_shard(
        self, fname: str, start: int, rows: int, bar: Any = None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Encode and write one shard; returns its manifest entry and its tensors."""
        tensors = self._encode(start, rows, bar)
        digest = safefile.content_hash(tensors)
        header = {
            "kind": SHARD_KIND,
            "backbone_hash": self._hash,
            "dataset": _json(dict(self.dataset.spec)),
            "start": start,
            "rows": rows,
            "content_hash": digest,
        }
        safefile.write(self.folder / fname, tensors, header)
        shapes = {k: [str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in tensors.items()}
        entry = {"file": fname, "start": start, "rows": rows, "content_hash": digest, "shapes": shapes}
        return entry, tensors

    # ------------------------------------------------------------------- load
    def load_shard(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latents ``(rows, latent_dim)`` and labels of shard ``i``, checked (see the module doc)."""
        entry = self.manifest["shards"][i]
        path = self.folder / entry["file"]
        try:
            tensors = self._verified(path, entry)
        except _Damaged as e:
            if self.backbone is None or self.dataset is None:
                raise FileFormatError(path, f"{e}; rebuild the cache with LatentCache.build") from None
            _say(f"latent cache {path}: {e}; re-encoding its {entry['rows']} rows")
            self.manifest["shards"][i], tensors = self._write_shard(
                entry["file"], entry["start"], entry["rows"]
            )
            self._write_manifest()
        labels = {k[6:]: v for k, v in tensors.items() if k.startswith("label.")}
        return tensors["z"], labels

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

    def _verified(self, path: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The tensors of shard ``path`` if every check passes, else :class:`_Damaged` (why)."""
        if not path.is_file():
            raise _Damaged("missing")
        try:
            header = safefile.read_header(path, SHARD_KIND)
            if header.get("content_hash") != entry["content_hash"]:
                raise _Damaged("content hash differs from the manifest's (the shard was changed)")
            tensors, _ = safefile.read(path, SHARD_KIND)  # checks the bytes against the hash
        except FileFormatError as e:
            raise _Damaged(e.problem) from None
        if header.get("backbone_hash") != self._hash:
            raise _Damaged(f"written for backbone {str(header.get('backbone_hash'))[:12]}")
        if header.get("dataset") != self.manifest["dataset"]:
            raise _Damaged("written for another dataset")
        rows, start = entry["rows"], entry["start"]
        names = {"z", *(f"label.{k}" for k in self.manifest["labels"])}
        if set(tensors) != names:
            raise _Damaged(f"holds tensors {sorted(tensors)}, expected {sorted(names)}")
        z = tensors["z"]
        want = (rows, self.manifest["latent_dim"])
        if z.dtype != torch.float32 or tuple(z.shape) != want:
            raise _Damaged(f"latents are {z.dtype} {tuple(z.shape)}, expected torch.float32 {want}")
        if not (z.abs() <= LATENT_LIMIT).all():
            raise _Damaged(f"latents are non-finite or implausibly large (|z| > {LATENT_LIMIT:g})")
        for k, info in self.manifest["labels"].items():
            t = tensors[f"label.{k}"]
            if _label_info(t) != info or len(t) != rows:
                raise _Damaged(f"labels {k!r} are {t.dtype} {tuple(t.shape)}, expected {info} x {rows}")
            field = self.dataset.schema.get(k) if self.dataset is not None else None
            problem = label_problem(t, field, rows) if field is not None else None
            if problem:
                raise _Damaged(f"labels {k!r} {problem}")
            if self.dataset is not None and not _same(t, self.dataset.labels[k][start : start + rows]):
                raise _Damaged(f"labels {k!r} differ from the dataset's")
        return tensors


class _Damaged(Exception):
    """Why a shard cannot be used."""


def _label_info(t: torch.Tensor) -> dict[str, Any]:
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape[1:])}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and values (NaN equal to NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


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
