"""Retrieval metrics from the ranks of each query's relevant candidates (pure numpy).

For query q with relevant candidates at 1-based ranks r_1 < ... < r_m:
AP = mean_j j / r_j; Recall@k = |{r_j <= k}| / m; nDCG@k with binary gains;
language bias = r_m - r_1 (in a multilingual pool, how far apart the same
answer's languages land: lower is better). A truncated run (approximate search)
gives unretrieved candidates rank inf: they add nothing to AP, recall or nDCG.
"""

from __future__ import annotations

import numpy as np


def relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based ranks of the relevant candidates; equal scores rank by candidate index (a stable sort)."""
    return np.sort(np.array([
        1 + np.count_nonzero(scores > scores[i]) + np.count_nonzero(scores[:i] == scores[i]) for i in relevant
    ]))


def average_precision(ranks: np.ndarray) -> float:
    ranks = np.sort(ranks)
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def recall_at(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks <= k))


def ndcg_at(ranks: np.ndarray, k: int) -> float:
    gains = 1 / np.log2(np.sort(ranks)[np.sort(ranks) <= k] + 1)
    ideal = 1 / np.log2(np.arange(1, min(len(ranks), k) + 1) + 1)
    return float(gains.sum() / ideal.sum())


def language_bias(ranks: np.ndarray) -> float:
    """Spread of the retrieved answers' ranks (a truncated run's unretrieved ones, rank inf, are left out)."""
    found = ranks[np.isfinite(ranks)]
    return float(found.max() - found.min()) if len(found) else 0.0


def summarize(all_ranks: list[np.ndarray], ks=(1, 10, 100)) -> dict:
    """Means over queries of mAP, Recall@k, nDCG@10 and language bias."""
    out = {"queries": len(all_ranks), "map": float(np.mean([average_precision(r) for r in all_ranks]))}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([recall_at(r, k) for r in all_ranks]))
    out["ndcg@10"] = float(np.mean([ndcg_at(r, 10) for r in all_ranks]))
    out["language_bias"] = float(np.mean([language_bias(r) for r in all_ranks]))
    return out
