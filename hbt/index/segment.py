"""Segments: written once by SegmentWriter, then read (and searched) through SegmentView.

A segment's files never change. Deletes are tombstones, a sorted array of labels that
a view applies as a filter: graphs are never mutated in memory either, so a view of an
older commit keeps its answers while newer views share the same loaded graph.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
from array import array
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from hbt.bundle import sha256_file
from hbt.corpus import Document
from hbt.errors import DataError, SearchIndexError
from hbt.index import durable, language_graphs
from hbt.index.format import DOCS_FILE, GRAPH_FILE, LANGS_FILE, FileRecord, IndexConfig, SegmentEntry, passage_text
from hbt.index.graph import INSERT_BATCH, add_shuffled, load_graph, new_graph
from hbt.index.lexical import LEXICAL_FILE, LexicalWriter, open_lexical
from hbt.index.planner import ZEN4, Costs, Plan, choose_plan, exact_scores, widen

SQL_CHUNK = 900  # bound variables per statement: SQLite's limit is 999 in older builds
EXACT_CHUNK = 65_536  # vectors scored at a time when an exact scan is too large to cache


def chunked(items: list, size: int = SQL_CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def file_record(path: Path) -> FileRecord:
    durable.fsync_file(path)
    return FileRecord(sha256_file(path), path.stat().st_size)


class SegmentWriter:
    """Writes one segment directory: documents to SQLite, vectors to an HNSW graph, languages to an array,
    and with ``lexical`` the documents' pieces to the lexical part (``hbt.index.lexical``)."""

    def __init__(self, directory: Path, dimension: int, config: IndexConfig, lexical: LexicalWriter | None = None):
        self.directory, self.config, self.lexical = directory, config, lexical
        directory.mkdir()
        self.db = sqlite3.connect(str(directory / DOCS_FILE))
        # The file is fsynced once, when the segment is finished; a crash before then leaves garbage
        # that no commit names, so SQLite's own journal and syncs would only cost time.
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute("CREATE TABLE docs (label INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                        "text TEXT NOT NULL, title TEXT, lang TEXT, meta TEXT)")
        self.graph = new_graph(dimension, min(config.segment_size, 4096), config)
        self.language_codes: dict[str, int] = {}
        self.langs = array("H")
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    @property
    def count(self) -> int:
        return len(self.langs)

    def add(self, docs: list[Document], vectors: np.ndarray, pieces: list[np.ndarray] | None = None) -> None:
        """Documents and their vectors [n, d]; ``pieces``: their lexical terms, if not tokenized here."""
        labels = np.arange(self.count, self.count + len(docs))
        try:
            self.db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?)", [
                (int(label), d.id, d.text, d.title, d.lang, json.dumps(d.meta, ensure_ascii=False))
                for label, d in zip(labels, docs)
            ])
        except sqlite3.IntegrityError:
            raise DataError(f"duplicate document id {_first_repeat(self.db, docs)!r}; ids must be unique "
                            "in an index") from None
        for doc in docs:
            self.langs.append(self.language_codes.setdefault(doc.lang, len(self.language_codes)))
        if self.lexical is not None:
            self.lexical.add(pieces if pieces is not None else self.lexical.pieces([passage_text(d) for d in docs]))
        self._pending.append((vectors, labels))
        if sum(len(labels) for _, labels in self._pending) >= INSERT_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            add_shuffled(self.graph, np.vstack([v for v, _ in self._pending]),
                         np.concatenate([labels for _, labels in self._pending]), self.config.threads)
            self._pending = []

    def finish(self) -> SegmentEntry:
        """Write and sync the segment's files; the entry a commit lists it by."""
        self._flush()
        self.db.commit()
        self.db.close()
        self.graph.save_index(str(self.directory / GRAPH_FILE))
        label_codes = np.frombuffer(self.langs, dtype=np.uint16)  # each label's language code
        np.save(self.directory / LANGS_FILE, label_codes)
        if self.lexical is not None:
            self.lexical.finish(self.directory / LEXICAL_FILE)
        counts = np.bincount(label_codes, minlength=len(self.language_codes))
        codes = sorted(self.language_codes, key=self.language_codes.get)
        languages = {lang: int(n) for lang, n in zip(codes, counts) if n}
        graphs = language_graphs.write_language_graphs(self.directory, self.graph, label_codes, codes, languages,
                                                       self.config)
        files = {name: file_record(self.directory / name) for name in (GRAPH_FILE, DOCS_FILE, LANGS_FILE)
                 + ((LEXICAL_FILE,) if self.lexical is not None else ()) + tuple(graphs)}
        durable.fsync_dir(self.directory)
        return SegmentEntry(self.directory.name, self.count, 0, None, tuple(codes), languages, files)

    def close(self) -> None:
        self.db.close()


