"""Where robench keeps what it builds on first use (the default model, downloaded data)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ROBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/robench``, else ``~/.cache/robench``."""
    if os.environ.get("ROBENCH_CACHE_DIR"):
        return Path(os.environ["ROBENCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robench"
