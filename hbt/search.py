"""Search: a query encoder over an index snapshot, with ranked hits, the plan that ran and stage timings.

Three ways to rank (``SearchMode``): ``dense`` (the encoder's vectors), ``lexical`` (BM25
over the bundle tokenizer's pieces, ``hbt.index.lexical``) and ``hybrid`` (both, fused by
``hbt.fusion``). ``auto``, the default, follows the measurements in bench/reports/lexical:
hybrid helps when the query and the pool share one language (mono: +.026 mAP on MLQA-R
test zero-shot, +.029 with the recipe) and costs accuracy across languages (a query in
one language over a pool of another: -.004 on MLQA-R, -.009 on XQuAD-R; the multilingual
pool: -.004 to -.016). A language filter alone cannot tell the two apart; the query's
language (``SearchMode.query_lang``) can. So auto is hybrid when the queries' language is
given, the search is restricted to exactly that language and the index has its lexical
parts, dense otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np

from hbt.errors import DataError
from hbt.fusion import convex_fusion, reciprocal_rank_fusion
from hbt.index import Index, IndexSnapshot, Ranking, check_bundle, fan_out, has_lexical, text_pieces

MODES = ("auto", "dense", "lexical", "hybrid")
FUSIONS = ("convex", "rrf")
LEXICAL_WEIGHT = 0.3  # chosen on MLQA-R dev, confirmed on test (bench/reports/lexical): mono +0.024 mAP
FUSION_DEPTH = 100  # each side's candidates that hybrid fuses, as measured


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
    """Hits per query, the plan each segment ran, and milliseconds per stage (encode, search, lexical, fuse, fetch)."""

    hits: list[list[Hit]]
    plan: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchMode:
    """How to rank: ``mode`` (auto, dense, lexical, hybrid), and for hybrid the ``fusion`` (convex: a
    convex combination of min-max normalized scores with ``lexical_weight``; rrf: reciprocal rank fusion)."""

    mode: str = "auto"
    lexical_weight: float = LEXICAL_WEIGHT
    fusion: str = "convex"
    query_lang: str | None = None  # the queries' language: auto fuses only when the search is restricted to it

    def __post_init__(self):
        if self.mode not in MODES:
            raise DataError(f"mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.fusion not in FUSIONS:
            raise DataError(f"fusion {self.fusion!r}: choose one of {', '.join(FUSIONS)}")
        if not 0.0 <= self.lexical_weight <= 1.0:
            raise DataError(f"lexical weight {self.lexical_weight}: it must lie in [0, 1]")
        if self.query_lang is not None and (not isinstance(self.query_lang, str) or not self.query_lang.strip()):
            raise DataError(f"query language {self.query_lang!r}: give a language code, such as de, or none")

    def resolve(self, langs: Iterable[str] | None, index: IndexSnapshot) -> str:
        """The mode that runs: auto is hybrid when the search is restricted to exactly the queries' language
        (``query_lang``) in an index with lexical parts, dense otherwise."""
        if self.mode != "auto":
            return self.mode
        mono = self.query_lang is not None and set(langs or ()) == {self.query_lang}
        return "hybrid" if mono and has_lexical(index.manifest) else "dense"

    def describe(self, chosen: str) -> str:
        """The mode that ran, and for auto why: the plan's first words."""
        fused = f" ({self.fusion}" + (f", lexical weight {self.lexical_weight:g})" if self.fusion == "convex" else ")")
        why = self._why(chosen) if self.mode == "auto" else ""
        return f"mode {chosen}" + (fused if chosen == "hybrid" else "") + why

    def _why(self, chosen: str) -> str:
        if chosen == "hybrid":
            return f" by auto (query language {self.query_lang}, searched alone)"
        if self.query_lang is None:
            return " by auto (query language not given)"
        return f" by auto (query language {self.query_lang}: not the only language searched, or no lexical parts)"


class SearchRequest(Protocol):
    """One request of a batch: its query texts and how to search them (``hbt.serve``'s Query is one).

    A request may also carry ``mode`` (a ``SearchMode``, or its name; without one it runs ``auto``) and
    ``query_lang`` (its queries' language, which ``auto`` needs to fuse).
    """

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


def as_mode(mode: SearchMode | str | None, query_lang: str | None = None) -> SearchMode:
    """A ``SearchMode`` from one or its name (None: auto); ``query_lang``, when given, is the queries' language."""
    mode = mode if isinstance(mode, SearchMode) else SearchMode(mode or "auto")
    return dataclasses.replace(mode, query_lang=query_lang) if query_lang is not None else mode


def _timed(call):
    """A call's result, and the milliseconds it took."""
    start = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - start) * 1e3


