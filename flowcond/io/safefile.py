"""safetensors files with a typed JSON header: atomic writes, validation before use, content hashes.

Every file flowcond writes is a plain ``.safetensors`` file. Its string metadata holds one key,
``flowcond``, whose value is a JSON object with at least ``kind`` (``backbone``, ``heads``,
``checkpoint``, ...) and ``format_version``. Nothing is ever unpickled.

Reading and validating a header (:func:`read_header`) needs neither torch nor numpy, so that
``flowcond info FILE`` starts fast; the functions that handle tensors import torch when called.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowcond.errors import FileFormatError
from flowcond.io.atomic import atomic_write

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
_MAX_HEADER = 100_000_000


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, element counts and bytes of ``tensors`` in sorted name order.

    The shape hashed is the flattened one (``(numel,)``): that is how every file written so far
    was hashed, so it stays. Full shapes are checked when the weights are loaded into the model
    the config builds (``load_state_dict(strict=True)``).
    """
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_file(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` (imported on first use)."""
    from safetensors.torch import save_file as _save_file

    _save_file(tensors, filename, metadata=metadata)


def load_file(filename: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` (imported on first use)."""
    from safetensors.torch import load_file as _load_file

    return _load_file(filename)


def write(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Write ``tensors`` plus the JSON ``header`` atomically (temp file in the same folder, rename).

    ``format_version`` is always this flowcond's; ``header`` cannot override it.
    """
    header = {"format_version": FORMAT_VERSION, **{k: v for k, v in header.items() if k != "format_version"}}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"flowcond": json.dumps(header)})


def read_header(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read and validate the flowcond header without loading any tensor.

    Raises :class:`FileFormatError` naming the file for anything that is not a complete
    flowcond safetensors file of the expected ``kind`` and format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(path, "no such file" if not path.exists() else "not a regular file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise FileFormatError(path, f"not a safetensors file (only {len(head)} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER:
                raise FileFormatError(path, _not_safetensors_reason(head))
            if 8 + n > size:
                if head[:2] == b"PK" or head[:1] == b"\x80":
                    raise FileFormatError(path, _not_safetensors_reason(head))
                raise FileFormatError(
                    path, f"truncated: {size} bytes, the safetensors header alone needs {8 + n}"
                )
            raw = f.read(n)
    except OSError as e:
        raise FileFormatError(path, f"cannot be read ({e.strerror or e})") from None
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FileFormatError(path, "not a safetensors file (header is not JSON)") from None
    if not isinstance(meta, dict):
        raise FileFormatError(path, "not a safetensors file (header is not a JSON object)")
    end = 0
    for name, entry in meta.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise FileFormatError(path, f"corrupted safetensors header (entry {name!r})")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise FileFormatError(path, f"truncated: {size} bytes, the header promises {8 + n + end}")
    extra = meta.get("__metadata__")
    info = extra.get("flowcond") if isinstance(extra, dict) else None
    if info is None:
        raise FileFormatError(path, "safetensors file without a flowcond header (not written by flowcond)")
    try:
        header = json.loads(info)
    except (TypeError, json.JSONDecodeError):
        raise FileFormatError(path, "corrupted flowcond header (not JSON)") from None
    if not isinstance(header, dict):
        raise FileFormatError(path, "corrupted flowcond header (not a JSON object)")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise FileFormatError(
            path,
            f"format version {version!r} is not supported (this flowcond reads {FORMAT_VERSION})",
        )
    if kind is not None and header.get("kind") != kind:
        raise FileFormatError(path, f"is a {header.get('kind')!r} file, expected a {kind!r} file")
    return header


def read(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Validate the header, then load the tensors; checks the stored content hash if present."""
    from safetensors import SafetensorError

    header = read_header(path, kind)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FileFormatError(path, f"corrupted tensor data ({one_line(e)})") from None
    expected = header.get("content_hash")
    if expected is not None and content_hash(tensors) != expected:
        raise FileFormatError(path, "content hash mismatch: the weights are corrupted")
    return tensors, header


def one_line(e: BaseException) -> str:
    """An exception's message folded onto one line (at most 300 characters)."""
    return " ".join(str(e).split())[:300]


def load_weights(
    module: torch.nn.Module,
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike,
    against: str = "the config",
) -> None:
    """``module.load_state_dict(tensors, strict=True)``; a mismatch is a one-line FileFormatError."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise FileFormatError(path, f"weights do not match {against}: {one_line(e)}") from None


def _not_safetensors_reason(head: bytes) -> str:
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:2] == b"PK":
        return "not a safetensors file (looks like a pickle/torch.save file; flowcond never unpickles)"
    return "not a safetensors file (bad header length: truncated or another format)"
