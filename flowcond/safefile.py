"""safetensors files with a typed JSON header: atomic writes, validation before use, content hashes.

Every file flowcond writes is a plain ``.safetensors`` file. Its string metadata holds one key,
``flowcond``, whose value is a JSON object with at least ``kind`` (``backbone``, ``heads``,
``checkpoint``, ...) and ``format_version``. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import FileFormatError

FORMAT_VERSION = 1
_MAX_HEADER = 100_000_000


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Write ``tensors`` plus the JSON ``header`` atomically (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format_version": FORMAT_VERSION, **header}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"flowcond": json.dumps(header)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_header(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read and validate the flowcond header without loading any tensor.

    Raises :class:`FileFormatError` naming the file for anything that is not a complete
    flowcond safetensors file of the expected ``kind`` and format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(path, "no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FileFormatError(path, "not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > _MAX_HEADER or 8 + n > size:
            raise FileFormatError(path, _not_safetensors_reason(head))
        raw = f.read(n)
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FileFormatError(path, "not a safetensors file (header is not JSON)") from None
    if not isinstance(meta, dict):
        raise FileFormatError(path, "not a safetensors file (header is not a JSON object)")
    ends = [v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    if 8 + n + max(ends, default=0) > size:
        raise FileFormatError(path, f"truncated: {size} bytes, header promises {8 + n + max(ends)}")
    info = (meta.get("__metadata__") or {}).get("flowcond")
    if info is None:
        raise FileFormatError(path, "safetensors file without a flowcond header (not written by flowcond)")
    try:
        header = json.loads(info)
    except json.JSONDecodeError:
        raise FileFormatError(path, "corrupted flowcond header (not JSON)") from None
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise FileFormatError(
            path, f"format version {version!r} is not supported (this flowcond reads {FORMAT_VERSION})"
        )
    if kind is not None and header.get("kind") != kind:
        raise FileFormatError(path, f"is a {header.get('kind')!r} file, expected a {kind!r} file")
    return header


def read(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Validate the header, then load the tensors; checks the stored content hash if present."""
    header = read_header(path, kind)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FileFormatError(path, f"corrupted tensor data ({e})") from None
    expected = header.get("content_hash")
    if expected is not None and content_hash(tensors) != expected:
        raise FileFormatError(path, "content hash mismatch: the weights are corrupted")
    return tensors, header


def _not_safetensors_reason(head: bytes) -> str:
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:2] == b"PK":
        return "not a safetensors file (looks like a pickle/torch.save file; flowcond never unpickles)"
    return "not a safetensors file (bad header length: truncated or another format)"
