"""Searching a commit's segments (and hybrid's two sides) side by side: hnswlib and numpy release the
GIL while they search.

A query over four segments runs four graph searches; one after another they cost about
twice one graph holding the same documents at equal recall. On threads they can cost
about the slowest one plus the merge, where idle cores wait; on a busy machine the
hand-offs cost more than they save (``bench/reports/index-scale``: a 2-vCPU host shared
with other jobs). So it is off unless ``HBT_SEGMENT_THREADS`` asks for more than one thread.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")
WORKERS = int(os.environ.get("HBT_SEGMENT_THREADS", "1") or 1)
THREAD_PREFIX = "hbt-segments"
_pool: ThreadPoolExecutor | None = None


def fan_out(calls: list[Callable[[], T]]) -> list[T]:
    """The results of ``calls``, in order: on a shared pool of WORKERS threads when there are several of each.
    A call made on the pool's own threads runs its calls there, one after another: waiting on the pool
    from inside it could leave no thread free to run what it waits for."""
    global _pool
    if min(len(calls), WORKERS) < 2 or threading.current_thread().name.startswith(THREAD_PREFIX):
        return [call() for call in calls]
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=THREAD_PREFIX)
    return list(_pool.map(lambda call: call(), calls))


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of its parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
