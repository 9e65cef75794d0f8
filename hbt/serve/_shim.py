"""Temporary: the Searcher contract of "Index format 2" over today's index. Removed when it lands."""

from __future__ import annotations

import collections
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hbt.errors import DataError, SearchIndexError
from hbt.index import DOCS_FILE, Index, read_index_manifest
from hbt.search import Hit, Searcher


@dataclass(frozen=True)
class SearchRun:
    hits: list[list[Hit]]
    plan: str
    timings: dict[str, float]


class _Index(Index):
    def __init__(self, directory, generation: int):
        super().__init__(directory)
        self.db.close()
        self.db = sqlite3.connect(str(self.directory / DOCS_FILE), check_same_thread=False)
        self.generation = generation
        self.languages = dict(collections.Counter(self.langs.values()))

    def info(self) -> dict:
        m = self.manifest
        return {"documents": self.count, "languages": self.languages, "generation": self.generation,
                "bundle": m["bundle"], "dimension": m["dimension"],
                "hnsw": {"M": m["M"], "ef_construction": m["ef_construction"], "ef": m["ef"]}}


class ShimSearcher(Searcher):
    @classmethod
    def open(cls, index_dir, bundle=None, threads=None):
        from hbt.encoder import Encoder

        index = _Index(index_dir, 1)
        searcher = cls(Encoder(bundle or index.manifest["bundle"]["path"], threads=threads), index)
        searcher._lock = threading.Lock()
        return searcher

    def refresh(self) -> bool:
        with self._lock:
            try:
                manifest = read_index_manifest(Path(self.index.directory))
            except SearchIndexError:
                return False
            if manifest["files"] == self.index.manifest["files"]:
                return False
            self.index = _Index(self.index.directory, self.index.generation + 1)
            return True

    def run_vectors(self, vectors: np.ndarray, k: int = 10, ef=None, langs=None) -> SearchRun:
        if k <= 0:
            raise DataError(f"k = {k}: must be at least 1")
        index = self.index
        start = time.perf_counter()
        labels, scores = index.search(vectors, min(k, index.count), ef, langs)
        searched = time.perf_counter()
        documents = index.documents({int(label) for label in labels.ravel()})
        hits = []
        for row_labels, row_scores in zip(labels, scores):
            ranked = sorted(zip(row_scores, row_labels), key=lambda pair: (-float(pair[0]), documents[pair[1]].id))
            hits.append([Hit(rank, float(score), documents[label].id, documents[label].lang,
                             documents[label].text, documents[label].title)
                         for rank, (score, label) in enumerate(ranked, start=1)])
        done = time.perf_counter()
        return SearchRun(hits, "hnsw", {"search": (searched - start) * 1000, "fetch": (done - searched) * 1000})
