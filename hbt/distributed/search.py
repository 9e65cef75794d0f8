"""Search across a Ray cluster: actors each hold a group of an index's segments, the driver merges exactly.

``RayIndex`` is an ``hbt.index.IndexSnapshot`` as ``hbt.index.Index`` is, with the same
document keys and the same merge (``hbt.index.merge_rankings``), so
``Searcher(encoder, RayIndex(...))`` returns what a local search of the same index returns.
Each actor returns its group's top k with their documents, and the driver keeps the k best
by score, then id, in one round trip: the ranking carries those documents along. The index must be on storage every
node reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import ray

from hbt.corpus import Document
from hbt.distributed.cluster import connect
from hbt.encoder import Encoder
from hbt.errors import DataError, SearchIndexError
from hbt.index import (CommitFacts, Index, Manifest, Ranking, SegmentEntry, document_key, key_label, key_position,
                       merge_lexical, merge_rankings, read_manifest, require_lexical)
from hbt.search import Searcher, SearchMode, SearchRun


class SegmentGroup:
    """One commit's segments of a group, opened as a local index of just them (a Ray actor)."""

    def __init__(self, directory: str, names: list[str], generation: int):
        self.index = Index(directory, only=set(names))
        if self.index.generation != generation:
            raise SearchIndexError(f"{directory}: a commit was made while the search actors opened the index; "
                                   "open it again")
        positions = {entry.name: p for p, entry in enumerate(self.index.manifest.segments)}
        self.positions = np.array([positions[view.segment.name] for view in self.index.segments], dtype=np.int64)
        self.local = {int(p): i for i, p in enumerate(self.positions)}

    def search(self, vectors: np.ndarray, k: int, ef: int | None, langs: frozenset | None,
               exact: bool) -> tuple[np.ndarray, np.ndarray, dict[int, Document], list[str]]:
        """The group's top k: keys in the whole commit and scores [Q, k'], their documents, and the plans."""
        return self._in_commit(self.index.search(vectors, k, ef, langs, exact))

    def lexical_frequencies(self, pieces: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        return self.index.lexical_frequencies(pieces)

    def search_lexical(self, pieces: list[np.ndarray], k: int, langs: frozenset | None,
                       statistics: tuple[list[np.ndarray], int]) -> tuple[np.ndarray, np.ndarray, dict[int, Document],
                                                                          list[str]]:
        """The group's BM25 top k, planned on the whole collection's ``statistics``: keys (padded with -1) and
        scores [Q, k'] in the whole commit, their documents, and the plan."""
        return self._in_commit(self.index.search_lexical(pieces, k, langs, statistics))

    def _in_commit(self, ranking: Ranking) -> tuple[np.ndarray, np.ndarray, dict[int, Document], list[str]]:
        """The group's ranking with keys of the whole commit (padding -1 kept), their documents, and the plans."""
        real = ranking.keys >= 0
        keys = np.where(real, document_key(self.positions[key_position(np.maximum(ranking.keys, 0))],
                                           key_label(ranking.keys)), -1)
        documents = self.index.documents(np.unique(ranking.keys[real]))
        pairs = zip(keys[real].tolist(), ranking.keys[real].tolist())
        return keys, ranking.scores, {key: documents[local] for key, local in pairs}, ranking.plans

    def documents(self, keys: list[int]) -> dict[int, Document]:
        local = {document_key(self.local[key_position(key)], key_label(key)): key for key in keys}
        return {local[key]: doc for key, doc in self.index.documents(local).items()}


def deal_segments(entries: tuple[SegmentEntry, ...], groups: int) -> list[list[SegmentEntry]]:
    """Segments dealt into ``groups`` groups of about equal graph bytes: largest first, to the lightest group."""
    dealt: list[list[SegmentEntry]] = [[] for _ in range(min(groups, len(entries)))]
    weight = [0] * len(dealt)
    for entry in sorted(entries, key=lambda e: -e.graph_bytes):
        lightest = weight.index(min(weight))
        dealt[lightest].append(entry)
        weight[lightest] += entry.graph_bytes
    return dealt


class RayIndex(CommitFacts):
    """An index commit whose segments are held by Ray actors, one per group, spread across the nodes.

    ``groups`` defaults to one per node. Each actor reserves its graphs' bytes of memory,
    so Ray places the groups where they fit: an index larger than one machine's memory.
    """

    def __init__(self, directory: Path | str, groups: int | None = None):
        self.directory = Path(directory)
        self.manifest: Manifest = read_manifest(self.directory)
        if not self.manifest.segments:
            raise SearchIndexError(f"{self.directory}: no segments to search")
        groups = groups or sum(1 for node in ray.nodes() if node["Alive"])
        self.position = {entry.name: p for p, entry in enumerate(self.manifest.segments)}
        self.groups, self.holder = [], {}  # the actors, and which one holds each segment position
        for group in deal_segments(self.manifest.segments, groups):
            self.holder.update({self.position[entry.name]: len(self.groups) for entry in group})
            self.groups.append(ray.remote(SegmentGroup).options(
                num_cpus=0, scheduling_strategy="SPREAD", memory=sum(e.graph_bytes for e in group),
            ).remote(str(self.directory), [entry.name for entry in group], self.generation))
        ray.get([group.__ray_ready__.remote() for group in self.groups])

    def reopen(self) -> "RayIndex":
        """The newest commit, on new actors (this index itself if nothing changed)."""
        if read_manifest(self.directory).generation == self.generation:
            return self
        return RayIndex(self.directory, len(self.groups))

    def search(self, vectors: np.ndarray, k: int, ef: int | None = None, langs: Iterable[str] | None = None,
               exact: bool = False) -> Ranking:
        """The k documents nearest each query vector [Q, d], as ``Index.search`` finds them."""
        if k <= 0:
            raise DataError(f"k = {k}: must be at least 1")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.manifest.dimension)
        allowed = frozenset(langs) if langs else None
        answers = ray.get([group.search.remote(vectors, k, ef, allowed, exact) for group in self.groups])
        found = {key: doc for _, _, documents, _ in answers for key, doc in documents.items()}
        keys, scores = merge_rankings([scores for _, scores, *_ in answers], [keys for keys, *_ in answers], k,
                                      lambda tied: {key: found[key].id for key in tied.tolist()})
        plans = sorted((plan for *_, group_plans in answers for plan in group_plans),
                       key=lambda plan: self.position[plan.split(":")[0]])  # "seg-000003: hnsw ..."
        return Ranking(keys, scores, plans, {key: found[key] for key in np.unique(keys).tolist()})

    def search_lexical(self, pieces: list[np.ndarray], k: int, langs: Iterable[str] | None = None) -> Ranking:
        """BM25 as ``Index.search_lexical`` ranks it: the groups' document frequencies summed first (one
        round trip), so every group plans the queries on the whole collection, then their top k merged."""
        if k <= 0:
            raise DataError(f"k = {k}: must be at least 1")
        require_lexical(self.manifest, self.directory)
        counted = ray.get([group.lexical_frequencies.remote(pieces) for group in self.groups])
        statistics = ([sum(frequencies[q] for frequencies, _ in counted) for q in range(len(pieces))],
                      sum(documents for _, documents in counted))
        allowed = frozenset(langs) if langs else None
        answers = ray.get([group.search_lexical.remote(pieces, k, allowed, statistics) for group in self.groups])
        found = {key: doc for _, _, documents, _ in answers for key, doc in documents.items()}
        keys, scores = merge_lexical([(keys, scores) for keys, scores, *_ in answers], k,
                                     lambda tied: {key: found[key].id for key in tied.tolist()})
        return Ranking(keys, scores, answers[0][3], {key: found[key] for key in np.unique(keys[keys >= 0]).tolist()})

    def documents(self, keys: Iterable[int]) -> dict[int, Document]:
        wanted: dict[int, list[int]] = {}
        for key in map(int, keys):
            wanted.setdefault(self.holder[key_position(key)], []).append(key)
        found = {}
        for part in ray.get([self.groups[group].documents.remote(group_keys) for group, group_keys in wanted.items()]):
            found.update(part)
        return found

    def close(self) -> None:
        for group in self.groups:
            ray.kill(group)
        self.groups = []


def search_on_ray(index_dir: Path | str, queries: list[str], k: int = 10, ef: int | None = None,
                  langs: Iterable[str] | None = None, bundle: Path | str | None = None, groups: int | None = None,
                  address: str | None = None, mode: SearchMode | str = "auto") -> SearchRun:
    """One search run with the index's segments held by ``groups`` actors (hbt-search query --ray)."""
    with connect(address):
        index = RayIndex(index_dir, groups)
        try:
            return Searcher(Encoder(bundle or index.bundle.path), index).run(queries, k, ef, langs, mode)
        finally:
            index.close()
