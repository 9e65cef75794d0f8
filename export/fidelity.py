"""How faithful an export is: cosine to PyTorch on the reference texts, and retrieval on a held-out gate set.

Two built-in multilingual sets, kept apart so that the figure the gate reports is not
the one that chose the quantization:

- the reference texts (``reference.tsv``: 41 queries and passages, 17 languages, 9
  scripts) check the ONNX graph against PyTorch and rank the MatMuls by int8 error;
- the gate set (hbt's demo corpus: 30 topics written in 8 languages, 5 scripts) scores
  retrieval with the exported graph against the fp32 graph: each text asks, as a
  query, for its 7 translations among the other 239 passages.

Absolute cosine depends on how spread out a model's embeddings are (mean pairwise
cosine on the reference set .75 for e5-small, .09 after hbt-train), so the same int8
noise costs trained models more cosine while ranking no worse; retrieval mAP and
neighbour overlap measure what users see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from hbt.metrics import average_precision, relevant_ranks


def reference_texts() -> list[str]:
    """The built-in fidelity set: queries and passages in 17 languages, prefixes included."""
    rows = resources.files("hbt.export").joinpath("reference.tsv").read_text(encoding="utf-8")
    return [line.split("\t", 1)[1] for line in rows.splitlines() if line.strip()]


@dataclass(frozen=True)
class GateSet:
    """Texts written in several languages per topic: a cross-lingual retrieval task with known answers."""

    texts: list[str]
    topics: np.ndarray  # [N] topic number of each text

    @classmethod
    def builtin(cls) -> "GateSet":
        rows = resources.files("hbt.resources").joinpath("demo_corpus.jsonl").read_text(encoding="utf-8")
        records = [json.loads(line) for line in rows.splitlines() if line.strip()]
        names = sorted({r["topic"] for r in records})
        return cls([r["text"] for r in records], np.array([names.index(r["topic"]) for r in records]))

    def embed(self, encode_queries, encode_passages) -> "GateVectors":
        return GateVectors(encode_queries(self.texts), encode_passages(self.texts), self.topics)


@dataclass(frozen=True)
class GateVectors:
    queries: np.ndarray  # [N, D]
    passages: np.ndarray  # [N, D]
    topics: np.ndarray  # [N]

    def scores(self) -> np.ndarray:
        """[N, N] query-passage similarities; a text never retrieves itself."""
        scores = self.queries @ self.passages.T
        np.fill_diagonal(scores, -np.inf)
        return scores

    def average_precisions(self) -> np.ndarray:
        scores = self.scores()
        return np.array([
            average_precision(relevant_ranks(row, np.flatnonzero((self.topics == self.topics[i]) & (np.arange(len(row)) != i))))
            for i, row in enumerate(scores)
        ])


def compare_retrieval(reference: GateVectors, exported: GateVectors, k: int = 10) -> dict:
    """The exported vectors' retrieval against the reference's on the same gate set."""
    reference_ap, exported_ap = reference.average_precisions(), exported.average_precisions()
    return {
        "queries": len(reference_ap),
        "map_reference": round(float(reference_ap.mean()), 6),
        "map": round(float(exported_ap.mean()), 6),
        "map_loss": round(float(reference_ap.mean() - exported_ap.mean()), 6),
        "mean_abs_ap_change": round(float(np.abs(reference_ap - exported_ap).mean()), 6),
        f"top{k}_overlap": round(top_k_overlap(reference.scores(), exported.scores(), k), 6),
    }


def top_k_overlap(reference_scores: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean share of each query's k nearest neighbours that both score matrices [Q, N] agree on."""
    top = lambda s: np.argpartition(-s, k - 1, axis=1)[:, :k]  # noqa: E731
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(top(reference_scores), top(scores))]))


def cosine_summary(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean and minimum cosine between row-aligned unit vectors."""
    cosines = (a * b).sum(axis=1)
    return {"mean_cosine": round(float(cosines.mean()), 6), "min_cosine": round(float(cosines.min()), 6)}
