"""Why a language's own graph misses neighbours: its recall@10 against an unfiltered sample's, per ef.

    python -m hbt.bench.language_graph_recall --cache DIR [--size 1000000] [--share 0.1] [--ef-construction 200]

The corpus is ``hbt.bench.index_scale``'s (the real vectors grown with rotated, noised
copies, languages drawn at its shares, the same seeds). The language's graph is built
as a segment builds it (``write_language_graphs``: its labels, in shuffled batches, at
twice the index's ef_construction unless told), and beside it a graph of as many
documents drawn from the whole corpus, built alike; both answer the
benchmark's probe queries at several ef, against exact search over their own vectors.
If the sample misses as much as the language, the language's documents are not the
cause: the graph's size and the corpus's structure are. ``zero`` counts the queries that
found none of their 10 neighbours (the search ended away from them).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from hbt.bench.ann import grow, real_vectors
from hbt.bench.index_scale import K, SHARES
from hbt.index import IndexConfig
from hbt.index.graph import INSERT_BATCH, add_shuffled, new_graph
from hbt.index.language_graphs import CONSTRUCTION_FACTOR

PROBES = 200  # index_scale's recall probes


def language_labels(size: int, share: float) -> np.ndarray:
    """The labels of index_scale's language at ``share`` in its corpus of ``size`` (the same draw)."""
    chosen = np.random.default_rng(0).choice(len(SHARES) + 1, size=size, p=[*SHARES.values(), 1 - sum(SHARES.values())])
    return np.flatnonzero(chosen == list(SHARES.values()).index(share))


def recall_by_ef(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray, config: IndexConfig,
                 efs: tuple[int, ...]) -> dict[int, dict]:
    """Recall@K of a graph of ``vectors[labels]`` built as a segment's language graph, and its queries with none."""
    own = vectors[labels]  # [n, d]
    truth = labels[np.argsort(-(queries @ own.T), axis=1)[:, :K]]  # [Q, K]
    graph = new_graph(vectors.shape[1], len(labels), config)
    for start in range(0, len(labels), INSERT_BATCH):
        part = labels[start : start + INSERT_BATCH]
        add_shuffled(graph, vectors[part], part, config.threads)
    rows = {}
    for ef in efs:
        graph.set_ef(ef)
        found, _ = graph.knn_query(queries, k=K)
        hits = np.array([len(set(f) & set(t)) / K for f, t in zip(found, truth)])
        rows[ef] = {"recall_at_10": float(hits.mean()), "zero": int(np.sum(hits == 0))}
    return rows


@click.command()
@click.option("--bundle", type=click.Path(path_type=Path), help="Bundle whose embeddings to cache (first run only).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=Path("bench/reports/ann-34k"), show_default=True)
@click.option("--size", type=click.IntRange(1000), default=1_000_000, show_default=True)
@click.option("--share", type=click.Choice([str(s) for s in SHARES.values()]), default="0.1", show_default=True)
@click.option("--efs", default="128,192,256,384", show_default=True)
@click.option("--ef-construction", type=click.IntRange(1), default=IndexConfig().ef_construction * CONSTRUCTION_FACTOR,
              show_default=True, help="Both graphs' (200: as language graphs were built before).")
def main(bundle, data_dir, cache, size, share, efs, ef_construction):
    passages, queries = real_vectors(bundle, data_dir, cache, 2000)
    vectors = grow(passages, size)
    probes = queries[:PROBES]
    labels = language_labels(size, float(share))
    sample = np.sort(np.random.default_rng(1).choice(size, size=len(labels), replace=False))
    efs = tuple(int(ef) for ef in efs.split(","))
    config = IndexConfig(ef_construction=ef_construction)
    click.echo(f"{size:,} documents, M {config.M}, ef_construction {config.ef_construction}; recall@{K} of "
               f"{PROBES} queries (queries that found none of their neighbours)")
    for name, chosen in ((f"language at {float(share):.1%}", labels), ("unfiltered sample", sample)):
        rows = recall_by_ef(vectors, chosen, probes, config, efs)
        click.echo(f"- {name}, {len(chosen):,} vectors: " + ", ".join(
            f"ef {ef} {row['recall_at_10']:.3f} ({row['zero']})" for ef, row in rows.items()))


if __name__ == "__main__":
    main()