def _first_repeat(db: sqlite3.Connection, docs: list[Document]) -> str:
    seen = set()
    for doc in docs:
        if doc.id in seen:
            return doc.id
        seen.add(doc.id)
    stored = db.execute(f"SELECT id FROM docs WHERE id IN ({','.join('?' * len(docs))})",
                        [d.id for d in docs[:SQL_CHUNK]]).fetchone()
    return stored[0] if stored else docs[0].id


class Segment:
    """A segment's immutable files, opened: the graph and languages in memory, documents on demand.

    Everything a search may read is loaded or held open here, so a snapshot keeps working
    after a compaction or a merge removes the files (Linux keeps an open file's data).
    """

    def __init__(self, directory: Path, entry: SegmentEntry, dimension: int):
        self.directory, self.name, self.count = directory, entry.name, entry.count
        self.dimension = dimension
        self.language_codes, self.language_graph_files = entry.language_codes, entry.language_graphs
        for name in (GRAPH_FILE, DOCS_FILE, LANGS_FILE, *self.language_graph_files.values()):
            _check_size(directory / name, entry.files[name].bytes)
        self.codes = load_array(directory / LANGS_FILE)  # [count] each label's language code
        if self.codes.shape != (self.count,) or self.codes.dtype != np.uint16 or (
                self.count and self.codes.max() >= max(len(self.language_codes), 1)):
            raise SearchIndexError(f"{directory / LANGS_FILE}: not {self.count} language codes below "
                                   f"{len(self.language_codes)}; the index is damaged: restore it or rebuild with "
                                   "hbt-index build")
        self.db = sqlite3.connect(f"{(directory / DOCS_FILE).resolve().as_uri()}?mode=ro", uri=True,
                                  check_same_thread=False)
        self.lexical = open_lexical(directory, entry)  # memory-mapped; None in a segment written before them
        self.lock = threading.Lock()  # one SQLite connection, and hnswlib's ef is per graph, not per query
        self._graph = None
        self._language_graphs: dict[str, object] | None = None

    @property
    def graph(self):
        """The HNSW graph, read at first use (writers that only look documents up never read it)."""
        if self._graph is None:
            self._graph = load_graph(self.directory / GRAPH_FILE, self.dimension, self.count)
        return self._graph

    @property
    def language_graphs(self) -> dict[str, object]:
        """The per-language graphs by language (``hbt.index.language_graphs``), read at first use."""
        if self._language_graphs is None:
            self._language_graphs = language_graphs.load_language_graphs(self, self.language_graph_files)
        return self._language_graphs

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(self.graph.get_items(labels), dtype=np.float32).reshape(len(labels), -1)

    def knn(self, queries: np.ndarray, k: int, ef: int, graph=None) -> tuple[np.ndarray, np.ndarray]:
        """Labels and similarities [Q, k] from the graph (or one of its language graphs)."""
        graph = self.graph if graph is None else graph
        with self.lock:
            graph.set_ef(ef)
            labels, distances = graph.knn_query(queries, k=k)
        return labels.astype(np.int64), 1.0 - distances

    def query(self, sql: str, values: list) -> list[tuple]:
        with self.lock:
            try:
                return self.db.execute(sql, values).fetchall()
            except sqlite3.DatabaseError as e:
                raise SearchIndexError(f"{self.directory / DOCS_FILE}: {e}; the index is damaged: restore it "
                                       "or rebuild with hbt-index build") from e

    def documents(self, labels: Iterable[int]) -> dict[int, Document]:
        found = {}
        for part in chunked([int(label) for label in labels]):
            rows = self.query(f"SELECT label, id, text, title, lang, meta FROM docs WHERE label IN "
                              f"({','.join('?' * len(part))})", part)
            found.update({row[0]: Document(row[1], row[2], row[3], row[4], json.loads(row[5])) for row in rows})
        return found

    def find(self, ids: list[str]) -> list[tuple[str, int, str]]:
        """(id, label, language) of the given ids stored here, deleted or not."""
        found = []
        for part in chunked(ids):
            found += self.query(f"SELECT id, label, lang FROM docs WHERE id IN ({','.join('?' * len(part))})", part)
        return found

    def close(self) -> None:
        self.db.close()


