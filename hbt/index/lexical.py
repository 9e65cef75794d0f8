"""A segment's lexical index: BM25 over the bundle tokenizer's SentencePiece pieces, in one immutable file.

The terms are piece ids, so every script the encoder reads is searchable with no
per-language analyser (Chinese, Japanese and Thai are never split on spaces). The
scores are precomputed per posting, as bm25s does ("eager" BM25): a query sums a
few posting lists into one array, with no per-document arithmetic. The file::

    HBTLEX1\\n | header length (uint64) | header (JSON) | arrays, each 64-byte aligned
    terms    int32   [T]     the piece ids present, ascending
    offsets  int64   [T+1]   term i's postings are offsets[i] .. offsets[i+1]
    rows     int32   [P]     documents holding the term (segment labels), ascending
    weights  float32 [P]     tf (k1 + 1) / (tf + k1 (1 - b + b len / average len)): BM25 less the idf
    counts   uint16  [P]     tf, capped at 65535: a merge rebuilds the documents' pieces from it, with no tokenizer

The idf is left out so that a query can take it from the whole collection (every
segment's document frequencies, summed): scores of different segments then compare.
A segment holds the file as ``lexical.bin`` beside its graph; indexes built before it
have none until ``hbt-index upgrade`` adds it (``has_lexical``).
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hbt.bundle import check_fingerprint
from hbt.bundle import read_manifest as read_bundle_manifest
from hbt.errors import DataError, SearchIndexError
from hbt.index.format import LEXICAL_FILE, Manifest, SegmentEntry
from hbt.index.snapshot import Ranking, document_key
from hbt.tokenizer import Tokenizer

MAGIC = b"HBTLEX1\n"
ALIGN = 64
K1, B = 1.2, 0.75  # Lucene's and FTS5's defaults
# Query pieces held by more than this share of the documents are left out (``▁the``, ``▁,``): their
# postings are most of a query's cost, their idf is small. bench/reports/lexical holds the choice.
MAX_DF = 0.05
# ... but only pieces held by more than this many documents: shorter posting lists cost microseconds, and in a
# small index the share would leave out most pieces (5% of 40 documents is 2). The measured pools (MLQA-R's,
# thousands of documents per language) are above it, so it changes none of the figures.
DF_FLOOR = 100
ARRAYS = {"terms": np.int32, "offsets": np.int64, "rows": np.int32, "weights": np.float32, "counts": np.uint16}
MAX_COUNT = np.iinfo(np.uint16).max
# Upper bounds of scores are raised by this factor before a document is judged unable to reach the k-th:
# float64 sums of float32 terms in a different order may differ in the last bits, never by 1e-9.
BOUND_MARGIN = 1 + 1e-9
# A search round costs a few tens of numpy calls, as much as summing thousands of postings: the first
# round reads the rarest terms up to this many postings, each later one GROWTH times as many as before.
FIRST_ROUND, GROWTH = 4096, 4


def text_pieces(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Each text's piece ids (int32), untruncated, without bos, eos or unk: the lexical terms."""
    unk = tokenizer.spec.unk_id  # stands for any unknown character: it would match unrelated texts
    ids, _ = tokenizer.encode(texts, max_length=None)
    return [inner[inner != unk].astype(np.int32) for inner in (i[1:-1] for i in ids)]


def bundle_tokenizer(bundle_dir: Path | str, recorded: str | None = None, where: Path | None = None) -> Tokenizer:
    """A bundle's tokenizer alone, no model. With ``recorded`` (an index's bundle fingerprint), the
    bundle is verified and must be the one the index ``where`` was built with."""
    manifest = read_bundle_manifest(bundle_dir, verify=recorded is not None)
    if recorded is not None:
        check_fingerprint(recorded, manifest, Path(bundle_dir), where)
    return Tokenizer(Path(bundle_dir) / manifest.tokenizer.file, manifest.tokenizer)


