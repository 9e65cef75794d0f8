"""Verification: checksums, counts, store/graph agreement, and recall against exact search."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hbt.bundle import sha256_file
from hbt.errors import SearchIndexError
from hbt.index.reader import Index


def verify_index(directory: Path, sample: int = 200, k: int = 10) -> dict:
    """Check every file's sha256, each segment's labels and counts, then recall@k of the planner's
    search against exact search on ``sample`` stored vectors used as queries."""
    index = Index(directory)
    for view in index.segments:
        segment, entry = view.segment, view.entry
        for name, record in entry.files.items():
            if sha256_file(segment.directory / name) != record.sha256:
                raise SearchIndexError(f"{segment.directory / name}: checksum mismatch; the index is damaged: "
                                       "restore it or rebuild with hbt-index build")
        labels = np.array([row[0] for row in segment.query("SELECT label FROM docs", [])], dtype=np.int64)
        in_range = not len(labels) or 0 <= labels.min() <= labels.max() < entry.count
        stored_live = np.count_nonzero(view.admitted(None)[labels]) if in_range else -1
        if stored_live != view.live:
            raise SearchIndexError(f"{segment.directory}: the store does not hold the {view.live} live documents "
                                   "of the graph; the index is damaged: restore it or rebuild with hbt-index build")
    if index.count == 0:
        return {"documents": 0, "segments": len(index.segments), "checksums": "ok", "recall_at_k": None,
                "k": k, "probes": 0}
    live = [np.flatnonzero(view.admitted(None)) for view in index.segments]  # per segment
    owner = np.repeat(np.arange(len(live)), [len(labels) for labels in live])
    chosen = np.random.default_rng(0).choice(len(owner), size=min(sample, len(owner)), replace=False)
    labels = np.concatenate(live)[chosen]
    queries = np.vstack([index.segments[p].segment.vectors(labels[owner[chosen] == p])
                         for p in np.unique(owner[chosen])])
    k = min(k, index.count)
    exact = index.search(queries, k, exact=True).scores[:, -1:]  # [probes, 1]: the k-th best
    found = index.search(queries, k).scores
    # A hit counts if it scores as well as the k-th exact neighbour: ties are not misses.
    recall = float(np.mean(found >= exact - 1e-5))
    return {"documents": index.count, "segments": len(index.segments), "checksums": "ok",
            "recall_at_k": recall, "k": k, "probes": len(chosen)}
