"""The query planner: for each segment, exact search over the admitted vectors or HNSW with over-fetch.

A filter (languages, tombstones) admits ``pool`` of a segment's ``size`` vectors. Exact
search costs a dot product per admitted vector; an HNSW search costs roughly a constant
per unit of beam width. HNSW finds about k·size/pool neighbours to keep k admitted ones,
so a rare language makes its beam wide while its exact scan stays short: the plan is the
cheaper of the two. No plan calls Python per visited node (hnswlib's filter callback did,
and cost a rare language 1.9 s a query at 100k documents). The two costs are measured on
the machine when an index opens (``hbt.index.calibrate``); ``ZEN4`` is the fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OVERFETCH = 1.5  # margin over the expected k·size/pool, so that a short answer is rare
FEW_QUERIES = 4  # an exact scan for at most this many queries runs on the calling thread, not through BLAS


@dataclass(frozen=True)
class Costs:
    """Microseconds per query: per admitted vector of an exact scan, and per unit of HNSW beam width."""

    exact: float
    beam: float
    source: str = "measured"

    def describe(self) -> str:
        return f"exact {self.exact:.4f} µs/vector, beam {self.beam:.3f} µs/unit ({self.source})"


# Measured on a 2-core Zen 4 at 384-d: ~0.1 µs per vector for a matrix-vector product over
# cached vectors, ~5 µs per unit of HNSW beam at M 32 (0.6 ms at ef 128, 1M vectors).
ZEN4 = Costs(0.1, 5.0, "Zen 4 defaults")


@dataclass(frozen=True)
class Plan:
    kind: str  # "skip" (nothing admitted), "exact", "hnsw" (no filter), "filtered-hnsw" or "language-graphs"
    fetch: int = 0  # neighbours asked of the graph (exact: vectors scanned)
    ef: int = 0  # HNSW beam width
    parts: tuple[str, ...] = ()  # language-graphs: each language's plan, described

    def describe(self) -> str:
        if self.kind in ("hnsw", "filtered-hnsw"):
            return f"{self.kind} (fetch {self.fetch}, ef {self.ef})"
        if self.kind == "language-graphs":
            return f"language-graphs ({'; '.join(self.parts)})"
        return f"{self.kind} ({self.fetch} vectors)" if self.kind == "exact" else self.kind

    def cost(self, costs: "Costs") -> float:
        """The expected microseconds per query of an exact or a graph plan (one graph's)."""
        return self.fetch * costs.exact if self.kind == "exact" else self.ef * costs.beam


def choose_plan(pool: int, size: int, k: int, ef: int, exact: bool = False, costs: Costs = ZEN4) -> Plan:
    """The plan for k neighbours among ``pool`` admitted of ``size`` vectors, at beam ``ef``."""
    if pool <= 0:
        return Plan("skip")
    k = min(k, pool)
    fetch = k if pool == size else min(size, math.ceil(k * size / pool * OVERFETCH))
    beam = max(ef, fetch)
    if exact or pool * costs.exact <= beam * costs.beam:
        return Plan("exact", pool)
    return Plan("hnsw" if pool == size else "filtered-hnsw", fetch, beam)


def widen(plan: Plan, size: int, pool: int, costs: Costs = ZEN4) -> Plan:
    """The next try after a filtered search came back short: four times the fetch, exact at the end."""
    fetch = min(size, plan.fetch * 4)
    if fetch >= size or pool * costs.exact <= fetch * costs.beam:
        return Plan("exact", pool)
    return Plan(plan.kind, fetch, max(plan.ef, fetch))


def exact_scores(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Similarities [Q, n] of queries [Q, d] to vectors [n, d]: the exact scan whose cost the planner weighs.

    A few queries go through numpy's own loop on this thread. OpenBLAS threads even a one-row
    product, and on a busy machine waking its threads between queries costs milliseconds: 28 ms
    against 1 ms for 10,000 vectors at 384-d, taking turns with graph searches on 2 loaded vCPUs.
    """
    if len(queries) <= FEW_QUERIES:
        return np.einsum("qd,nd->qn", queries, vectors)
    return queries @ vectors.T
