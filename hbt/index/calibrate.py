"""The planner's two costs measured on this machine, on a segment's own graph, once per machine.

An exact scan's cost per vector is the scan's own product (``exact_scores``) and a top-k
selection over a block of vectors; a graph search's cost per unit of beam is a whole search
at ef 128 on the graph itself (its size, M and memory layout included), of stored vectors,
divided by 128: one query at a time and on one thread, as the planner compares them. (The
difference between two beam widths left out the search's fixed part and, on a loaded
machine, doubled the cost: it subtracts two noisy times.) Each is the best of a few repeats,
so a busy shared machine inflates it less. A measurement takes 50 ms to 1 s (more on a
busy machine), so it is kept in the user's cache directory, per CPU model, dimension, M
and size (a power of two: a larger graph misses the CPU caches more), and an index opens
with the cached costs after the first time.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Callable

import numpy as np

from hbt.index.planner import ZEN4, Costs, exact_scores
from hbt.cache import cache_dir
from hbt.machine import cpu_model

PROBES = 8  # queries timed
BLOCK = 4096  # vectors per timed exact scan
HIGH_EF = 128
REPEATS = 5
CACHE_FILE = "planner-costs.json"
METHOD = "scan 2, whole search"  # in the cache key: costs measured another way (the scan once went through BLAS) are measured again


def _best_seconds(work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def measure_costs(graph, dimension: int) -> Costs:
    """Costs on ``graph`` (hnswlib; its ef is left at HIGH_EF, so hold the segment's lock)."""
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((PROBES, dimension)).astype(np.float32)  # [P, d]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    block = rng.standard_normal((BLOCK, dimension)).astype(np.float32)  # [B, d]

    def scan() -> None:
        for query in queries:
            scores = exact_scores(query[None], block)  # [1, B]
            np.argpartition(-scores, 10, axis=1)[:, :10]

    exact = _best_seconds(scan) * 1e6 / (PROBES * BLOCK)
    count = graph.get_current_count()
    # A graph smaller than a few beams is searched whole: its searches say nothing about a beam's cost.
    if count < 4 * HIGH_EF:
        return Costs(exact, ZEN4.beam, "exact measured; beam: Zen 4 default (graph too small to time)")
    # Probes that look like the data (stored vectors): random directions end a search early.
    probes = np.asarray(graph.get_items(rng.choice(count, size=PROBES, replace=False)), dtype=np.float32)

    def search() -> None:
        for probe in probes:
            graph.knn_query(probe[None], k=10, num_threads=1)

    graph.set_ef(HIGH_EF)
    # A whole search per unit of beam, its fixed part included, as the planner prices a search.
    return Costs(exact, _best_seconds(search) * 1e6 / (PROBES * HIGH_EF))


def machine_costs(graph, dimension: int, M: int) -> Costs:
    """This machine's costs for graphs like ``graph``: from the cache, or measured on it and cached."""
    key = f"{cpu_model()} | d {dimension} | M {M} | 2^{max(graph.get_current_count(), 1).bit_length()} | {METHOD}"
    path = cache_dir() / CACHE_FILE
    cached: dict = {}
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(path.read_text(encoding="utf-8"))
    with contextlib.suppress(KeyError, TypeError, ValueError):
        exact, beam = float(cached[key]["exact"]), float(cached[key]["beam"])
        if exact > 0 and beam > 0:
            return Costs(exact, beam, f"measured on this machine, cached in {path}")
    costs = measure_costs(graph, dimension)
    if costs.source == "measured":
        with contextlib.suppress(OSError):  # a read-only home still searches, measuring at each open
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f"{CACHE_FILE}.tmp-{os.getpid()}")
            temporary.write_text(json.dumps(cached | {key: {"exact": costs.exact, "beam": costs.beam}}, indent=1))
            os.replace(temporary, path)
    return costs
