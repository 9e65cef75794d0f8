"""Corpus retrieval evaluation: MIRACL/BEIR-style qrels, MKQA answer recall, and how evaluations rank.

An evaluation embeds a passage corpus once, as the index embeds it (``passage_text``:
title plus text), and ranks it for every query with a ``Ranker``: ``exact`` scores every
passage (one matrix product, the reference), ``index`` builds hbt's index from the same
vectors in a temporary directory and searches it as a deployment does (segments, the
planner, language filters, ``ef``). Its ``mode`` is the searcher's (``hbt.search.SearchMode``):
lexical and hybrid take the lexical side from that index (BM25 over the bundle tokenizer's
pieces, the pool as a language filter) and fuse as ``Searcher`` fuses (``LexicalSide``). Qrels runs score mAP, Recall@k and nDCG@10 from the
ranks of the relevant documents; MKQA scores Recall@k as "an answer occurs in one of the
top k passages", matched as DPR's ``has_answer`` matches: the answer's normalized token
sequence must occur in the passage's (the BGE-M3 / RocketQA protocol).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import re
import string
import sys
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from hbt.corpus import Document, read_lines
from hbt.errors import DataError
from hbt.index import Costs, Index, IndexConfig, Ranking, build_index, passage_text
from hbt.metrics import relevant_ranks, summarize
from hbt.search import FUSION_DEPTH, SearchMode, as_mode, fuse

DEPTH = 100  # ranks beyond this count as not retrieved
QRELS_DATASETS = ("miracl", "beir")
# Where each file is looked for under <data-dir>/<dataset>/ when not given: MIRACL and BEIR layouts.
LAYOUT = {
    "corpus": ("corpus.jsonl", "corpus.jsonl.gz", "docs.jsonl", "docs.jsonl.gz"),
    "queries": ("queries.jsonl", "topics.tsv", "queries.tsv"),
    "qrels": ("qrels.tsv", "qrels/test.tsv", "qrels/dev.tsv", "qrels.txt"),
    "mkqa": ("mkqa.jsonl.gz", "mkqa.jsonl", "test_mkqa.fixture-6-examples.jsonl.gz"),
}


def find_files(data_dir: Path, dataset: str, given: dict[str, Path | None]) -> dict[str, Path]:
    """The files an evaluation needs: as given, else in the dataset's folder; names every missing one."""
    folder = Path(data_dir) / dataset
    found, missing = {}, []
    for role, path in given.items():
        path = path or next((folder / name for name in LAYOUT[role] if (folder / name).is_file()), None)
        if path is None or not Path(path).is_file():
            missing.append(f"--{role} ({path or folder / LAYOUT[role][0]})")
        else:
            found[role] = Path(path)
    if missing:
        how = ("hbt-bench download mkqa fetches the queries; the corpus is yours (e.g. BEIR NQ's corpus.jsonl)"
               if dataset == "mkqa" else "get them from the dataset's release (MIRACL: huggingface.co/datasets/miracl)")
        raise DataError(f"{dataset}: missing {', '.join(missing)}; {how}, or pass the paths")
    return found


def read_qrels(path: Path) -> dict[str, set[str]]:
    """Relevant documents per query: TREC (qid Q0 docid rel) or BEIR TSV (query-id corpus-id score, header)."""
    qrels: dict[str, set[str]] = {}
    for position, (number, line) in enumerate(read_lines(path)):
        parts = line.split()
        if position == 0 and parts[:2] == ["query-id", "corpus-id"]:
            continue
        try:
            if len(parts) not in (3, 4):
                raise ValueError(f"{len(parts)} columns")
            qid, docid, relevance = parts[0], parts[-2], float(parts[-1])  # TREC has Q0 second
        except ValueError as e:
            raise DataError(f"{path}:{number}: not a qrels line ({e}); expected qid Q0 docid rel, "
                            "or query-id corpus-id score") from e
        if relevance > 0:
            qrels.setdefault(qid, set()).add(docid)
    return qrels