def idf(frequencies: np.ndarray, documents: int) -> np.ndarray:
    """BM25's idf as Lucene computes it, never negative: ln(1 + (N - df + 0.5) / (df + 0.5))."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    return np.log1p((documents - frequencies + 0.5) / (frequencies + 0.5)).astype(np.float32)


@dataclass(frozen=True)
class LexicalQuery:
    """The terms a query searches for, with their idf; ``dropped`` counts the frequent ones left out."""

    terms: np.ndarray  # int32 [t], ascending, distinct
    weights: np.ndarray  # float32 [t]
    dropped: int


def plan_query(pieces: np.ndarray, frequencies: np.ndarray, documents: int, max_df: float = MAX_DF) -> LexicalQuery:
    """The query for ``pieces``, given each distinct piece's document frequency in the collection.

    ``frequencies`` is aligned with ``np.unique(pieces)``. Pieces no document holds are left
    out; so are those above ``max_df`` of the documents, unless every piece is: then the
    rarest one stays, so that a query of common words still finds something.
    """
    terms = np.unique(np.asarray(pieces, dtype=np.int32))
    frequencies = np.asarray(frequencies, dtype=np.int64)
    present = frequencies > 0
    keep = present & (frequencies <= max_df * documents)
    if present.any() and not keep.any():
        keep[np.flatnonzero(present)[np.argmin(frequencies[present])]] = True
    return LexicalQuery(terms[keep], idf(frequencies[keep], documents), int(present.sum() - keep.sum()))


class LexicalWriter:
    """Collects the pieces of a segment's documents, in label order, and writes the lexical file.

    With a ``tokenizer`` (the bundle's), ``add_texts`` takes the documents' texts; a merge
    gives the pieces themselves (``LexicalIndex.document_pieces``), so it needs no bundle.
    """

    def __init__(self, tokenizer=None, k1: float = K1, b: float = B):
        self.tokenizer, self.k1, self.b = tokenizer, k1, b
        self._rows: list[np.ndarray] = []
        self._terms: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []

    @property
    def count(self) -> int:
        return sum(len(lengths) for lengths in self._lengths)

    def add(self, pieces: list[np.ndarray]) -> None:
        """The next documents' pieces; their rows (labels) follow the documents already added."""
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        rows = np.repeat(np.arange(self.count, self.count + len(pieces), dtype=np.int64), lengths)
        terms = np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces]) if pieces else rows
        # One (row, term) key per occurrence; unique() sorts by row, then term, and counts repeats.
        keys, counts = np.unique((rows << 32) | terms, return_counts=True)
        self._rows.append((keys >> 32).astype(np.int32))
        self._terms.append((keys & 0xFFFFFFFF).astype(np.int32))
        self._counts.append(counts.astype(np.float32))
        self._lengths.append(lengths)

    def pieces(self, texts: list[str]) -> list[np.ndarray]:
        """Documents' pieces, from their passage texts, by the writer's tokenizer."""
        return text_pieces(self.tokenizer, texts)

    def finish(self, path: Path) -> None:
        """Write the file (not synced: the segment syncs its files when it is finished)."""
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        rows, terms, tf = (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
                           for parts in (self._rows, self._terms, self._counts))
        average = float(lengths.mean()) if len(lengths) and lengths.any() else 1.0
        norm = (self.k1 * (1 - self.b + self.b * lengths / average)).astype(np.float32)
        weights = tf * np.float32(self.k1 + 1) / (tf + norm[rows])
        order = np.argsort(terms, kind="stable")  # stable: rows stay ascending within each term
        rows, terms, weights = rows[order], terms[order], weights[order].astype(np.float32)
        distinct, starts = np.unique(terms, return_index=True)
        arrays = {"terms": distinct.astype(np.int32), "offsets": np.append(starts, len(rows)).astype(np.int64),
                  "rows": rows.astype(np.int32), "weights": weights,
                  "counts": np.minimum(tf[order], MAX_COUNT).astype(np.uint16)}
        header = {"documents": len(lengths), "k1": self.k1, "b": self.b, "average_length": average, "arrays": {}}
        position = 0
        for name, array in arrays.items():
            header["arrays"][name] = [position, len(array)]
            position += -(-array.nbytes // ALIGN) * ALIGN
        header["bytes"] = position  # of the arrays: a cut file is refused at open
        encoded = json.dumps(header).encode()
        start = -(-(len(MAGIC) + 8 + len(encoded)) // ALIGN) * ALIGN
        with open(path, "wb") as out:
            out.write(MAGIC + struct.pack("<Q", len(encoded)) + encoded)
            for name, array in arrays.items():
                out.seek(start + header["arrays"][name][0])
                out.write(array.tobytes())
            out.truncate(start + position)


def write_lexical(path: Path, pieces: Iterable[np.ndarray], k1: float = K1, b: float = B) -> None:
    """The lexical file of documents 0, 1, ... holding ``pieces``."""
    writer = LexicalWriter(None, k1, b)
    writer.add(list(pieces))
    writer.finish(path)


class LexicalIndex:
    """A lexical file, memory-mapped: it stays readable after the file is removed, as a snapshot needs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            if self._map[: len(MAGIC)] != MAGIC:
                raise ValueError("not a lexical index file")
            (size,) = struct.unpack("<Q", self._map[len(MAGIC) : len(MAGIC) + 8])
            header = json.loads(self._map[len(MAGIC) + 8 : len(MAGIC) + 8 + size])
            start = -(-(len(MAGIC) + 8 + size) // ALIGN) * ALIGN
            if len(self._map) != start + header["bytes"]:
                raise ValueError(f"{len(self._map)} bytes, the header says {start + header['bytes']}")
            arrays = {name: np.frombuffer(self._map, dtype=dtype, count=header["arrays"][name][1],
                                          offset=start + header["arrays"][name][0]) if header["arrays"][name][1]
                      else np.zeros(0, dtype=dtype) for name, dtype in ARRAYS.items()}
            self.documents = int(header["documents"])
            self.k1, self.b = float(header["k1"]), float(header["b"])
            self._check(**arrays)
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            raise SearchIndexError(f"{self.path}: unreadable lexical index ({e}); rebuild it with "
                                   "hbt-index upgrade, or rebuild the index") from e
        self.terms, self.offsets, self.rows, self.weights, self.counts = (arrays[name] for name in ARRAYS)
        self._by_row: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # Each term's largest weight, found the first time a query holds the term (NaN until then): later
        # queries then read none of a frequent term's postings unless they need them.
        self._largest = np.full(len(self.terms), np.nan, dtype=np.float32)

    def _check(self, terms, offsets, rows, weights, counts) -> None:
        """The arrays agree, so that no search can read out of bounds."""
        if len(offsets) != len(terms) + 1 or offsets[0] != 0 or offsets[-1] != len(rows) or (
                not len(rows) == len(weights) == len(counts)):
            raise ValueError("array lengths disagree")
        if np.any(np.diff(offsets) <= 0) or np.any(np.diff(terms) <= 0):
            raise ValueError("terms or offsets are not ascending")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.documents):
            raise ValueError(f"a row is outside 0 .. {self.documents - 1}")

    def frequencies(self, terms: np.ndarray) -> np.ndarray:
        """Document frequency of each term (int64, 0 where absent)."""
        positions, found = self._find(terms)
        counts = np.zeros(len(terms), dtype=np.int64)
        counts[found] = self.offsets[positions[found] + 1] - self.offsets[positions[found]]
        return counts

    def query(self, pieces: np.ndarray, max_df: float = MAX_DF) -> LexicalQuery:
        """A query planned on this segment alone; several segments plan on their summed frequencies."""
        return plan_query(pieces, self.frequencies(np.unique(pieces)), self.documents, max_df)

    def _find(self, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        terms = np.asarray(terms, dtype=np.int32)
        positions = np.searchsorted(self.terms, terms)
        found = positions < len(self.terms)
        found[found] = self.terms[positions[found]] == terms[found]
        return positions, found

    def document_pieces(self, labels: np.ndarray) -> list[np.ndarray]:
        """The pieces of documents ``labels`` (each piece repeated tf times, in term order), for a merge."""
        if self._by_row is None:  # the postings in row order, once per file: a merge reads every row
            order = np.argsort(self.rows, kind="stable")
            terms = np.repeat(self.terms, np.diff(self.offsets))[order]
            starts = np.searchsorted(self.rows[order], np.arange(self.documents + 1))
            self._by_row = starts, terms, self.counts[order]
        starts, terms, counts = self._by_row
        return [np.repeat(terms[starts[label] : starts[label + 1]], counts[starts[label] : starts[label + 1]])
                for label in np.asarray(labels, dtype=np.int64)]

    def search(self, query: LexicalQuery, k: int,
               admitted: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and BM25 scores of the best ``k`` documents holding a query term, best first,
        ties by row. ``admitted``: the rows a filter lets through, as a [documents] bool array or as
        a function of the rows read (which then costs what the postings cost, not the segment's size)."""
        rows, scores, _ = self.search_counted(query, k, admitted)
        return rows, scores

    def search_counted(self, query: LexicalQuery, k: int,
                       admitted: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, int]:
        """``search``, and the postings it read: those summed and those looked up (its cost).

        MaxScore, in rounds. A term adds at most its bound, idf x its largest weight; ``rest[j]``
        is the most that terms j, j+1, ... add together, the terms ordered rarest first. Each
        round sums the postings of the rarest terms into candidates, until the k-th best score so
        far exceeds the rest of the terms: a document holding none of the terms summed cannot
        then reach the k best, so the candidates hold them. Their scores are completed by looking
        them up in the frequent terms' posting lists (rows ascending: a binary search), dropping
        on the way those that the terms left cannot lift to the k-th. Frequent terms hold most of
        a query's postings, and most of those are never read.
        """
        positions, found = self._find(query.terms)
        if k < 1 or not found.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64), 0
        positions = positions[found]
        starts, ends = self.offsets[positions], self.offsets[positions + 1]
        order = np.argsort(ends - starts, kind="stable")  # rarest first
        positions, starts, ends, idf = positions[order], starts[order], ends[order], query.weights[found][order]
        terms = len(starts)
        largest = self._largest[positions]
        for i in np.flatnonzero(np.isnan(largest)):
            largest[i] = self._largest[positions[i]] = self.weights[starts[i] : ends[i]].max()
        bounds = (largest * idf).astype(np.float64)  # the product in float32, as the contributions': their maximum
        rest = np.append(np.cumsum(bounds[::-1])[::-1], 0.0) * BOUND_MARGIN  # [terms + 1]
        read_to = np.cumsum(ends - starts)  # postings of the rarest 1, 2, ... terms
        read, kth = 0, -np.inf
        while read < terms and not kth > rest[read]:
            if kth > 0:  # the last round: up to the first term whose rest the k-th so far exceeds
                upto = int(np.argmax(rest < kth))
            else:  # fewer than k candidates yet (a filter admits few): read ahead, more each round
                upto = int(np.searchsorted(read_to, max(FIRST_ROUND, GROWTH * read_to[read - 1] if read else 0))) + 1
            read = min(max(upto, read + 1), terms)
            rows, scores = self._accumulate(starts[:read], ends[:read], idf[:read], admitted)  # afresh: few rounds
            kth = -np.partition(-scores, k - 1)[k - 1] if len(scores) >= k else -np.inf
        postings = int(read_to[read - 1])
        for j in range(read, terms):
            if len(scores) > k:  # drop the candidates that the terms left cannot lift to the k-th
                kth = -np.partition(-scores, k - 1)[k - 1]
                keep = (scores + rest[j]) * BOUND_MARGIN >= kth
                rows, scores = rows[keep], scores[keep]
            scores += self._look_up(rows, starts[j], ends[j], idf[j])
            postings += len(rows)
        if not len(rows):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64), postings
        rows = rows.astype(np.int64)
        if len(scores) > k:
            kth = -np.partition(-scores, k - 1)[k - 1]
            chosen = scores >= kth  # all tied with the k-th: the row decides below
            rows, scores = rows[chosen], scores[chosen]
        order = np.lexsort((rows, -scores))[:k]
        return rows[order], scores[order], postings

    def _look_up(self, rows: np.ndarray, start: int, end: int, idf: np.float32) -> np.ndarray:
        """Each of ``rows``' (ascending) contribution from one term (postings ``start .. end``), 0 where absent."""
        span = self.rows[start:end]
        at = np.minimum(np.searchsorted(span, rows), len(span) - 1)
        return np.where(span[at] == rows, self.weights[start:end][at] * idf, np.float32(0))

    def _accumulate(self, starts: np.ndarray, ends: np.ndarray, idf: np.ndarray, admitted
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates (rows ascending, distinct) and their scores summed over the terms of postings ``starts .. ends``."""
        rows = np.concatenate([self.rows[a:b] for a, b in zip(starts, ends)])  # [p]
        contributions = np.concatenate([self.weights[a:b] * w for a, b, w in zip(starts, ends, idf)])  # [p]
        if admitted is not None:  # filtered over the postings read alone
            keep = admitted(rows) if callable(admitted) else admitted[rows]
            rows, contributions = rows[keep], contributions[keep]
        # Sum each row's contributions, sorted by row: the cost follows the postings, never the segment's
        # size (an array over every document costs 8 MB a query at 1M). One int64 key per posting, the row
        # above the contribution's bits (positive floats order as their bits): a plain sort, with no
        # permutation to apply, and each row's contributions summed in one order, whatever the terms' order.
        keys = np.sort((rows.astype(np.int64) << 32) | contributions.view(np.uint32))
        rows, contributions = (keys >> 32).astype(np.int32), (keys & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
        if not len(rows):
            return rows, contributions.astype(np.float64)
        first = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
        return rows[first], np.add.reduceat(contributions.astype(np.float64), first)


def has_lexical(manifest: Manifest) -> bool:
    """Whether every segment of a commit holds a lexical part (an index built before them does not)."""
    return all(LEXICAL_FILE in entry.files for entry in manifest.segments)


def open_lexical(directory: Path, entry: SegmentEntry) -> LexicalIndex | None:
    """A segment's lexical part, or None for a segment written before lexical parts existed."""
    record = entry.files.get(LEXICAL_FILE)
    if record is None:
        return None
    path = Path(directory) / LEXICAL_FILE
    size = path.stat().st_size  # FileNotFoundError: a reader retries on the newer commit
    index = LexicalIndex(path)
    if size != record.bytes or index.documents != entry.count:
        raise SearchIndexError(f"{path}: {size} bytes for {index.documents} documents, the manifest says "
                               f"{record.bytes} for {entry.count}; the index is damaged: restore it or rebuild "
                               "with hbt-index build")
    return index


def collection_frequencies(parts: list[LexicalIndex], pieces: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Each query's distinct pieces' document frequencies summed over ``parts``, and their documents."""
    frequencies = [sum((part.frequencies(np.unique(p)) for part in parts), np.zeros(len(np.unique(p)), np.int64))
                   for p in pieces]
    return frequencies, sum(part.documents for part in parts)


def plan_queries(pieces: list[np.ndarray], frequencies: list[np.ndarray], documents: int,
                 max_df: float = MAX_DF) -> list[LexicalQuery]:
    """Each query planned on the collection's frequencies; pieces held by DF_FLOOR documents or fewer stay."""
    cut = max(max_df, DF_FLOOR / max(documents, 1))
    return [plan_query(p, f, documents, cut) for p, f in zip(pieces, frequencies)]


def pad(keys: list[np.ndarray], scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rankings of unequal lengths as [Q, longest] arrays: key -1 and score -inf fill the short ones."""
    width = max((len(row) for row in keys), default=0)
    padded_keys = np.full((len(keys), width), -1, dtype=np.int64)
    padded_scores = np.full((len(keys), width), -np.inf, dtype=np.float64)
    for i, (row_keys, row_scores) in enumerate(zip(keys, scores)):
        padded_keys[i, : len(row_keys)], padded_scores[i, : len(row_keys)] = row_keys, row_scores
    return padded_keys, padded_scores


def merge_lexical(parts: list[tuple[np.ndarray, np.ndarray]], k: int,
                  ids: Callable[[np.ndarray], dict[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """The k best of several parts' padded rankings (keys, scores [Q, w] each), padded, best first.

    Documents tied with the k-th make the cut by id; other ties keep the parts' order (a
    ``Searcher`` orders its hits by score, then id). BM25 ties are common (documents of one
    length holding one rare piece once), so the ids are asked only for the cut's tie.
    """
    queries = len(parts[0][0]) if parts else 0
    merged_keys, merged_scores = [], []
    for q in range(queries):
        keys = np.concatenate([part_keys[q][part_keys[q] >= 0] for part_keys, _ in parts])
        scores = np.concatenate([part_scores[q][part_keys[q] >= 0] for part_keys, part_scores in parts])
        order = np.lexsort((keys, -scores))
        keys, scores = keys[order], scores[order]
        reach = k + int(np.count_nonzero(scores[k:] == scores[k - 1])) if len(scores) > k else k  # the k-th's ties
        keys, scores = keys[:reach], scores[:reach]
        if reach > k:
            tied = np.flatnonzero(scores == scores[k - 1])  # contiguous: sorted by score
            named = ids(keys[tied])
            keys[tied] = sorted(keys[tied].tolist(), key=lambda key: named[key])
        merged_keys.append(keys[:k])
        merged_scores.append(scores[:k])
    return pad(merged_keys, merged_scores)


def search_views(views: list, queries: list[LexicalQuery], k: int, langs: frozenset | None,
                 ids: Callable[[np.ndarray], dict[int, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Keys and BM25 scores [Q, k'] (padded) of the segment views' best documents that ``langs`` admits.

    ``views`` are an ``Index``'s segment views, in commit order; tombstoned documents never count.
    """
    parts = []
    for position, view in enumerate(views):
        admitted = view.label_filter(langs)  # over the postings read alone; None: nothing to filter
        found = [view.segment.lexical.search(query, k, admitted) for query in queries]
        parts.append(pad([document_key(position, rows) for rows, _ in found], [scores for _, scores in found]))
    return merge_lexical(parts, k, ids)


def describe(queries: list[LexicalQuery]) -> str:
    """The lexical stage in a plan: pieces searched, and the frequent ones left out."""
    return (f"lexical: {sum(len(q.terms) for q in queries)} pieces searched, "
            f"{sum(q.dropped for q in queries)} frequent left out")


def require_lexical(manifest: Manifest, directory: Path) -> None:
    """Refuse, naming the fix, a lexical search of an index whose segments lack their lexical parts."""
    if not has_lexical(manifest):
        raise SearchIndexError(f"{directory}: built before lexical search, its segments have no lexical part; "
                               f"add it (no re-embedding) with: hbt-index upgrade {directory}")


def lexical_parts(index) -> list[LexicalIndex]:
    """An ``Index``'s segments' lexical parts; an index built before them is refused, naming the fix."""
    require_lexical(index.manifest, index.directory)
    return [view.segment.lexical for view in index.segments]


def search_snapshot(index, pieces: list[np.ndarray], k: int, langs: Iterable[str] | None = None,
                    statistics: tuple[list[np.ndarray], int] | None = None) -> Ranking:
    """``Index.search_lexical``: the k best documents by BM25 for each query's pieces, keys and scores
    [Q, k'] padded with key -1 and score -inf. ``statistics``: the collection's frequencies and
    documents when the index holds only some segments of it (a Ray group)."""
    if k <= 0:
        raise DataError(f"k = {k}: must be at least 1")
    parts = lexical_parts(index)
    frequencies, documents = statistics or collection_frequencies(parts, pieces)
    queries = plan_queries(pieces, frequencies, documents, MAX_DF)
    keys, scores = search_views(index.segments, queries, k, frozenset(langs) if langs else None, lambda tied: {
        key: doc.id for key, doc in index.documents(tied).items()})
    return Ranking(keys, scores, [describe(queries)])
