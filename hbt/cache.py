"""Where hbt keeps what it makes once per machine: the offline default converted for torch, planner
costs, int8 verdicts. One directory for all of them: the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$HBT_CACHE_DIR``, else ``$XDG_CACHE_HOME/hbt``, else ``~/.cache/hbt``."""
    if os.environ.get("HBT_CACHE_DIR"):
        return Path(os.environ["HBT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hbt"
