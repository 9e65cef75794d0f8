"""What every index snapshot answers (``IndexSnapshot``), its document keys, and the exact merge of rankings.

``hbt.index.Index`` (one process) and ``hbt.distributed.search.RayIndex`` (segments held
by Ray actors) both implement the protocol with the same keys and the same merge, so a
``Searcher`` over either returns the same hits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

import numpy as np

from hbt.corpus import Document
from hbt.index.format import IndexBundle, Manifest

LABEL_BITS = 40  # a document key is (segment position in the commit) << 40 | label
LABELS = (1 << LABEL_BITS) - 1


def document_key(position, labels):
    """The key of a segment's labels (an int or an int64 array) in the commit's numbering."""
    return (position << LABEL_BITS) | labels


def key_position(keys):
    """The segment position of document keys (an int or an int64 array)."""
    return keys >> LABEL_BITS


def key_label(keys):
    """The label within its segment of document keys (an int or an int64 array)."""
    return keys & LABELS


@dataclass(frozen=True)
class Ranking:
    """Document keys and similarities [Q, k'] best first (ties by document id), and the plans that ran.

    ``documents`` holds those the search fetched along with the keys (a Ray search does, in
    its one round trip); the rest come from ``IndexSnapshot.documents``.
    """

    keys: np.ndarray
    scores: np.ndarray
    plans: list[str]
    documents: dict[int, Document] = field(default_factory=dict)


@runtime_checkable
class IndexSnapshot(Protocol):
    """One commit of an index, searched as a whole; later commits do not change it."""

    directory: Path
    manifest: Manifest

    @property
    def generation(self) -> int: ...

    @property
    def bundle(self) -> IndexBundle: ...

    @property
    def count(self) -> int: ...

    @property
    def languages(self) -> dict[str, int]: ...

    def search(self, vectors: np.ndarray, k: int, ef: int | None = None, langs: Iterable[str] | None = None,
               exact: bool = False) -> Ranking: ...

    def search_lexical(self, pieces: list[np.ndarray], k: int, langs: Iterable[str] | None = None) -> Ranking:
        """BM25 by each query's pieces: rows of keys -1 and scores -inf pad the queries with fewer hits."""
        ...

    def documents(self, keys: Iterable[int]) -> dict[int, Document]: ...

    def info(self) -> dict: ...

    def reopen(self) -> "IndexSnapshot": ...

    def close(self) -> None: ...


def merge_rankings(scores: list[np.ndarray], keys: list[np.ndarray], k: int,
                   ids: Callable[[np.ndarray], dict[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """The k best keys and scores [Q, k'] of several searches' candidates ([Q, n_i] each, at least one
    search), by score, then id.

    ``ids`` names the document ids of keys; it is asked only for keys tied in score within
    the k best (ties are rare: equal vectors), whose order the ids decide.
    """
    scores, keys = np.hstack(scores).astype(np.float32), np.hstack(keys).astype(np.int64)
    order = np.lexsort((keys, -scores), axis=1)
    scores, keys = np.take_along_axis(scores, order, 1), np.take_along_axis(keys, order, 1)
    k = min(k, scores.shape[1])
    reach = min(k + 1, scores.shape[1])  # a tie at the cut reaches past it
    for row in np.flatnonzero((scores[:, 1:reach] == scores[:, : reach - 1]).any(axis=1)):
        for value in np.unique(scores[row, :k]):
            tied = np.flatnonzero(scores[row] == value)  # contiguous: the row is sorted by score
            if len(tied) > 1:
                named = ids(keys[row, tied])
                keys[row, tied] = sorted(keys[row, tied], key=lambda key: named[key])
    return keys[:, :k], scores[:, :k]


class CommitFacts:
    """What a snapshot answers from its commit alone: ``Index`` and ``RayIndex`` read the same manifest."""

    manifest: Manifest

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def languages(self) -> dict[str, int]:
        """Live documents per language ("" for documents without one)."""
        return self.manifest.languages

    @property
    def bundle(self) -> IndexBundle:
        """The bundle the index was built with: its path and fingerprint."""
        return self.manifest.bundle

    def info(self) -> dict:
        return summary(self.manifest)


def summary(manifest: Manifest) -> dict:
    """A JSON-able summary of a commit: documents, languages, segments and tombstones, bundle, HNSW settings."""
    fields = ("count", "languages", "generation", "dimension", "M", "ef_construction", "ef", "segment_size",
              "language_graphs", "created", "updated", "hbt_version")
    return {name: getattr(manifest, name) for name in fields} | {"bundle": asdict(manifest.bundle), "segments": [
        {"name": e.name, "documents": e.live, "deleted": e.deleted, "languages": e.languages}
        for e in manifest.segments]}