def ranks_in(found: np.ndarray, relevant) -> np.ndarray:
    """1-based positions of ``relevant`` in one retrieved row; inf where not retrieved."""
    position = {int(i): rank for rank, i in enumerate(found, start=1)}
    return np.sort(np.array([position.get(r, np.inf) for r in relevant], dtype=float))


def retrieve(query_vectors: np.ndarray, passages: np.ndarray, depth: int = DEPTH) -> np.ndarray:
    """Indices [Q, depth] of the nearest passages by exact search, best first."""
    depth = min(depth, len(passages))
    scores = query_vectors @ passages.T  # [Q, N]
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


RANKERS = ("exact", "index")
DENSE = SearchMode("dense")
# The exact ranker reads only the index's lexical parts: the cheapest graph, no language graphs.
LEXICAL_ONLY = IndexConfig(M=4, ef_construction=8, language_graphs="off")
BLOCK = 128  # queries ranked completely at once by the exact ranker's lexical and hybrid modes


def ranks_after(head: np.ndarray, order: np.ndarray, relevant, size: int) -> np.ndarray:
    """1-based ranks of ``relevant`` (rows < ``size``) in ``head``, then the rows of ``order`` not in ``head``, in
    that order; inf for a row in neither (beyond an index's depth)."""
    position = np.full(size, np.inf)
    taken = np.zeros(size, dtype=bool)
    taken[head] = True
    rest = order[~taken[order]]
    position[rest] = np.arange(len(head) + 1, len(head) + len(rest) + 1)
    position[head] = np.arange(1, len(head) + 1)
    return np.sort(position[np.asarray(relevant, dtype=np.int64)])


class _Rows:
    """An index's document keys as corpus rows (-1, a ranking's padding, stays -1)."""

    def __init__(self, index: Index, docs: Sequence[Document]):
        self.index = index
        self._row_of_id = {d.id: row for row, d in enumerate(docs)}
        self._row_of_key: dict[int, int] = {-1: -1}

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        unknown = set(np.unique(keys).tolist()) - set(self._row_of_key)
        if unknown:
            self._row_of_key.update({key: self._row_of_id[doc.id] for key, doc in self.index.documents(unknown).items()})
        return np.vectorize(self._row_of_key.__getitem__, otypes=[np.int64])(keys) if keys.size else keys


