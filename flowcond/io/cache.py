"""Where flowcond keeps data it can recompute (latent caches, measured labels)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$FLOWCOND_CACHE``, or ``~/.cache/flowcond``."""
    return Path(os.environ.get("FLOWCOND_CACHE") or Path.home() / ".cache" / "flowcond")