def _check_size(path: Path, expected: int) -> None:
    """A file the manifest names, at its size (FileNotFoundError: a reader retries on the newer commit)."""
    size = path.stat().st_size
    if size != expected:
        raise SearchIndexError(f"{path}: {size} bytes, the manifest says {expected}; the index is damaged: "
                               "restore it or rebuild with hbt-index build")


def load_array(path: Path) -> np.ndarray:
    """A .npy file of the index; one that numpy cannot read (zeroed, cut, pickled) is damage, in one line."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:
        raise SearchIndexError(f"{path}: not a readable array ({e}); the index is damaged: restore it or rebuild "
                               "with hbt-index build") from e


def load_tombstones(directory: Path, entry: SegmentEntry) -> np.ndarray:
    if not entry.tombstones:
        return np.zeros(0, dtype=np.int64)
    path = directory / entry.tombstones
    _check_size(path, entry.files[entry.tombstones].bytes)
    deleted = load_array(path)
    if (not np.issubdtype(deleted.dtype, np.integer) or deleted.ndim != 1 or len(deleted) != entry.deleted
            or np.any(np.diff(deleted) <= 0) or (len(deleted) and not 0 <= deleted[0] <= deleted[-1] < entry.count)):
        raise SearchIndexError(f"{path}: not the {entry.deleted} sorted labels the manifest says; "
                               "the index is damaged: restore it or rebuild with hbt-index build")
    return deleted.astype(np.int64)


class SegmentView:
    """A segment as one commit sees it: its tombstones applied, searched by the planner's choice.

    Exact scans keep each language's block of live vectors for the next query, and a
    filter combines the blocks of its languages: the cache holds at most one copy of the
    segment's live vectors however many language subsets are asked for (a cache keyed by
    subset would grow with 2^languages).
    """

    def __init__(self, segment: Segment, entry: SegmentEntry, deleted: np.ndarray):
        self.segment, self.entry, self.deleted = segment, entry, deleted
        self.languages = entry.languages  # live documents per language
        self.live_mask = np.ones(segment.count, dtype=bool)  # [count]
        self.live_mask[deleted] = False
        self._blocks: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # language -> live labels [n], vectors [n, d]

    @property
    def live(self) -> int:
        return self.entry.live

    def pool(self, langs: frozenset | None) -> int:
        return self.live if langs is None else sum(self.languages.get(lang, 0) for lang in langs)

    def _in_languages(self, langs: frozenset) -> np.ndarray:
        """Which language codes the filter admits: [codes] bool, indexed by code."""
        return np.array([lang in langs for lang in self.segment.language_codes] or [False], dtype=bool)

    def admitted(self, langs: frozenset | None) -> np.ndarray:
        """Which labels the filter admits: live, and in one of ``langs``. [count] bool (do not modify)."""
        if langs is None:
            return self.live_mask
        return self.live_mask & self._in_languages(langs)[self.segment.codes]

    def label_filter(self, langs: frozenset | None) -> Callable[[np.ndarray], np.ndarray] | None:
        """``admitted(langs)[labels]`` as a function of the labels a search reads (it costs what they cost, not the
        segment's size); None where every label is admitted: no filter and no tombstones."""
        if langs is not None:
            return functools.partial(self._admits, langs=langs)
        return self.live_mask.__getitem__ if len(self.deleted) else None

    def _admits(self, labels: np.ndarray, langs: frozenset) -> np.ndarray:
        """``admitted(langs)[labels]``, computed for those labels alone. Same shape as labels."""
        in_languages = self._in_languages(langs)[self.segment.codes[labels]]
        return in_languages & self.live_mask[labels] if len(self.deleted) else in_languages  # no tombstones: all live

    def search(self, queries: np.ndarray, k: int, ef: int, langs: frozenset | None,
               exact: bool = False, costs: Costs = ZEN4) -> tuple[np.ndarray, np.ndarray, Plan]:
        """Similarities and labels [Q, min(k, pool)] of the best admitted documents, best first."""
        plan = choose_plan(self.pool(langs), self.segment.count, k, ef, exact, costs)
        if langs is not None and not exact and plan.kind != "skip" and self.segment.language_graphs:
            found = language_graphs.search(self, queries, k, ef, langs, plan, costs)
            if found is not None:
                return found
        return self.run(queries, k, langs, plan, costs, cache=not exact)

    def run(self, queries: np.ndarray, k: int, langs: frozenset | None, plan: Plan, costs: Costs = ZEN4,
            cache: bool = True) -> tuple[np.ndarray, np.ndarray, Plan]:
        """``plan`` carried out on the main graph (widened if it comes back short) or by an exact scan."""
        pool = self.pool(langs)
        k = min(k, pool)
        if plan.kind == "skip":
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), plan
        if plan.kind == "hnsw":
            labels, scores = self.segment.knn(queries, k, plan.ef)
            return scores, labels, plan
        while plan.kind != "exact":
            labels, scores = self.segment.knn(queries, plan.fetch, plan.ef)
            keep = self._admits(labels, langs) if langs is not None else self.live_mask[labels]  # [Q, fetch]
            if (keep.sum(axis=1) >= k).all():
                first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # admitted ones, in graph order
                return np.take_along_axis(scores, first, 1), np.take_along_axis(labels, first, 1), plan
            plan = widen(plan, self.segment.count, pool, costs)
        scores, labels = self._exact(queries, k, langs, cache)
        return scores, labels, plan

    def _block(self, language: str) -> tuple[np.ndarray, np.ndarray]:
        """One language's live labels [n] and their vectors [n, d], kept for the next scan."""
        if language not in self._blocks:
            code = self.segment.language_codes.index(language)
            labels = np.flatnonzero(self.live_mask & (self.segment.codes == code))
            self._blocks.setdefault(language, (labels, self.segment.vectors(labels)))
        return self._blocks[language]

    def _exact(self, queries: np.ndarray, k: int, langs: frozenset | None,
               cache: bool) -> tuple[np.ndarray, np.ndarray]:
        if cache:  # the planner chose a scan, so the pool is small: its languages' blocks are worth keeping
            blocks = [self._block(lang) for lang in self.segment.language_codes
                      if (langs is None or lang in langs) and self.languages.get(lang)]
        else:  # a forced scan of a large segment: a chunk at a time, nothing kept
            parts = np.array_split(np.flatnonzero(self.admitted(langs)), max(1, self.pool(langs) // EXACT_CHUNK))
            blocks = ((part, self.segment.vectors(part)) for part in parts)
        best_scores, best_labels = [], []
        for labels, vectors in blocks:
            scores = exact_scores(queries, vectors)  # [Q, block]
            top = _top_k(scores, labels, k)
            best_scores.append(np.take_along_axis(scores, top, 1))
            best_labels.append(labels[top])  # [Q, k]
        scores, labels = np.hstack(best_scores), np.hstack(best_labels)
        top = _top_k(scores, labels, k)
        return np.take_along_axis(scores, top, 1), np.take_along_axis(labels, top, 1)


def _top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best, by score then label: [Q, k] (labels broadcast to scores)."""
    k = min(k, scores.shape[1])
    labels = np.broadcast_to(labels, scores.shape)
    if scores.shape[1] > 4 * k:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [Q, k], unordered
        chosen = np.take_along_axis(scores, candidates, 1)
        # A score tied with the k-th outside the candidates needs the full sort's label tie-break.
        if np.count_nonzero(scores >= chosen.min(axis=1, keepdims=True)) == scores.shape[0] * k:
            order = np.lexsort((np.take_along_axis(labels, candidates, 1), -chosen), axis=1)
            return np.take_along_axis(candidates, order, 1)
    return np.lexsort((labels, -scores), axis=1)[:, :k]