class LexicalSide:
    """What a pool needs beyond dense search, as ``Searcher`` runs it: the mode a pool resolves to (``auto``:
    hybrid for a pool of the queries' own language alone), BM25 from the index's lexical parts (the pool as a
    language filter, the collection's statistics) and hybrid's head: ``hbt.search.fuse`` of each side's top
    ``FUSION_DEPTH``, the searcher's list for any k up to that depth."""

    def __init__(self, index: Index, rows: _Rows, mode: SearchMode):
        self.index, self.rows, self.mode = index, rows, mode

    def chosen(self, langs: Sequence[str] | None, query_lang: str | None) -> str:
        """The mode the searcher runs for queries in ``query_lang`` (None: unknown) over the pool ``langs``."""
        return as_mode(self.mode, query_lang).resolve(langs, self.index)

    def lexical(self, pieces: list[np.ndarray], k: int, langs: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """Rows and BM25 scores [Q, k'] of each query's best matches, best first, padded with row -1."""
        ranking = self.index.search_lexical(pieces, k, langs)
        return self.rows(ranking.keys), ranking.scores

    def fused(self, dense_rows: np.ndarray, dense_scores: np.ndarray, pieces: list[np.ndarray],
              langs: Sequence[str] | None) -> list[np.ndarray]:
        """Each query's fused rows, best first: the dense side is ``dense_rows`` [Q, >= FUSION_DEPTH], best first."""
        lexical = Ranking(*self.lexical(pieces, FUSION_DEPTH, langs), [])
        dense = Ranking(dense_rows[:, :FUSION_DEPTH], dense_scores[:, :FUSION_DEPTH], [])
        keys, _ = fuse(dense, lexical, 2 * FUSION_DEPTH, self.mode)  # every candidate of both sides
        return [np.array(row, dtype=np.int64) for row in keys]


def _require_pieces(pieces: list[np.ndarray] | None, chosen: str) -> list[np.ndarray]:
    if pieces is None:
        raise DataError(f"mode {chosen} ranks by the queries' pieces, and none were given: pass the bundle's tokenizer")
    return pieces


class ExactPool:
    """Every admitted passage scored by one matrix product: the reference ranking.

    Rows are positions in the corpus; ``langs`` admits the passages of those languages,
    in corpus order (each admitted set's matrix is kept for the next query batch). With a
    ``lexical`` side, lexical runs rank the unmatched after the matches in corpus order (their
    BM25 ties at 0), hybrid runs the candidates neither side fused in dense order: complete rankings.
    """

    def __init__(self, docs: Sequence[Document], vectors: np.ndarray, lexical: LexicalSide | None = None):
        self.vectors = vectors  # [N, d]
        self.langs = np.array([d.lang for d in docs], dtype=object)
        self.lexical = lexical
        self._admitted: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}

    def _admit(self, langs: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """The admitted rows [n] and their vectors [n, d]."""
        if langs is None:
            return np.arange(len(self.vectors)), self.vectors
        key = tuple(langs)
        if key not in self._admitted:
            rows = np.flatnonzero(np.isin(self.langs, list(langs)))
            self._admitted[key] = rows, self.vectors[rows]
        return self._admitted[key]

    def top(self, query_vectors: np.ndarray, depth: int = DEPTH, langs: Sequence[str] | None = None) -> np.ndarray:
        rows, vectors = self._admit(langs)
        return rows[retrieve(query_vectors, vectors, depth)]

    def ranks(self, query_vectors: np.ndarray, relevant: list[list[int]], langs: Sequence[str] | None = None,
              pieces: list[np.ndarray] | None = None, query_lang: str | None = None) -> list[np.ndarray]:
        """Each query's relevant rows' exact ranks among the admitted, all of them (ties: corpus order);
        ``query_lang``, the queries' language, is what ``auto`` needs to fuse."""
        rows, vectors = self._admit(langs)
        scores = query_vectors @ vectors.T  # [Q, n]
        chosen = self.lexical.chosen(langs, query_lang) if self.lexical else "dense"
        if chosen == "dense":
            return [relevant_ranks(row, np.searchsorted(rows, wanted)) for row, wanted in zip(scores, relevant)]
        pieces, out = _require_pieces(pieces, chosen), []
        for start in range(0, len(scores), BLOCK):  # a block's complete orders [B, n] at a time
            block = slice(start, start + BLOCK)
            if chosen == "lexical":
                found, _ = self.lexical.lexical(pieces[block], len(rows), langs)
                heads, orders = [row[row >= 0] for row in found], [rows] * len(found)
            else:
                local = np.argsort(-scores[block], axis=1, kind="stable")  # dense order, ties by corpus order
                orders = rows[local]
                depth = min(FUSION_DEPTH, len(rows))
                heads = self.lexical.fused(orders[:, :depth], np.take_along_axis(scores[block], local[:, :depth], 1),
                                           pieces[block], langs)
            out += [ranks_after(head, order, wanted, len(self.vectors))
                    for head, order, wanted in zip(heads, orders, relevant[block])]
        return out


class IndexPool:
    """hbt's index over the corpus, searched through its public API for the top ``depth``, as deployed.

    ``plans`` counts the segment searches by the plan the index chose (exact, hnsw, ...):
    the planner weighs this machine's measured costs, so another machine may plan otherwise.
    With a ``lexical`` side, hybrid runs its fused head, then the dense top ``depth``.
    """

    def __init__(self, index: Index, docs: Sequence[Document], ef: int | None, depth: int,
                 plans: collections.Counter[str], lexical: LexicalSide | None = None):
        self.index, self.ef, self.depth, self.plans, self.lexical = index, ef, depth, plans, lexical
        self.rows, self.size = lexical.rows if lexical else _Rows(index, docs), len(docs)

    def _dense(self, query_vectors: np.ndarray, depth: int, langs: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        ranking = self.index.search(query_vectors, depth, self.ef, langs)
        self.plans.update(plan.partition(": ")[2].partition(" (")[0] for plan in ranking.plans)
        return self.rows(ranking.keys), ranking.scores  # [Q, k'], best first

    def top(self, query_vectors: np.ndarray, depth: int = DEPTH, langs: Sequence[str] | None = None) -> np.ndarray:
        return self._dense(query_vectors, depth, langs)[0]

    def ranks(self, query_vectors: np.ndarray, relevant: list[list[int]], langs: Sequence[str] | None = None,
              pieces: list[np.ndarray] | None = None, query_lang: str | None = None) -> list[np.ndarray]:
        """Each query's relevant rows' ranks in the index's top ``depth``; inf beyond it (``query_lang``: as
        ``ExactPool.ranks``)."""
        chosen = self.lexical.chosen(langs, query_lang) if self.lexical else "dense"
        if chosen == "lexical":
            found, _ = self.lexical.lexical(_require_pieces(pieces, chosen), self.depth, langs)
            return [ranks_in(row[row >= 0], wanted) for row, wanted in zip(found, relevant)]
        rows, scores = self._dense(query_vectors, self.depth, langs)
        if chosen == "dense":
            return [ranks_in(row, wanted) for row, wanted in zip(rows, relevant)]
        heads = self.lexical.fused(rows, scores, _require_pieces(pieces, chosen), langs)
        return [ranks_after(head, row, wanted, self.size) for head, row, wanted in zip(heads, rows, relevant)]


@dataclass(frozen=True)
class _Identity:
    fingerprint: str


class _Embedded:
    """The evaluation's passage vectors as ``build_index``'s encoder: it serves them in corpus order and
    refuses any text it did not embed, so the index holds exactly the vectors the exact ranker scores."""

    def __init__(self, docs: Sequence[Document], vectors: np.ndarray, directory: Path, tokenizer=None):
        self.texts, self.vectors, self.served = [passage_text(d) for d in docs], vectors, 0
        self.dimension = vectors.shape[1]
        self.bundle_dir = directory
        self.manifest = _Identity("evaluation-vectors")
        self.tokenizer = tokenizer  # the bundle's: build_index writes lexical parts with it (None: none)

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        end = self.served + len(texts)
        if texts != self.texts[self.served : end]:
            raise RuntimeError("build_index asked for passages out of corpus order; evaluation cannot serve them")
        self.served = end
        return self.vectors[end - len(texts) : end]


@dataclass(frozen=True)
class Ranker:
    """How an evaluation ranks passages: ``exact`` (every one scored, the reference) or ``index`` (hbt's index,
    built with ``build_index`` from the same vectors, searched with ``ef``, None: the index's default).

    A qrels run counts the top ``depth`` of either; LAReQA ranks every candidate exactly,
    or the index's top ``depth`` (a relevant candidate beyond it counts as not retrieved).
    ``costs`` are the index planner's (None: this machine's, as deployed; ``GRAPHS`` makes
    exact scans dear, to rank through the graphs). ``plans`` counts the plans its searches ran.
    ``mode`` is the searcher's: any but dense builds the index with the bundle's tokenizer, for
    its lexical parts, with either ranker (the exact one scores the dense side of every candidate).
    """

    kind: str = "exact"
    ef: int | None = None
    depth: int = DEPTH
    costs: Costs | None = None
    plans: collections.Counter[str] = field(default_factory=collections.Counter, compare=False)
    mode: SearchMode = DENSE

    def __post_init__(self):
        if self.kind not in RANKERS:
            raise DataError(f"unknown ranker {self.kind!r}; choose one of {', '.join(RANKERS)}")
        if self.ef is not None and (self.kind != "index" or self.ef < 1):
            raise DataError(f"ef = {self.ef}: an ef applies to the index ranker only, and must be at least 1")
        if self.depth < 1:
            raise DataError(f"depth = {self.depth}: must be at least 1")
        if self.costs is not None and self.kind != "index":
            raise DataError("planner costs apply to the index ranker only")

    @property
    def lexical(self) -> bool:
        """Whether the mode may rank lexically, so that the index needs its lexical parts."""
        return self.mode.mode != "dense"

    def describe(self) -> str:
        mode = "" if not self.lexical else ", " + (
            "mode auto (hybrid where the pool is the query's language alone, dense otherwise)"
            if self.mode.mode == "auto" else self.mode.describe(self.mode.mode))
        if self.kind == "exact":
            return "exact" + mode
        costs = "" if self.costs is None else f", {self.costs.source}"
        return f"index top {self.depth}, ef {self.ef or IndexConfig().ef}{costs}{mode}"

    def require_tokenizer(self, tokenizer) -> None:
        """Refuse a mode that ranks lexically without the bundle's tokenizer (before anything is embedded)."""
        if self.lexical and tokenizer is None:
            raise DataError(f"mode {self.mode.mode} ranks by the bundle tokenizer's pieces, and this bundle has no "
                            "tokenizer; use mode dense")

    @contextlib.contextmanager
    def pool(self, docs: Sequence[Document], vectors: np.ndarray, tokenizer=None) -> Iterator[ExactPool | IndexPool]:
        """The corpus ready to rank: ``vectors`` [N, d] are ``docs``' ``passage_text`` embedded; ``tokenizer``
        (the bundle's) gives the lexical terms, which every mode but dense needs."""
        self.require_tokenizer(tokenizer)
        if self.kind == "exact" and not self.lexical:
            yield ExactPool(docs, vectors)
            return
        with tempfile.TemporaryDirectory(prefix="hbt-eval-index-") as folder:
            directory = Path(folder) / "index"
            build_index(docs, _Embedded(docs, vectors, Path(folder), tokenizer if self.lexical else None), directory,
                        IndexConfig() if self.kind == "index" else LEXICAL_ONLY)
            index = Index(directory, costs=self.costs)
            lexical = LexicalSide(index, _Rows(index, docs), self.mode) if self.lexical else None
            try:
                yield (ExactPool(docs, vectors, lexical) if self.kind == "exact"
                       else IndexPool(index, docs, self.ef, self.depth, self.plans, lexical))
            finally:
                index.close()


EXACT = Ranker()
GRAPHS = Costs(exact=1e9, beam=1e-9, source="graphs forced")  # the planner scans only when a graph cannot serve


def _require(docs: list[Document], ranker: Ranker) -> None:
    if not docs:
        raise DataError("the corpus has no documents; give a JSONL or TSV corpus with at least one")
    if ranker.lexical:
        raise DataError(f"mode {ranker.mode.mode}: only LAReQA (xquad-r, mlqa-r) ranks lexically here; "
                        "use mode dense for a corpus")


def evaluate_qrels(queries: dict[str, str], qrels: dict[str, set[str]], docs: list[Document],
                   encode_queries, encode_passages, ranker: Ranker = EXACT) -> dict:
    _require(docs, ranker)
    judged = sorted(set(queries) & set(qrels))
    if not judged:
        raise DataError(f"the qrels and the queries share no query id (queries like {next(iter(queries), '-')!r}, "
                        f"qrels like {next(iter(qrels), '-')!r}); give the qrels of these queries")
    unknown = {d for q in judged for d in qrels[q]} - {d.id for d in docs}
    if len(unknown) == sum(len(qrels[q]) for q in judged):
        raise DataError(f"no judged document is in the corpus (e.g. {sorted(unknown)[0]!r}); give the qrels of this corpus")
    with ranker.pool(docs, encode_passages([passage_text(d) for d in docs])) as pool:
        found = pool.top(encode_queries([queries[q] for q in judged]), ranker.depth)
    row_of = {d.id: i for i, d in enumerate(docs)}
    all_ranks = [ranks_in(row, [row_of.get(d, -1) for d in qrels[qid]]) for qid, row in zip(judged, found)]
    summary = summarize(all_ranks)
    summary.pop("language_bias")  # one relevant set per query, not one per language: no bias to measure
    return {"qrels": {"mean": summary, "unjudged_queries": len(queries) - len(judged)}}


@dataclass
class MkqaQuery:
    id: str
    text: str
    answers: list[str]  # normalized answer strings and aliases


@functools.cache
def _separators() -> re.Pattern:
    """Punctuation (Unicode P* and ASCII's), except a point or comma between digits ("3.5", "1,945")."""
    marks = {c for c in map(chr, range(sys.maxunicode + 1)) if unicodedata.category(c).startswith("P")}
    others = "".join(sorted((marks | set(string.punctuation)) - {".", ","}))
    return re.compile(rf"(?<!\d)[.,]|[.,](?!\d)|[{re.escape(others)}]")


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, Han): a character is a token.
_UNSPACED = re.compile("([\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
                       "\uf900-\ufaff\U00020000-\U0003134f])")


def normalize_answer(text: str) -> str:
    """Tokens joined by single spaces: SQuAD's normalization (NFKC, lower case, punctuation out, no English
    articles) with numbers kept whole ("1,945" reads as "1945", "3.5" stays one token)."""
    text = _THOUSANDS.sub("", unicodedata.normalize("NFKC", text).lower())
    text = _ARTICLES.sub(" ", _separators().sub(" ", text))
    return " ".join(_UNSPACED.sub(r" \1 ", text).split())


def has_answer(passage: str, answers: list[str]) -> bool:
    """Whether one answer's token sequence occurs in the passage's (both from ``normalize_answer``), as DPR's
    ``has_answer`` decides: the answer "1" is not in "1945", nor "art" in "the arts"."""
    padded = f" {passage} "
    return any(answer and f" {answer} " in padded for answer in answers)


def read_mkqa(path: Path, languages: list[str] | None = None, answer_language: str = "en") -> dict[str, list[MkqaQuery]]:
    """Answerable MKQA queries per language, with the answers of ``answer_language``.

    The answers are looked for in the passages, so they come in the corpus's language
    (English, for the usual Wikipedia corpus) whatever the query's language is.
    """
    out: dict[str, list[MkqaQuery]] = {}
    for number, line in read_lines(path):
        try:
            row = json.loads(line)
            answers = [normalize_answer(t) for a in row["answers"].get(answer_language, [])
                       for t in [a.get("text") or ""] + list(a.get("aliases") or [])]
            answers = [a for a in answers if a]
            for lang, query in row["queries"].items():
                if not isinstance(query, str):
                    raise TypeError(f"the {lang} query is not a string")
                if answers and (not languages or lang in languages):
                    out.setdefault(lang, []).append(MkqaQuery(str(row["example_id"]), query, answers))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}:{number}: not an MKQA row (example_id, queries, answers)") from e
    if not out:
        raise DataError(f"{path}: no answerable MKQA queries" + (f" in {', '.join(languages)}" if languages else ""))
    return out


