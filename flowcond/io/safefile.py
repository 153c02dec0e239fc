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
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowcond.errors import FileFormatError
from flowcond.io.atomic import atomic_write
from flowcond.io.layout import (  # noqa: F401  (re-exported: the file API lives here)
    DTYPE_SIZES,
    TensorSpec,
    _short,
    check_layout,
    dtype_name,
    meta_specs,
    specs_of,
)

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
_MAX_HEADER = 100_000_000
#: deepest JSON nesting accepted in a header (flowcond writes at most about 6 levels)
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_JSON_PAIR = re.compile(r"\[\]|\{\}")
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


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
    return read_layout(path, kind)[0]


def read_layout(
    path: str | os.PathLike, kind: str | None = None
) -> tuple[dict[str, Any], dict[str, TensorSpec]]:
    """:func:`read_header` plus the dtype and shape of every tensor, without loading any.

    Every tensor entry is checked: a known dtype, a shape of non-negative integers, and data
    offsets inside the file whose length is exactly what dtype and shape need.
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
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FileFormatError(path, "not a safetensors file (header is not UTF-8 JSON)") from None
    meta = loads(text, path, "safetensors header")
    if not isinstance(meta, dict):
        raise FileFormatError(path, "not a safetensors file (header is not a JSON object)")
    specs: dict[str, TensorSpec] = {}
    end = 0
    for name, entry in meta.items():
        if name == "__metadata__":
            continue
        spec, offsets = _tensor_entry(path, name, entry)
        specs[name] = spec
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise FileFormatError(path, f"truncated: {size} bytes, the header promises {8 + n + end}")
    extra = meta.get("__metadata__")
    info = extra.get("flowcond") if isinstance(extra, dict) else None
    if info is None:
        raise FileFormatError(path, "safetensors file without a flowcond header (not written by flowcond)")
    if not isinstance(info, str):
        raise FileFormatError(path, "corrupted flowcond header (not a JSON string)")
    header = loads(info, path, "flowcond header")
    if not isinstance(header, dict):
        raise FileFormatError(path, "corrupted flowcond header (not a JSON object)")
    version = header.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise FileFormatError(
            path,
            f"format version {_short(version)} is not supported (this flowcond reads {FORMAT_VERSION})",
        )
    if kind is not None and header.get("kind") != kind:
        raise FileFormatError(path, f"is a {_short(header.get('kind'))} file, expected a {kind!r} file")
    return header, specs


def _tensor_entry(path: Path, name: str, entry: Any) -> tuple[TensorSpec, list[int]]:
    """The spec and data offsets of one safetensors header entry; FileFormatError naming it."""
    if not isinstance(entry, dict):
        raise FileFormatError(path, f"corrupted safetensors header (entry {_short(name)})")
    offsets, dtype, shape = entry.get("data_offsets"), entry.get("dtype"), entry.get("shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise FileFormatError(path, f"corrupted safetensors header (entry {_short(name)})")
    if dtype not in DTYPE_SIZES:
        raise FileFormatError(
            path, f"corrupted safetensors header (entry {_short(name)}: dtype {_short(dtype)})"
        )
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise FileFormatError(
            path, f"corrupted safetensors header (entry {_short(name)}: shape {_short(shape)})"
        )
    if math.prod(shape) * DTYPE_SIZES[dtype] != offsets[1] - offsets[0]:
        raise FileFormatError(
            path,
            f"corrupted safetensors header (entry {_short(name)}: shape {shape} of {dtype} does "
            f"not fit its {offsets[1] - offsets[0]} bytes)",
        )
    return TensorSpec(dtype, tuple(shape)), offsets


def loads(text: str | bytes, path: str | os.PathLike, what: str = "JSON") -> Any:
    """``json.loads`` of text read from the file ``path``; anything wrong (not JSON, nested deeper
    than :data:`MAX_JSON_DEPTH`, an integer too long to parse) is a FileFormatError naming it.

    The depth is checked first, without recursion, so that no nesting raises RecursionError.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise FileFormatError(path, f"corrupted {what} (not UTF-8)") from None
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise FileFormatError(path, f"corrupted {what} (JSON nested deeper than {MAX_JSON_DEPTH} levels)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, integers too long to convert
        kind = "not JSON" if isinstance(e, json.JSONDecodeError) else one_line(e)[:80]
        raise FileFormatError(path, f"corrupted {what} ({kind})") from None


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of the brackets of JSON ``text`` (strings skipped), computed without
    recursion; ``limit + 1`` as soon as it is known to be deeper than ``limit``."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    if "[" * (limit + 1) in brackets or "{" * (limit + 1) in brackets:
        return limit + 1
    depth = 0
    while brackets:
        if depth > limit:
            return depth
        shorter = _JSON_PAIR.sub("", brackets)
        if shorter == brackets:  # unbalanced brackets: json.loads says where
            break
        brackets = shorter
        depth += 1
    return depth


def read(
    path: str | os.PathLike,
    kind: str | None = None,
    expected: Mapping[str, TensorSpec] | None = None,
    against: str = "the config",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Validate the header, then load the tensors; checks the stored content hash if present.

    With ``expected`` (tensor names, dtypes and shapes), the file's tensors are checked against
    it (:func:`check_layout`) before any data is read.
    """
    from safetensors import SafetensorError

    header, specs = read_layout(path, kind)
    if expected is not None:
        check_layout(path, specs, expected, against)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as e:
        raise FileFormatError(path, f"corrupted tensor data ({one_line(e)})") from None
    if set(tensors) != set(specs):  # the file changed between the two reads
        raise FileFormatError(path, "changed while being read")
    digest = header.get("content_hash")
    if digest is not None and content_hash(tensors) != digest:
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
    except (RuntimeError, ValueError, TypeError) as e:
        raise FileFormatError(path, f"weights do not match {against}: {one_line(e)}") from None


def _not_safetensors_reason(head: bytes) -> str:
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:2] == b"PK":
        return "not a safetensors file (looks like a pickle/torch.save file; flowcond never unpickles)"
    return "not a safetensors file (bad header length: truncated or another format)"
