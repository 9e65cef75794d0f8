"""Search: a query encoder over an index snapshot, with ranked hits, the plan that ran and stage timings."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from hbt.errors import DataError
from hbt.index import Index
from hbt.index.writer import check_bundle


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    id: str
    lang: str
    text: str
    title: str


@dataclass(frozen=True)
class SearchRun:
    """Hits per query, the plan each segment ran, and milliseconds per stage (encode, search, fetch)."""

    hits: list[list[Hit]]
    plan: str
    timings: dict[str, float] = field(default_factory=dict)


def check_queries(queries: list[str]) -> None:
    """Refuse, in one line, a query the encoder cannot take: blank, or not valid Unicode."""
    for number, text in enumerate(queries, start=1):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"query {number} is blank: give text to search for")
        # A lone surrogate: half a JSON "\ud83d\ude00" pair, or bytes that are not UTF-8 in argv.
        surrogate = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
        if surrogate:
            raise DataError(f"query {number} holds U+{ord(surrogate):04X}, a lone surrogate, which is not text: "
                            "give valid UTF-8")


class Searcher:
    """Answers queries in any language with the documents nearest to them.

    It searches one commit of the index at a time; ``refresh()`` moves it to the newest
    commit, while calls already running finish on the snapshot they started with.
    """

    def __init__(self, encoder, index: Index):
        check_bundle(index.manifest, encoder, index.directory)
        self.encoder = encoder
        self.index = index
        self._refreshing = threading.Lock()

    @classmethod
    def open(cls, index_dir: Path | str, bundle: Path | str | None = None, threads: int | None = None) -> "Searcher":
        """Open an index and the bundle named in its manifest (or ``bundle``)."""
        from hbt.encoder import Encoder

        index = Index(index_dir)
        return cls(Encoder(bundle or index.manifest["bundle"]["path"], threads=threads), index)

    def refresh(self) -> bool:
        """Open the newest commit if the index changed since; True if it did."""
        with self._refreshing:
            newest = self.index.reopen()
            changed, self.index = newest is not self.index, newest
        return changed

    def search(self, queries: list[str], k: int = 10, ef: int | None = None,
               langs: Iterable[str] | None = None) -> list[list[Hit]]:
        return self.run(queries, k, ef, langs).hits

    def run(self, queries: list[str], k: int = 10, ef: int | None = None,
            langs: Iterable[str] | None = None) -> SearchRun:
        check_queries(queries)
        start = time.perf_counter()
        vectors = self.encoder.encode_queries(queries)
        encoded = time.perf_counter()
        run = self.run_vectors(vectors, k, ef, langs)
        return SearchRun(run.hits, run.plan, {"encode": (encoded - start) * 1e3} | run.timings)

    def run_vectors(self, vectors: np.ndarray, k: int = 10, ef: int | None = None,
                    langs: Iterable[str] | None = None) -> SearchRun:
        """Search already-encoded queries [Q, d]."""
        index = self.index  # one snapshot for the whole call, whatever refresh() does meanwhile
        start = time.perf_counter()
        ranking = index.search(vectors, k, ef, langs)
        searched = time.perf_counter()
        documents = index.documents(np.unique(ranking.keys))
        hits = []
        for keys, scores in zip(ranking.keys, ranking.scores):
            # Deterministic order: score, then document id.
            ranked = sorted(zip(scores.tolist(), keys.tolist()), key=lambda pair: (-pair[0], documents[pair[1]].id))
            hits.append([Hit(rank, score, documents[key].id, documents[key].lang, documents[key].text,
                             documents[key].title) for rank, (score, key) in enumerate(ranked, start=1)])
        fetched = time.perf_counter()
        return SearchRun(hits, "; ".join(ranking.plans),
                         {"search": (searched - start) * 1e3, "fetch": (fetched - searched) * 1e3})

