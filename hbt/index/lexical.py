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

The idf is left out so that a query can take it from the whole collection (every
segment's document frequencies, summed): scores of different segments then compare.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from hbt.errors import SearchIndexError

LEXICAL_FILE = "lexical.bin"
MAGIC = b"HBTLEX1\n"
ALIGN = 64
K1, B = 1.2, 0.75  # Lucene's and FTS5's defaults
# Query pieces held by more than this share of the documents are left out (``▁the``, ``▁,``): their
# postings are most of a query's cost, their idf is small. bench/reports/lexical holds the choice.
MAX_DF = 0.05
ARRAYS = {"terms": np.int32, "offsets": np.int64, "rows": np.int32, "weights": np.float32}


def text_pieces(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Each text's piece ids (int32), untruncated, without bos, eos or unk: the lexical terms."""
    unk = tokenizer.spec.unk_id  # stands for any unknown character: it would match unrelated texts
    ids, _ = tokenizer.encode(texts, max_length=1 << 62)
    return [inner[inner != unk].astype(np.int32) for inner in (i[1:-1] for i in ids)]


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
    """Collects the pieces of a segment's documents, in label order, and writes the lexical file."""

    def __init__(self, k1: float = K1, b: float = B):
        self.k1, self.b = k1, b
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
                  "rows": rows.astype(np.int32), "weights": weights}
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
    writer = LexicalWriter(k1, b)
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
        self.terms, self.offsets, self.rows, self.weights = (arrays[name] for name in ARRAYS)

    def _check(self, terms, offsets, rows, weights) -> None:
        """The arrays agree, so that no search can read out of bounds."""
        if len(offsets) != len(terms) + 1 or offsets[0] != 0 or offsets[-1] != len(rows) or len(rows) != len(weights):
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

    def search(self, query: LexicalQuery, k: int, admitted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and BM25 scores of the best ``k`` documents holding a query term, best first,
        ties by row. ``admitted``: [documents] bool, the rows a filter lets through."""
        positions, found = self._find(query.terms)
        spans = [(self.offsets[p], self.offsets[p + 1], w) for p, w in zip(positions[found], query.weights[found])]
        if not spans or k < 1:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        rows = np.concatenate([self.rows[start:end] for start, end, _ in spans])
        contributions = np.concatenate([self.weights[start:end] * weight for start, end, weight in spans])
        if admitted is not None:
            keep = admitted[rows]
            rows, contributions = rows[keep], contributions[keep]
        scores = np.bincount(rows, weights=contributions, minlength=self.documents)  # [documents] float64
        # The k-th best score from the postings alone (no pass over every document): a row occurs at
        # most once per term, so the best k * terms postings hold at least k distinct rows, the best ones.
        values, enough = scores[rows], k * len(spans)  # [P]
        if len(values) > enough:
            best = np.unique(rows[np.argpartition(-values, enough - 1)[:enough]])
            kth = -np.partition(-scores[best], min(k, len(best)) - 1)[min(k, len(best)) - 1]
            candidates = np.unique(rows[values >= kth])  # all tied with the k-th: the row decides below
        else:
            candidates = np.unique(rows)
        order = np.lexsort((candidates, -scores[candidates]))[:k]
        return candidates[order], scores[candidates[order]]
