"""Reading an index: one commit, a snapshot of its segments, searched together and merged exactly."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Collection, Iterable

import numpy as np

from hbt.bundle import check_fingerprint
from hbt.corpus import Document
from hbt.errors import DataError, SearchIndexError
from hbt.index.calibrate import machine_costs
from hbt.index.fanout import fan_out
from hbt.index.format import Manifest, SegmentEntry, read_manifest
from hbt.index.lexical import collection_frequencies, lexical_parts, search_snapshot
from hbt.index.planner import ZEN4, Costs
from hbt.index.segment import Segment, SegmentView, load_tombstones
from hbt.index.snapshot import CommitFacts, Ranking, document_key, key_label, key_position, merge_rankings

OPEN_RETRIES = 5


def check_bundle(manifest: Manifest, encoder, directory: Path) -> None:
    """Refuse an encoder whose bundle is not the one the index was built with."""
    check_fingerprint(manifest.bundle.fingerprint, encoder.manifest, encoder.bundle_dir, directory)


class Index(CommitFacts):
    """An open commit of an index: a snapshot that later commits do not change.

    ``reopen()`` returns a snapshot of the newest commit, sharing the segments both
    commits hold, so it costs only what changed. ``costs`` are the planner's: this
    machine's for graphs like the largest segment's (``hbt.index.calibrate``), unless given.
    """

    def __init__(self, directory: Path | str, _shared: dict[str, Segment] | None = None,
                 only: Collection[str] | None = None, costs: Costs | None = None):
        """Open the newest commit; ``only`` opens just the segments of those names (a Ray actor's group)."""
        self.directory = Path(directory)
        for attempt in range(OPEN_RETRIES):
            self.manifest = read_manifest(self.directory)
            try:
                self.segments = [self._view(entry, _shared or {}) for entry in self.manifest.segments
                                 if only is None or entry.name in only]
                break
            except FileNotFoundError as e:  # a writer removed an older commit's files as we opened them
                if attempt == OPEN_RETRIES - 1:
                    raise SearchIndexError(f"{e.filename}: missing; the index is damaged: restore it or "
                                           "rebuild with hbt-index build") from e
        self.costs = costs or self._measure_costs()

    def _measure_costs(self) -> Costs:
        if not self.segments:
            return ZEN4
        segment = max((view.segment for view in self.segments), key=lambda s: s.count)
        with segment.lock:  # the graph's ef is shared with searches of other snapshots
            return machine_costs(segment.graph, self.manifest.dimension, self.manifest.M)

    def _view(self, entry: SegmentEntry, shared: dict[str, Segment]) -> SegmentView:
        directory = self.directory / entry.name
        segment = shared.get(entry.name)
        if segment is None:
            segment = Segment(directory, entry, self.manifest.dimension)
            segment.graph  # read now: opening is the time to pay for it, not the first query
            segment.language_graphs
        return SegmentView(segment, entry, load_tombstones(directory, entry))

    def reopen(self) -> "Index":
        """The newest commit (this snapshot itself if nothing changed)."""
        if read_manifest(self.directory).generation == self.generation:
            return self
        return Index(self.directory, {view.segment.name: view.segment for view in self.segments}, costs=self.costs)

    def search(self, vectors: np.ndarray, k: int, ef: int | None = None, langs: Iterable[str] | None = None,
               exact: bool = False) -> Ranking:
        """The k documents nearest each query vector [Q, d], merged over the segments by score, then id.

        ``langs`` admits only documents in those languages; ``k`` beyond the documents
        admitted is clamped; ``exact`` scans every admitted vector instead of the graphs.
        """
        if k <= 0:
            raise DataError(f"k = {k}: must be at least 1")
        allowed = frozenset(langs) if langs else None
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.manifest.dimension)
        scores, keys, plans = [np.zeros((len(vectors), 0), np.float32)], [np.zeros((len(vectors), 0), np.int64)], []
        found = fan_out([functools.partial(view.search, vectors, k, ef or self.manifest.ef, allowed, exact, self.costs)
                         for view in self.segments])  # the segments side by side
        for position, (view, (segment_scores, labels, plan)) in enumerate(zip(self.segments, found)):
            scores.append(segment_scores)
            keys.append(document_key(position, labels))
            plans.append(f"{view.segment.name}: {plan.describe()}")
        keys, scores = merge_rankings(scores, keys, k, lambda tied: {
            key: doc.id for key, doc in self.documents(tied).items()})
        return Ranking(keys, scores, plans)

    def search_lexical(self, pieces: list[np.ndarray], k: int, langs: Iterable[str] | None = None,
                       statistics: tuple[list[np.ndarray], int] | None = None) -> Ranking:
        """BM25 over the segments' lexical parts, by each query's pieces (``hbt.index.lexical.search_snapshot``)."""
        return search_snapshot(self, pieces, k, langs, statistics)

    def lexical_frequencies(self, pieces: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        """Each query's distinct pieces' document frequencies in these segments, and their documents."""
        return collection_frequencies(lexical_parts(self), pieces)

    def documents(self, keys: Iterable[int]) -> dict[int, Document]:
        by_segment: dict[int, list[int]] = {}
        for key in keys:
            by_segment.setdefault(key_position(int(key)), []).append(key_label(int(key)))
        found = {}
        for position, labels in by_segment.items():
            documents = self.segments[position].segment.documents(labels)
            found.update({document_key(position, label): doc for label, doc in documents.items()})
        return found

    def close(self) -> None:
        """Close the segments' stores; snapshots reopened from this one share them, so close the last."""
        for view in self.segments:
            view.segment.close()