def evaluate_mkqa(mkqa: dict[str, list[MkqaQuery]], docs: list[Document], encode_queries, encode_passages,
                  ks=(20, 100), ranker: Ranker = EXACT) -> dict:
    _require(docs, ranker)
    with ranker.pool(docs, encode_passages([passage_text(d) for d in docs])) as pool:
        found = {lang: pool.top(encode_queries([q.text for q in queries]), max(ks)) for lang, queries in mkqa.items()}
    normalized = {}  # document row -> its normalized text, for the documents some query retrieved

    def answered(row: int, answers: list[str]) -> bool:
        if row not in normalized:
            normalized[row] = normalize_answer(f"{docs[row].title} {docs[row].text}")
        return has_answer(normalized[row], answers)

    per_language = {}
    for lang, queries in mkqa.items():
        hits = [next((rank for rank, i in enumerate(row, 1) if answered(int(i), q.answers)), np.inf)
                for q, row in zip(queries, found[lang])]
        per_language[lang] = {"queries": len(queries)} | {f"recall@{k}": float(np.mean(np.array(hits) <= k)) for k in ks}
    mean = {m: float(np.mean([v[m] for v in per_language.values()])) for m in per_language[next(iter(per_language))]
            if m != "queries"}
    return {"mkqa": {"mean": mean, "per_language": per_language}}
