"""Fusing rankings (dense and lexical) into one: reciprocal rank fusion and a convex combination of scores.

Pure functions over ids in rank order, so that the searcher, the server and the
benchmarks share one rule. Results are (id, score) pairs, best first, ties broken by id.
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

RRF_K = 60  # Cormack et al. (2009); the constant pyserini, Qdrant and Elasticsearch use


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hashable]], k: int = RRF_K,
                           limit: int | None = None) -> list[tuple[Hashable, float]]:
    """Each id scores the sum over rankings of 1 / (k + rank), rank counted from 1.

    The sum is exact (``math.fsum``), so the result does not depend on the order of the rankings.
    """
    if k < 0:
        raise ValueError(f"k = {k}: reciprocal rank fusion needs k >= 0")
    terms: dict[Hashable, list[float]] = {}
    for ranking in rankings:
        for rank, key in enumerate(dict.fromkeys(ranking), start=1):  # an id repeated counts at its best rank
            terms.setdefault(key, []).append(1.0 / (k + rank))
    fused = sorted(((key, math.fsum(parts)) for key, parts in terms.items()), key=lambda pair: (-pair[1], pair[0]))
    return fused[:limit]


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores mapped onto [0, 1]; all equal map to 1 (the side's evidence is the same for each)."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    return [1.0 if high == low else (s - low) / (high - low) for s in scores]


def convex_fusion(dense: Sequence[tuple[Hashable, float]], lexical: Sequence[tuple[Hashable, float]],
                  lexical_weight: float, limit: int | None = None) -> list[tuple[Hashable, float]]:
    """(1 - w) * dense + w * lexical, each side's scores min-max normalized; an id one side lacks scores 0 there.

    A side with weight 0 brings no ids of its own, and ties go to the rank on the heavier
    side, then to the id: weight 0 gives the dense ranking back, weight 1 the lexical one.
    """
    if not 0.0 <= lexical_weight <= 1.0:
        raise ValueError(f"lexical weight {lexical_weight}: it must lie in [0, 1]")
    sides = [(1.0 - lexical_weight, dense), (lexical_weight, lexical)]
    fused: dict[Hashable, float] = {}
    for weight, ranking in sides:
        if weight > 0:
            for (key, _), score in zip(ranking, min_max([s for _, s in ranking])):
                fused[key] = fused.get(key, 0.0) + weight * score
    heavier = {key: rank for rank, (key, _) in enumerate(lexical if lexical_weight > 0.5 else dense)}
    order = sorted(fused.items(), key=lambda pair: (-pair[1], heavier.get(pair[0], math.inf), pair[0]))
    return order[:limit]
