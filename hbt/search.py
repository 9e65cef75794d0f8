"""Search: a query encoder over an index snapshot, with ranked hits, the plan that ran and stage timings."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from hbt.errors import DataError
from hbt.index import Index, IndexSnapshot, check_bundle


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


class SearchRequest(Protocol):
    """One request of a batch: its query texts and how to search them (``hbt.serve``'s Query is one)."""

    texts: list[str]
    k: int
    ef: int | None
    langs: Iterable[str] | None


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

    def __init__(self, encoder, index: IndexSnapshot):
        check_bundle(index.manifest, encoder, index.directory)
        self.encoder = encoder
        self.index = index
        self._refreshing = threading.Lock()

    @classmethod
    def open(cls, index_dir: Path | str, bundle: Path | str | None = None, threads: int | None = None) -> "Searcher":
        """Open an index and the bundle named in its manifest (or ``bundle``)."""
        from hbt.encoder import Encoder

        index = Index(index_dir)
        return cls(Encoder(bundle or index.bundle.path, threads=threads), index)

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

    def run_batch(self, requests: Sequence[SearchRequest]) -> list[SearchRun | Exception]:
        """Answer several requests with one encoder call for all their texts: a run per request, in order.

        A failure stays with its request: if the batch's encoding fails, each request is
        encoded alone, and an error while searching is that request's result, not a raise.
        """
        start = time.perf_counter()
        try:
            vectors = self.encoder.encode_queries([text for request in requests for text in request.texts])
            rows = itertools.accumulate((len(request.texts) for request in requests), initial=0)
            encoded: list = [vectors[a:b] for a, b in itertools.pairwise(rows)]
        except Exception:
            encoded = [self._encode_alone(request.texts) for request in requests]
        encode_ms = (time.perf_counter() - start) * 1000
        runs: list[SearchRun | Exception] = []
        for request, request_vectors in zip(requests, encoded):
            if isinstance(request_vectors, Exception):
                runs.append(request_vectors)
                continue
            try:
                run = self.run_vectors(request_vectors, request.k, request.ef, request.langs)
                runs.append(dataclasses.replace(run, timings={"encode": encode_ms, **run.timings}))
            except Exception as e:
                runs.append(e)
        return runs

    def _encode_alone(self, texts: list[str]) -> np.ndarray | Exception:
        """One request's vectors, or the exception encoding them raised."""
        try:
            return self.encoder.encode_queries(texts)
        except Exception as e:
            return e

    def run_vectors(self, vectors: np.ndarray, k: int = 10, ef: int | None = None,
                    langs: Iterable[str] | None = None) -> SearchRun:
        """Search already-encoded queries [Q, d]."""
        index = self.index  # one snapshot for the whole call, whatever refresh() does meanwhile
        start = time.perf_counter()
        ranking = index.search(vectors, k, ef, langs)
        searched = time.perf_counter()
        documents = ranking.documents or index.documents(np.unique(ranking.keys))
        hits = []
        for keys, scores in zip(ranking.keys, ranking.scores):
            # Deterministic order: score, then document id.
            ranked = sorted(zip(scores.tolist(), keys.tolist()), key=lambda pair: (-pair[0], documents[pair[1]].id))
            hits.append([Hit(rank, score, documents[key].id, documents[key].lang, documents[key].text,
                             documents[key].title) for rank, (score, key) in enumerate(ranked, start=1)])
        fetched = time.perf_counter()
        return SearchRun(hits, "; ".join(ranking.plans),
                         {"search": (searched - start) * 1e3, "fetch": (fetched - searched) * 1e3})

