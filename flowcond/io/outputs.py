"""The output rule: where a command may write, checked before it does any work.

Every command that writes goes through :func:`check_outputs` (the CLI) or at least
:func:`check_locations` (the library's trainers):

1. **Writable.** Each output location is checked before any work: a missing parent must be
   creatable, a parent must be a folder, the target must not be an existing folder (or, for a
   folder output, an existing file), each name must fit the filesystem, and a real probe file
   must be creatable in the nearest existing folder (``/proc/...``, read-only mounts and
   permissions all fail here). An error names the option and the path.
2. **Never over an input.** No output is one of the command's inputs (same resolved path, or
   ``os.path.samefile`` when both exist: symlinks and hard links count). ``--force`` does not
   lift this: writing over an input always destroys it.
3. **Outputs are distinct.** The main output and the paths derived from it (the sample grid of
   ``train-backbone``, the ``OUT.ckpt.safetensors`` checkpoint) never coincide.
4. **Nothing of another kind is replaced** without ``--force``: an existing flowcond file is
   replaced only by a file of its own kind (a heads file never replaces a backbone), an existing
   other file only by one of its own type (a PNG by a PNG, an ``.npz`` by an ``.npz``). Empty
   files may always be replaced.

torch-free: the CLI checks before it imports torch.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flowcond.errors import ConfigError, FileFormatError
from flowcond.io.cache import cache_root
from flowcond.io.safefile import read_header

PathLike = str | os.PathLike

_PNG = b"\x89PNG\r\n\x1a\n"

#: how existing files and outputs are named in messages
_DESCRIBE = {
    "png": "PNG image",
    "npz": "NumPy .npz archive",
    "zip": "zip archive (not an .npz of arrays)",
    "safetensors": "safetensors file not written by flowcond",
    "damaged": "damaged or truncated safetensors file",
    "unknown": "file of unknown type",
    "folder": "folder",
}


@dataclass(frozen=True)
class Output:
    """One location a command writes: ``path``, what the user calls it (``option``: ``--out``,
    ``--samples``, ``the checkpoint``) and the ``kind`` written there: a flowcond file kind
    (``backbone``, ``heads``, ``backbone-checkpoint``...), ``png``, ``npz`` or ``folder``."""

    path: Path
    option: str
    kind: str

    def __init__(self, path: PathLike, option: str, kind: str) -> None:
        object.__setattr__(self, "path", Path(path))
        object.__setattr__(self, "option", option)
        object.__setattr__(self, "kind", kind)


def describe(kind: str) -> str:
    return _DESCRIBE.get(kind, f"flowcond {kind} file")


# ------------------------------------------------------------------ the checks
def check_outputs(
    outputs: Sequence[Output],
    inputs: Mapping[str, PathLike | None] | None = None,
    force: bool = False,
) -> None:
    """The whole output rule (see the module docstring); ``force`` lifts only rule 4.

    ``inputs`` maps how the user names each input (``--backbone``, ``HEADS``) to its path
    (``None``: not given). Raises a one-line :class:`ConfigError`.
    """
    check_locations(
        {o.option: o.path for o in outputs}, inputs, folders=[o.option for o in outputs if o.kind == "folder"]
    )
    if force:
        return
    for o in outputs:
        if o.kind == "folder":
            continue
        found = existing_kind(o.path)
        if found in (None, "empty", o.kind):
            continue
        raise ConfigError(
            f"{o.option} {o.path}: there is a {describe(found)} there, not a {describe(o.kind)}; "
            f"refusing to replace it (choose another {_main(o.option)}, or pass --force to replace it)"
        )


def check_locations(
    outputs: Mapping[str, PathLike | None],
    inputs: Mapping[str, PathLike | None] | None = None,
    folders: Sequence[str] = (),
) -> None:
    """The part of the output rule no ``--force`` lifts: every output (``{option: path}``,
    ``None`` skipped) writable, distinct from the other outputs and from every input.

    For the library's writers, e.g. ``check_locations({"out": out, "checkpoint": ckpt},
    {"backbone": backbone_path})``. The options in ``folders`` are folders, not files.
    """
    given = {k: Path(v) for k, v in outputs.items() if v is not None}
    for option, path in given.items():
        check_writable(path, option, folder=option in folders)
    names = list(given)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if same_path(given[a], given[b]):
                raise ConfigError(
                    f"{a} {given[a]} and {b} {given[b]} are the same file: one would overwrite "
                    f"the other; choose another {_main(a if a.startswith('-') else b)}"
                )
    for option, path in given.items():
        for name, source in (inputs or {}).items():
            if source is not None and same_path(path, source):
                raise ConfigError(
                    f"{option} {path} is the input {name} {source}: writing there would destroy "
                    f"it; choose another {_main(option)}"
                )


def check_writable(path: PathLike, option: str, folder: bool = False) -> Path:
    """Raise a one-line :class:`ConfigError` naming ``option`` unless ``path`` can be written
    (a file, or a folder when ``folder``); creates nothing that stays."""
    raw = str(path)
    if not raw.strip():
        raise ConfigError(f"{option}: empty path")
    if "\0" in raw:
        raise ConfigError(f"{option} {raw!r}: the path contains a NUL character")
    p = Path(os.path.abspath(raw))
    shown = raw if len(raw) <= 100 else raw[:60] + "..." + raw[-20:]
    where = f"{option}={shown}" if option.isupper() else f"{option} {shown}"
    limit = _name_max(Path(p.anchor))
    for name in p.parts[1:]:
        size = len(os.fsencode(name))
        if size > limit:
            raise ConfigError(f"{where}: the name {name[:40]}... is too long ({size} bytes; at most {limit})")
    try:
        if p.is_dir() and not folder:
            raise ConfigError(f"{where}: is an existing folder, not a file")
        if folder and p.exists() and not p.is_dir():
            raise ConfigError(f"{where}: is an existing file, not a folder")
        existing = p if folder and p.is_dir() else p.parent
        while not existing.exists():
            if existing.is_symlink():
                raise ConfigError(f"{where}: {existing} is a broken symbolic link")
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(f"{where}: {existing} is a file, not a folder")
    except OSError as e:  # a path too long, a permission denied on the way...
        raise ConfigError(f"{where}: cannot be written ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".flowcond-probe-", dir=existing)
    except OSError as e:
        raise ConfigError(f"{where}: cannot write in {existing} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
    return p


def check_cache_dir(path: PathLike | None, option: str = "--cache-dir") -> None:
    """A cache folder (``path``, else ``$FLOWCOND_CACHE``, else ``~/.cache/flowcond``) must be
    a writable folder; the error names the option or the environment variable."""
    if path is not None:
        check_writable(path, option, folder=True)
    elif os.environ.get("FLOWCOND_CACHE"):
        check_writable(os.environ["FLOWCOND_CACHE"], "FLOWCOND_CACHE", folder=True)
    else:
        check_writable(cache_root(), "the default cache folder", folder=True)


def require_suffix(path: PathLike, option: str, suffixes: Sequence[str], what: str) -> Path:
    """``path`` must end in one of ``suffixes`` (case-insensitive): a one-line error otherwise."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {path}: {what} must end in {' or '.join(suffixes)}")
    return p


