"""Latent shards on disk, streamed: written batch by batch, verified and read in chunks.

A shard is an ordinary safetensors file (``flowcond info`` reads it) holding ``label.<field>``
tensors and the latents ``z`` ``(rows, D)`` float32. :func:`write_shard` writes it without ever
holding all of ``z``: the header is written first with a placeholder content hash of the same
length, the latents are appended batch by batch while the hash (the one
:func:`flowcond.io.safefile.content_hash` computes) is updated, and the header is rewritten with
the real hash before the atomic rename. :class:`ShardFile` verifies a shard in chunks, then
reads rows through a read-only memory map of the file it verified (the descriptor stays open,
so a file replaced afterwards is not read), dropping the mapped pages every
:data:`RESIDENT_BYTES`: a batch of rows costs its own size, not the shard's.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowcond.errors import FileFormatError
from flowcond.io import safefile
from flowcond.io.atomic import atomic_write

#: safetensors dtype names of the tensors a shard holds
_DTYPES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_NUMPY = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}
_NUMPY.update({"I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_})
_CHUNK = 8 << 20  # bytes read at a time when verifying
#: bytes of rows read through a shard's memory map before its pages are dropped from memory
RESIDENT_BYTES = 64 << 20


class Damaged(Exception):
    """Why a shard cannot be used (one line)."""


def _hash_prefix(name: str, dtype: torch.dtype, numel: int) -> bytes:
    return f"{name}|{dtype}|{(numel,)}|".encode()


def write_shard(
    path: Path,
    header: dict[str, Any],
    labels: dict[str, torch.Tensor],
    rows: int,
    dim: int,
    batches: Iterable[torch.Tensor],
) -> str:
    """Write a shard of ``rows`` latents (from ``batches``, float32 ``(b, dim)`` each) and
    ``labels``; returns its content hash (also in its header as ``content_hash``)."""
    tensors = {f"label.{k}": v.detach().cpu().contiguous() for k, v in labels.items()}
    names = sorted([*tensors, "z"])  # the content hash's order; the data are written in it too
    entries, offset = {}, 0
    for name in names:
        if name == "z":
            dtype, shape, size = torch.float32, [rows, dim], rows * dim * 4
        else:
            t = tensors[name]
            if t.dtype not in _DTYPES:
                raise ValueError(f"labels {name!r} of dtype {t.dtype} cannot go into a latent shard")
            dtype, shape, size = t.dtype, list(t.shape), t.numel() * t.element_size()
        entries[name] = {"dtype": _DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size

    def header_bytes(digest: str) -> bytes:
        meta = {
            "flowcond": json.dumps(
                {"format_version": safefile.FORMAT_VERSION, **header, "content_hash": digest}
            )
        }
        raw = json.dumps({**entries, "__metadata__": meta}).encode()
        return raw + b" " * (-len(raw) % 8)

    placeholder = header_bytes("0" * 64)
    h = hashlib.sha256()
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(placeholder)) + placeholder)
        for name in names:
            if name != "z":
                t = tensors[name]
                data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
                h.update(_hash_prefix(name, t.dtype, t.numel()) + data)
                f.write(data)
                continue
            h.update(_hash_prefix("z", torch.float32, rows * dim))
            written = 0
            for batch in batches:
                data = batch.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
                h.update(data)
                f.write(data)
                written += batch.shape[0]
                del data, batch
                release_freed_memory()
            if written != rows:
                raise RuntimeError(f"shard {path.name}: got {written} latent rows, expected {rows}")
        digest = h.hexdigest()
        final = header_bytes(digest)
        assert len(final) == len(placeholder)  # a sha256 hex digest is always 64 characters
        f.seek(8)
        f.write(final)
    return digest


class ShardFile:
    """One shard opened for checking and reading rows (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._z: np.ndarray | None = None
        self._resident = 0
        self.labels: dict[str, torch.Tensor] = {}  # filled by whoever checks them
        if not self.path.is_file():
            raise Damaged("missing")
        try:
            self.header, self.specs = safefile.read_layout(self.path, "latent-shard")
        except FileFormatError as e:
            raise Damaged(e.problem) from None
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            (n,) = struct.unpack("<Q", os.pread(self._fd, 8, 0))
            meta = json.loads(os.pread(self._fd, n, 8))
            self._base = 8 + n
            self._offsets = {k: v["data_offsets"] for k, v in meta.items() if k != "__metadata__"}
            self._dtypes = {k: v["dtype"] for k, v in meta.items() if k != "__metadata__"}
        except (ValueError, OSError, struct.error) as e:
            self.close()
            raise Damaged(f"changed while being read ({type(e).__name__})") from None

    def close(self) -> None:
        self._z = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a caller still holds a view
                pass
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def _read(self, start: int, size: int) -> bytes:
        data = os.pread(self._fd, size, self._base + start)
        if len(data) != size:
            raise Damaged(f"truncated: read {len(data)} of {size} bytes")
        return data

    def tensor(self, name: str) -> torch.Tensor:
        """A whole (small) tensor of the shard, e.g. its labels."""
        a, b = self._offsets[name]
        spec = self.specs[name]
        dtype = _NUMPY.get(self._dtypes[name])
        if dtype is None:
            raise Damaged(f"tensor {name!r} has dtype {self._dtypes[name]}")
        array = np.frombuffer(bytearray(self._read(a, b - a)), dtype=dtype).reshape(spec.shape)
        return torch.from_numpy(array)

    def verify(self, digest: str, limit: float) -> str | None:
        """Damaged unless the header and the bytes hash to ``digest`` (the manifest's); returns
        what is wrong with the latents (non-finite, or ``|z| > limit``), checked a few MB at a
        time, or None."""
        if self.header.get("content_hash") != digest:
            raise Damaged("content hash differs from the manifest's (the shard was changed)")
        h = hashlib.sha256()
        problem = None
        for name in sorted(self._offsets):
            a, b = self._offsets[name]
            spec = self.specs[name]
            numel = int(np.prod(spec.shape)) if spec.shape else 1
            dtype_name = f"torch.{_torch_name(self._dtypes[name])}"
            h.update(f"{name}|{dtype_name}|{(numel,)}|".encode())
            row = (b - a) // max(spec.shape[0], 1) if spec.shape else b - a
            step = max(row, (_CHUNK // max(row, 1)) * row)
            for pos in range(a, b, step):
                data = self._read(pos, min(step, b - pos))
                h.update(data)
                if name == "z" and problem is None and self._dtypes[name] == "F32":
                    if not (np.abs(np.frombuffer(data, dtype=np.float32)) <= limit).all():
                        problem = f"latents are non-finite or implausibly large (|z| > {limit:g})"
        if h.hexdigest() != digest:
            raise Damaged("content hash mismatch: the weights are corrupted")
        return problem

    def rows(self, local: np.ndarray, dim: int) -> np.ndarray:
        """Latent rows ``local`` (any order) as float32 ``(len(local), dim)``, copied out of a
        read-only memory map of the file; after :data:`RESIDENT_BYTES` read, the mapped pages
        are dropped again (``MADV_DONTNEED``), so the process's resident memory stays bounded."""
        if self._z is None:
            a, b = self._offsets["z"]
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
            if len(self._map) < self._base + b:
                raise Damaged("truncated while open")
            self._z = np.frombuffer(self._map, np.float32, (b - a) // 4, self._base + a).reshape(-1, dim)
        out = self._z[local]
        self._resident += out.nbytes
        if self._resident > RESIDENT_BYTES and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)
            self._resident = 0
        return out

    def block(self, start: int, stop: int, dim: int) -> np.ndarray:
        """Latent rows ``start .. stop`` in one read."""
        a, _ = self._offsets["z"]
        width = dim * 4
        data = bytearray(self._read(a + start * width, (stop - start) * width))
        return np.frombuffer(data, dtype=np.float32).reshape(stop - start, dim)


def _torch_name(st: str) -> str:
    """torch's name of a safetensors dtype (how the content hash spells it)."""
    return {v: str(k).removeprefix("torch.") for k, v in _DTYPES.items()}.get(st, st.lower())


class LatentRows:
    """Every latent of a cache, read from its checked, open shards on demand.

    ``rows[idx]`` (an index tensor) returns float32 latents ``(len(idx), D)`` read from disk;
    ``labels`` holds every label in memory (small); :meth:`head` reads the first rows in blocks.
    """

    def __init__(self, files: list[ShardFile], starts: list[int], dim: int, labels: dict) -> None:
        self.files, self.dim, self.labels = files, dim, labels
        self._starts = np.asarray(starts, dtype=np.int64)
        self._n = int(len(next(iter(labels.values())))) if labels else 0
        if not labels and files:
            self._n = int(self._starts[-1] + files[-1].specs["z"].shape[0])

    def __len__(self) -> int:
        return self._n

    def norms(self, chunk: int = 1024) -> torch.Tensor:
        """The L2 norm of every latent ``(N,)`` (float64), read shard by shard in ``chunk`` rows."""
        out = []
        for f in self.files:
            rows = f.specs["z"].shape[0]
            for start in range(0, rows, chunk):
                block = f.block(start, min(start + chunk, rows), self.dim)
                out.append(np.linalg.norm(block.astype(np.float64), axis=1))
        return torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0, dtype=torch.float64)

    def __getitem__(self, idx: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
        index = np.asarray(idx.cpu() if torch.is_tensor(idx) else idx, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= self._n):
            raise IndexError(f"latent rows {index.min()}..{index.max()} outside 0..{self._n - 1}")
        out = np.empty((len(index), self.dim), dtype=np.float32)
        shard = np.searchsorted(self._starts, index, side="right") - 1
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            out[where] = self.files[s].rows(index[where] - self._starts[s], self.dim)
        return torch.from_numpy(out)

    def head(self, n: int) -> torch.Tensor:
        """The first ``min(n, len(self))`` latents."""
        parts, left = [], min(n, self._n)
        for f in self.files:
            if left <= 0:
                break
            take = min(left, f.specs["z"].shape[0])
            parts.append(torch.from_numpy(f.block(0, take, self.dim)))
            left -= take
        return torch.cat(parts) if parts else torch.zeros(0, self.dim)

    def close(self) -> None:
        for f in self.files:
            f.close()


def image_batches(
    dataset: Any, start: int, rows: int, batch_size: int, workers: int
) -> Iterable[tuple[int, torch.Tensor]]:
    """``(first row, images)`` for rows ``start .. start + rows`` of ``dataset`` in batches.

    Lazily loaded images are decoded by ``workers`` DataLoader worker processes (0: in this
    process); images held in a tensor are sliced. An error a worker raises while decoding is
    re-raised here as one line.
    """
    from flowcond.errors import ConfigError

    if not callable(dataset.images) or workers <= 0:
        for i in range(start, start + rows, batch_size):
            yield i, dataset.images_at(slice(i, min(i + batch_size, start + rows)))
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_Rows(dataset.images, start, rows), batch_size=batch_size, num_workers=workers)
    first = start
    try:
        for x in loader:
            yield first, x
            first += len(x)
    except ConfigError as e:  # the worker's traceback is in the message: keep its last line
        last = str(e).strip().splitlines()[-1]
        raise ConfigError(last.split("ConfigError: ", 1)[-1]) from None


class _Rows(torch.utils.data.Dataset):
    """Images ``start .. start + rows`` of a lazy ``images(i)`` callable."""

    def __init__(self, images: Callable[[int], torch.Tensor], start: int, rows: int) -> None:
        self.images, self.start, self.rows = images, start, rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images(self.start + i)


def default_workers(dataset: Any) -> int:
    """DataLoader workers decoding a dataset's images: none for images in memory, else up to 4,
    leaving a core free."""
    if dataset is None or not callable(dataset.images):
        return 0
    import multiprocessing
    import pickle

    if multiprocessing.get_context().get_start_method() != "fork":
        try:  # spawned workers get the loader by pickling (a lambda cannot be)
            pickle.dumps(dataset.images)
        except Exception:
            return 0
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes under torchrun; ``(0, 1)`` otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (a collective: every rank must call it)."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and values (NaN equal to NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def release_freed_memory() -> None:
    """Hand the heap memory freed by the last batch back to the OS (glibc's ``malloc_trim``; a
    no-op elsewhere). Without it, the batches received from DataLoader workers leave the heap
    fragmented and the resident memory of encoding creeps up with the data (measured:
    +100 MiB over 16 batches of 256 64x64 images; flat with it)."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None
