"""Search across a Ray cluster: actors each hold a group of an index's segments, the driver merges exactly.

``RayIndex`` answers ``search`` and ``documents`` as ``hbt.index.Index`` does, with the
same document keys (segment position << 40 | label), so ``Searcher(encoder, RayIndex(...))``
returns what a local search of the same index returns. Each actor returns its group's top
k with their documents, and the driver keeps the k best by score, then id (the order in
which a local search breaks ties), in one round trip. The index must be on storage every
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
from hbt.index import Index, Ranking, read_manifest
from hbt.index.format import GRAPH_FILE
from hbt.index.reader import LABEL_BITS
from hbt.search import Searcher, SearchRun

LABELS = (1 << LABEL_BITS) - 1


class SegmentGroup:
    """One commit's segments of a group, opened as a local index of just them (a Ray actor)."""

    def __init__(self, directory: str, names: list[str], generation: int):
        self.index = Index(directory, only=set(names))
        if self.index.generation != generation:
            raise SearchIndexError(f"{directory}: a commit was made while the search actors opened the index; "
                                   "open it again")
        positions = {entry["name"]: p for p, entry in enumerate(self.index.manifest["segments"])}
        self.positions = np.array([positions[view.segment.name] for view in self.index.segments], dtype=np.int64)
        self.local = {int(p): i for i, p in enumerate(self.positions)}

    def search(self, vectors: np.ndarray, k: int, ef: int | None, langs: frozenset | None,
               exact: bool) -> tuple[np.ndarray, np.ndarray, dict[int, Document], list[str]]:
        """The group's top k: keys in the whole commit and scores [Q, k'], their documents, and the plans."""
        ranking = self.index.search(vectors, k, ef, langs, exact)
        keys = (self.positions[ranking.keys >> LABEL_BITS] << LABEL_BITS) | (ranking.keys & LABELS)
        documents = self.index.documents(np.unique(ranking.keys))
        pairs = zip(keys.ravel().tolist(), ranking.keys.ravel().tolist())
        return keys, ranking.scores, {key: documents[local] for key, local in pairs}, ranking.plans

    def documents(self, keys: list[int]) -> dict[int, Document]:
        local = {(self.local[key >> LABEL_BITS] << LABEL_BITS) | (key & LABELS): key for key in keys}
        return {local[key]: doc for key, doc in self.index.documents(local).items()}


def deal_segments(entries: list[dict], groups: int) -> list[list[dict]]:
    """Segments dealt into ``groups`` groups of about equal graph bytes: largest first, to the lightest group."""
    dealt: list[list[dict]] = [[] for _ in range(min(groups, len(entries)))]
    weight = [0] * len(dealt)
    for entry in sorted(entries, key=lambda e: -e["files"][GRAPH_FILE]["bytes"]):
        lightest = weight.index(min(weight))
        dealt[lightest].append(entry)
        weight[lightest] += entry["files"][GRAPH_FILE]["bytes"]
    return dealt


class RayIndex:
    """An index commit whose segments are held by Ray actors, one per group, spread across the nodes.

    ``groups`` defaults to one per node. Each actor reserves its graphs' bytes of memory,
    so Ray places the groups where they fit: an index larger than one machine's memory.
    """

    def __init__(self, directory: Path | str, groups: int | None = None):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if not self.manifest["segments"]:
            raise SearchIndexError(f"{self.directory}: no segments to search")
        groups = groups or sum(1 for node in ray.nodes() if node["Alive"])
        self.position = {entry["name"]: p for p, entry in enumerate(self.manifest["segments"])}
        self.groups, self.holder = [], {}  # the actors, and which one holds each segment position
        for group in deal_segments(self.manifest["segments"], groups):
            self.holder.update({self.position[entry["name"]]: len(self.groups) for entry in group})
            self.groups.append(ray.remote(SegmentGroup).options(
                num_cpus=0, scheduling_strategy="SPREAD", memory=sum(e["files"][GRAPH_FILE]["bytes"] for e in group),
            ).remote(str(self.directory), [entry["name"] for entry in group], self.generation))
        ray.get([group.__ray_ready__.remote() for group in self.groups])
        self._fetched: dict[int, Document] = {}

    @property
    def generation(self) -> int:
        return self.manifest["generation"]

    def reopen(self) -> "RayIndex":
        """The newest commit, on new actors (this index itself if nothing changed)."""
        if read_manifest(self.directory)["generation"] == self.generation:
            return self
        return RayIndex(self.directory, len(self.groups))

    def search(self, vectors: np.ndarray, k: int, ef: int | None = None, langs: Iterable[str] | None = None,
               exact: bool = False) -> Ranking:
        """The k documents nearest each query vector [Q, d], as ``Index.search`` finds them."""
        if k <= 0:
            raise DataError(f"k = {k}: must be at least 1")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.manifest["dimension"])
        allowed = frozenset(langs) if langs else None
        answers = ray.get([group.search.remote(vectors, k, ef, allowed, exact) for group in self.groups])
        found = {key: doc for _, _, documents, _ in answers for key, doc in documents.items()}
        rows = []
        for query in range(len(vectors)):
            candidates = [(-score, found[key].id, key) for keys, scores, _, _ in answers
                          for score, key in zip(scores[query].tolist(), keys[query].tolist())]
            rows.append(sorted(candidates)[:k])
        keys = np.array([[key for _, _, key in row] for row in rows], dtype=np.int64).reshape(len(vectors), -1)
        scores = np.array([[-score for score, _, _ in row] for row in rows], dtype=np.float32).reshape(keys.shape)
        plans = sorted((plan for *_, group_plans in answers for plan in group_plans),
                       key=lambda plan: self.position[plan.split(":")[0]])  # "seg-000003: hnsw ..."
        self._fetched = found  # the documents() call that follows a search needs no second round trip
        return Ranking(keys, scores, plans)

    def documents(self, keys: Iterable[int]) -> dict[int, Document]:
        fetched, found, wanted = self._fetched, {}, {}
        for key in map(int, keys):
            if key in fetched:
                found[key] = fetched[key]
            else:
                wanted.setdefault(self.holder[key >> LABEL_BITS], []).append(key)
        for part in ray.get([self.groups[group].documents.remote(group_keys) for group, group_keys in wanted.items()]):
            found.update(part)
        return found

    def close(self) -> None:
        for group in self.groups:
            ray.kill(group)
        self.groups = []


def search_on_ray(index_dir: Path | str, queries: list[str], k: int = 10, ef: int | None = None,
                  langs: Iterable[str] | None = None, bundle: Path | str | None = None, groups: int | None = None,
                  address: str | None = None) -> SearchRun:
    """One search run with the index's segments held by ``groups`` actors (hbt-search query --ray)."""
    with connect(address):
        index = RayIndex(index_dir, groups)
        try:
            return Searcher(Encoder(bundle or index.manifest["bundle"]["path"]), index).run(queries, k, ef, langs)
        finally:
            index.close()
