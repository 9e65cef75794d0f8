"""Connecting to a Ray cluster, and turning hbt errors raised on it back into one-line errors."""

from __future__ import annotations

import contextlib
from typing import Iterator

import ray

from hbt.errors import HbtError


@contextlib.contextmanager
def connect(address: str | None = None) -> Iterator[None]:
    """Use the Ray cluster already joined, or join one as ``ray.init`` does: ``address`` None (a new
    local cluster, or RAY_ADDRESS), "auto" (the cluster running on this node) or a cluster address.

    A cluster joined here is left on the way out; hbt errors raised by its tasks come back as
    the hbt error itself, not Ray's wrapper with a remote traceback.
    """
    joined = not ray.is_initialized()
    if joined:
        ray.init(address=address or None)
    try:
        yield
    except ray.exceptions.RayError as e:
        cause = hbt_cause(e)
        if cause is None:
            raise
        raise type(cause)(str(cause).splitlines()[0]) from None  # Ray appends its retry notes
    finally:
        if joined:
            ray.shutdown()


def hbt_cause(error: BaseException) -> HbtError | None:
    """The hbt error that a Ray task raised, through Ray's wrappers (RayTaskError.cause, __cause__)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(error, HbtError) and not isinstance(error, ray.exceptions.RayError):
            return error
        error = cause if isinstance(cause, BaseException) else error.__cause__
    return None


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1))
