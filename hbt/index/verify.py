"""Verification: checksums, counts, store/graph agreement, recall against exact search, and the lexical parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hbt.bundle import sha256_file
from hbt.errors import SearchIndexError
from hbt.index.format import passage_text
from hbt.index.lexical import has_lexical, text_pieces
from hbt.index.reader import Index


def verify_index(directory: Path, sample: int = 200, k: int = 10, tokenizer=None) -> dict:
    """Check every file's sha256, each segment's labels and counts, then recall@k of the planner's
    search against exact search on ``sample`` stored vectors used as queries. With the bundle's
    ``tokenizer``, the lexical parts must hold the pieces of the stored texts of ``sample`` documents."""
    index = Index(directory)
    lexical = verify_lexical(index, sample, tokenizer)
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
                "k": k, "probes": 0, "lexical": lexical}
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
            "recall_at_k": recall, "k": k, "probes": len(chosen), "lexical": lexical}


def verify_lexical(index: Index, sample: int, tokenizer) -> str:
    """The lexical parts, checked (their checksums and bounds were, at open): "absent" in an index built
    before them; with a tokenizer, each of ``sample`` stored documents per segment must hold exactly the
    pieces its text tokenizes to (another tokenizer's part, or one out of step with the store, fails)."""
    if not has_lexical(index.manifest):
        return "absent (add it with hbt-index upgrade)"
    if tokenizer is None:
        return "ok (checksums)"
    for view in index.segments:
        lexical, segment = view.segment.lexical, view.segment
        labels = np.flatnonzero(view.admitted(None))
        labels = np.sort(np.random.default_rng(0).choice(labels, size=min(sample, len(labels)), replace=False))
        documents = segment.documents(labels)
        expected = text_pieces(tokenizer, [passage_text(documents[int(label)]) for label in labels])
        for label, stored, pieces in zip(labels, lexical.document_pieces(labels), expected):
            if not np.array_equal(np.sort(stored), np.sort(pieces)):
                raise SearchIndexError(f"{segment.directory}: the lexical part does not hold the pieces of document "
                                       f"{documents[int(label)].id!r}; rebuild the index with hbt-index build")
    return "ok (checksums, pieces of the stored texts)"
