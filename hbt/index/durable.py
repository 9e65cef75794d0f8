"""Durable file operations and the writers' lock.

A commit is durable when its files are fsynced, their directory is fsynced (so the
new names survive a power cut), and the manifest replaces its predecessor in one
rename followed by an fsync of the index directory. Every mutation of an index goes
through ``os`` functions called from here, so a test can kill the process at each.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from hbt.atomic import fsync_dir, fsync_file
from hbt.errors import SearchIndexError

LOCK_FILE = "write.lock"
log = logging.getLogger(__name__)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename: readers see the old file or the new one."""
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def write_lock(directory: Path, timeout: float) -> Iterator[None]:
    """The index's exclusive writer lock; readers never take it.

    The holder writes its pid into the lock file, so that a second writer can say on
    whom it waits (once, as a warning); it waits up to ``timeout`` seconds, then fails
    in one line. The kernel drops the lock when its process dies, so a crash never leaves it held.
    """
    with open(directory / LOCK_FILE, "a+b") as handle:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise SearchIndexError(
                        f"{directory}: another process{lock_holder(directory)} is writing to this index "
                        f"(waited {timeout:.0f} s); retry when it has finished"
                    ) from None
                if not announced:
                    log.warning("%s: waiting for another process%s, which is writing to this index "
                                "(at most %.0f s)", directory, lock_holder(directory), timeout)
                    announced = True
                time.sleep(0.05)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def lock_holder(directory: Path) -> str:
    """The holder's pid as ' (pid N)', from what it wrote into the lock file; '' while it has not written yet."""
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int((directory / LOCK_FILE).read_bytes()[:20])})"
    return ""
