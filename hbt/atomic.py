"""Replace a directory as one step: the finished staging copy is synced, then renamed into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_directory(staging: Path, target: Path) -> None:
    for file in staging.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    staging.chmod(0o755)  # mkdtemp made it private
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
