"""Durable file operations: fsync of files and directories, and replacing a directory in one step.

Two renames (target away, staging in) leave a moment with nothing at the target's
path; Linux's renameat2(RENAME_EXCHANGE) swaps the two names in one step, so the
target path always holds the old directory or the new one. Elsewhere the two renames
remain, and the old copy is kept beside the target until the new one is in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist the names in a directory (creations, renames, removals)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    if libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: a filesystem without the flag
        return False
    raise OSError(error, os.strerror(error), str(b))


def replace_directory(staging: Path, target: Path) -> None:
    for file in staging.iterdir():
        fsync_file(file)
    staging.chmod(0o755)  # mkdtemp made it private
    fsync_dir(staging)
    if not target.exists():
        staging.rename(target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # now the old directory
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    fsync_dir(target.parent)