def fuse(dense: Ranking, lexical: Ranking, k: int, mode: SearchMode) -> tuple[list[list[int]], list[list[float]]]:
    """Each query's k best keys and fused scores from both sides' candidates (lexical padding left out)."""
    keys, scores = [], []
    for q in range(len(dense.keys)):
        dense_side = list(zip(dense.keys[q].tolist(), dense.scores[q].tolist()))
        lexical_side = [(key, score) for key, score in zip(lexical.keys[q].tolist(), lexical.scores[q].tolist())
                        if key >= 0]
        if mode.fusion == "rrf":
            fused = reciprocal_rank_fusion([[key for key, _ in dense_side], [key for key, _ in lexical_side]],
                                           limit=k)
        else:
            fused = convex_fusion(dense_side, lexical_side, mode.lexical_weight, limit=k)
        keys.append([key for key, _ in fused])
        scores.append([score for _, score in fused])
    return keys, scores


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
               langs: Iterable[str] | None = None, mode: SearchMode | str = "auto") -> list[list[Hit]]:
        return self.run(queries, k, ef, langs, mode).hits

    def run(self, queries: list[str], k: int = 10, ef: int | None = None,
            langs: Iterable[str] | None = None, mode: SearchMode | str = "auto") -> SearchRun:
        """Search ``queries``; ``mode`` is a ``SearchMode`` or its name (auto, dense, lexical, hybrid)."""
        check_queries(queries)
        mode, index = as_mode(mode), self.index  # one snapshot for the whole call
        chosen = mode.resolve(langs, index)
        start = time.perf_counter()
        vectors = self.encoder.encode_queries(queries) if chosen != "lexical" else None
        encoded = time.perf_counter()
        run = self._run(index, queries, vectors, k, ef, langs, mode, chosen)
        return SearchRun(run.hits, run.plan, ({"encode": (encoded - start) * 1e3} if vectors is not None else {})
                         | run.timings)

    def run_batch(self, requests: Sequence[SearchRequest]) -> list[SearchRun | Exception]:
        """Answer several requests with one encoder call for all their texts: a run per request, in order.

        A failure stays with its request: if the batch's encoding fails, each request is
        encoded alone, and an error while searching is that request's result, not a raise.
        Requests that run lexical alone are not encoded.
        """
        index = self.index
        plans: list[tuple[SearchMode, str] | Exception] = []
        for request in requests:
            try:
                mode = as_mode(getattr(request, "mode", None), getattr(request, "query_lang", None))
                plans.append((mode, mode.resolve(request.langs, index)))
            except DataError as e:
                plans.append(e)
        dense = [r for r, plan in zip(requests, plans) if not isinstance(plan, Exception) and plan[1] != "lexical"]
        start = time.perf_counter()
        try:
            vectors = self.encoder.encode_queries([text for request in dense for text in request.texts])
            rows = itertools.accumulate((len(request.texts) for request in dense), initial=0)
            encoded: list = [vectors[a:b] for a, b in itertools.pairwise(rows)]
        except Exception:
            encoded = [self._encode_alone(request.texts) for request in dense]
        encode_ms = (time.perf_counter() - start) * 1000
        by_request = {id(request): request_vectors for request, request_vectors in zip(dense, encoded)}
        runs: list[SearchRun | Exception] = []
        for request, plan in zip(requests, plans):
            request_vectors = by_request.get(id(request))
            if isinstance(plan, Exception) or isinstance(request_vectors, Exception):
                runs.append(plan if isinstance(plan, Exception) else request_vectors)
                continue
            try:
                run = self._run(index, request.texts, request_vectors, request.k, request.ef, request.langs, *plan)
                timings = run.timings if request_vectors is None else {"encode": encode_ms, **run.timings}
                runs.append(dataclasses.replace(run, timings=timings))
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
        """Search already-encoded queries [Q, d], densely."""
        return self._run(self.index, None, vectors, k, ef, langs, SearchMode("dense"), "dense")

    def _run(self, index: IndexSnapshot, texts: list[str] | None, vectors: np.ndarray | None, k: int,
             ef: int | None, langs: Iterable[str] | None, mode: SearchMode, chosen: str) -> SearchRun:
        """Search one snapshot in the ``chosen`` mode: each side, the fusion, then the documents."""
        if k <= 0:
            raise DataError(f"k = {k}: must be at least 1")
        depth = max(k, FUSION_DEPTH) if chosen == "hybrid" else k  # hybrid fuses each side's top FUSION_DEPTH
        sides = {}  # stage name -> the search of that side
        if chosen != "lexical":
            sides["search"] = functools.partial(index.search, vectors, depth, ef, langs)
        if chosen != "dense":
            sides["lexical"] = lambda: index.search_lexical(text_pieces(self.encoder.tokenizer, texts), depth, langs)
        found = fan_out([functools.partial(_timed, side) for side in sides.values()])  # side by side if threads allow
        timings = {name: ms for name, (_, ms) in zip(sides, found)}
        rankings = [ranking for ranking, _ in found]
        plans = [mode.describe(chosen), *(plan for ranking in rankings for plan in ranking.plans)]
        start = time.perf_counter()
        if chosen == "hybrid":
            keys, scores = fuse(*rankings, k, mode)
            timings["fuse"] = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
        else:
            ranking = rankings[0]
            keys = [[key for key in row if key >= 0] for row in ranking.keys.tolist()]
            scores = [row[: len(row_keys)] for row, row_keys in zip(ranking.scores.tolist(), keys)]
        documents = {key: doc for ranking in rankings for key, doc in ranking.documents.items()}
        missing = {key for row in keys for key in row} - set(documents)
        documents.update(index.documents(sorted(missing)) if missing else {})
        hits = []
        for row_keys, row_scores in zip(keys, scores):
            # Deterministic order: score, then document id.
            ranked = sorted(zip(row_scores, row_keys), key=lambda pair: (-pair[0], documents[pair[1]].id))
            hits.append([Hit(rank, score, documents[key].id, documents[key].lang, documents[key].text,
                             documents[key].title) for rank, (score, key) in enumerate(ranked, start=1)])
        timings["fetch"] = (time.perf_counter() - start) * 1e3
        return SearchRun(hits, "; ".join(plans), timings)
