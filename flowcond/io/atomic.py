"""Atomic file writes: write a temporary file beside the target, fsync, then rename over it.

The temporary file is ``.NAME.PID.XXXXXXXX.tmp`` (``NAME`` cut to :data:`NAME_BYTES` bytes so
that long names still fit the filesystem; ``PID`` the writer's process id). A writer killed
before the rename (``kill -9``, power loss) leaves it behind: the next write to the same target
removes those of its temporary files that are older than :data:`STALE_SECONDS` and whose
writer is gone (``os.kill(pid, 0)``). A live writer's file is never removed, whatever its age.
Files of the old naming (``.NAME.XXXXXXXX.tmp``, no pid) are removed after
:data:`LEGACY_STALE_SECONDS`.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)

#: bytes of the target's name kept in its temporary file's name
NAME_BYTES = 160
#: a temporary file untouched this long whose writer process is gone is stale
STALE_SECONDS = 300.0
#: a temporary file of the old naming (no pid) untouched this long is stale
LEGACY_STALE_SECONDS = 3600.0


def _short_name(name: str) -> str:
    """``name`` cut to at most :data:`NAME_BYTES` bytes (on a character boundary)."""
    while len(os.fsencode(name)) > NAME_BYTES:
        name = name[:-1]
    return name


def temp_prefix(path: str | os.PathLike) -> str:
    """The prefix of the temporary files this process writes for ``path``."""
    return f".{_short_name(Path(path).name)}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its file
    return True


def stale_temp_files(path: str | os.PathLike, now: float | None = None) -> list[Path]:
    """The leftover temporary files of writes to ``path`` that may be removed (see the module
    docstring)."""
    path = Path(path)
    names = {_short_name(path.name), path.name}
    pattern = re.compile(
        r"^\.(?:" + "|".join(re.escape(n) for n in names) + r")\.(?:(\d+)\.)?[A-Za-z0-9_]{8}\.[A-Za-z0-9]+$"
    )
    now = time.time() if now is None else now
    found = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if not m:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = m.group(1)
        if pid is None:
            if age > LEGACY_STALE_SECONDS:
                found.append(Path(entry.path))
        elif age > STALE_SECONDS and not _pid_alive(int(pid)):
            found.append(Path(entry.path))
    return found


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove :func:`stale_temp_files` of ``path``; returns those removed."""
    removed = []
    for stale in stale_temp_files(path):
        try:
            stale.unlink()
            removed.append(stale)
        except OSError:
            pass
    return removed


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. Stale temporary
    files of earlier, killed writes to ``path`` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
