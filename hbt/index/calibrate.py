"""The planner's two costs measured on this machine, on a segment's own graph, in a few milliseconds.

An exact scan's cost per vector is a matrix-vector product and a top-k selection over a
block of vectors; a graph search's cost per unit of beam is the difference between two
beam widths on the graph itself (its size, M and memory layout included), one query at a
time and on one thread, as the planner compares them. Each is the best of a few repeats,
so a busy shared machine inflates it less.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from hbt.index.planner import ZEN4, Costs

PROBES = 8  # queries timed
BLOCK = 4096  # vectors per timed exact scan
LOW_EF, HIGH_EF = 16, 128
REPEATS = 3


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
            scores = block @ query  # [B]
            np.argpartition(-scores, 10)[:10]

    exact = _best_seconds(scan) * 1e6 / (PROBES * BLOCK)
    k = min(10, graph.get_current_count())
    if k == 0:
        return Costs(exact, ZEN4.beam, "exact measured; beam: Zen 4 default (empty graph)")
    seconds = {}
    for ef in (LOW_EF, HIGH_EF):
        graph.set_ef(ef)
        seconds[ef] = _best_seconds(lambda: graph.knn_query(queries, k=k, num_threads=1))
    beam = (seconds[HIGH_EF] - seconds[LOW_EF]) * 1e6 / (PROBES * (HIGH_EF - LOW_EF))
    # A graph smaller than the beam visits every node at both widths: no difference to measure.
    if beam <= 0 or graph.get_current_count() < 4 * HIGH_EF:
        return Costs(exact, ZEN4.beam, "exact measured; beam: Zen 4 default (graph too small to time)")
    return Costs(exact, beam)