# ----------------------------------------------------------------- utilities
def checkpoint_path(out: PathLike) -> Path:
    """Where the checkpoint of a run writing ``OUT.safetensors`` goes: ``OUT.ckpt.safetensors``
    (the one naming rule, used by every trainer and by the CLI's checks)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".ckpt.safetensors")


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same file: same resolved path, or ``samefile``."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
    except (OSError, RuntimeError):  # symlink loops
        pass
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def existing_kind(path: PathLike) -> str | None:
    """What is at ``path`` now: ``None`` (nothing), ``empty``, ``folder``, a flowcond kind
    (``backbone``, ``heads``...), ``safetensors`` (not flowcond's), ``damaged``, ``png``,
    ``npz``, ``zip`` or ``unknown``."""
    p = Path(path)
    if not p.exists():
        return None
    if p.is_dir():
        return "folder"
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return "unknown"
    if size == 0:
        return "empty"
    if head.startswith(_PNG):
        return "png"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "unknown"
        return "npz" if all(n.endswith(".npy") for n in names) else "zip"
    try:
        header = read_header(p)
    except FileFormatError as e:
        if "without a flowcond header" in e.problem:
            return "safetensors"
        if len(head) > 8 and head[8:9] == b"{":
            return "damaged"
        return "unknown"
    return str(header.get("kind") or "damaged")


def _main(option: str) -> str:
    """The option to change: ``option`` itself, or ``--out`` for a path derived from it."""
    return option if option.startswith("-") else "--out"


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255
