"""Corpus retrieval evaluation: MIRACL/BEIR-style qrels, and MKQA answer recall.

Both embed a passage corpus once and rank it for every query, by exact search
(one matrix product, the reference) or through an HNSW index (``ann``, what a
deployed index returns). Qrels runs score mAP, Recall@k and nDCG@10 from the
ranks of the relevant documents; MKQA scores Recall@k as "an answer occurs in one
of the top k passages", matched as DPR's ``has_answer`` matches: the answer's
normalized token sequence must occur in the passage's (the BGE-M3 / RocketQA protocol).
"""

from __future__ import annotations

import functools
import json
import re
import string
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hbt.corpus import Document, read_lines
from hbt.errors import DataError
from hbt.index import add_in_batches, new_graph
from hbt.metrics import summarize

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


def ann_index(passage_vectors: np.ndarray):
    """An HNSW index over unit vectors, with hbt-index's default build settings."""
    graph = new_graph(passage_vectors.shape[1], len(passage_vectors))
    add_in_batches(graph, passage_vectors)
    return graph


def retrieve(query_vectors: np.ndarray, pool, depth: int = DEPTH) -> np.ndarray:
    """Indices [Q, depth] of the nearest passages, best first.

    ``pool`` is the passage matrix (exact search, the reference) or an ``ann_index`` of it.
    """
    if isinstance(pool, np.ndarray):
        depth = min(depth, len(pool))
        scores = query_vectors @ pool.T  # [Q, N]
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1)
    depth = min(depth, pool.get_current_count())
    pool.set_ef(max(depth, 128))
    return pool.knn_query(query_vectors, k=depth)[0].astype(np.int64)


def _require(docs: list[Document]) -> None:
    if not docs:
        raise DataError("the corpus has no documents; give a JSONL or TSV corpus with at least one")


def evaluate_qrels(queries: dict[str, str], qrels: dict[str, set[str]], docs: list[Document],
                   encode_queries, encode_passages, ann: bool = False) -> dict:
    _require(docs)
    judged = sorted(set(queries) & set(qrels))
    if not judged:
        raise DataError(f"the qrels and the queries share no query id (queries like {next(iter(queries), '-')!r}, "
                        f"qrels like {next(iter(qrels), '-')!r}); give the qrels of these queries")
    unknown = {d for q in judged for d in qrels[q]} - {d.id for d in docs}
    if len(unknown) == sum(len(qrels[q]) for q in judged):
        raise DataError(f"no judged document is in the corpus (e.g. {sorted(unknown)[0]!r}); give the qrels of this corpus")
    passages = encode_passages([d.text for d in docs])
    found = retrieve(encode_queries([queries[q] for q in judged]), ann_index(passages) if ann else passages)
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
                  ks=(20, 100), ann: bool = False) -> dict:
    _require(docs)
    passages = encode_passages([d.text for d in docs])
    pool = ann_index(passages) if ann else passages
    normalized = {}  # document row -> its normalized text, for the documents some query retrieved

    def answered(row: int, answers: list[str]) -> bool:
        if row not in normalized:
            normalized[row] = normalize_answer(f"{docs[row].title} {docs[row].text}")
        return has_answer(normalized[row], answers)

    per_language = {}
    for lang, queries in mkqa.items():
        found = retrieve(encode_queries([q.text for q in queries]), pool, max(ks))
        hits = [next((rank for rank, i in enumerate(row, 1) if answered(int(i), q.answers)), np.inf)
                for q, row in zip(queries, found)]
        per_language[lang] = {"queries": len(queries)} | {f"recall@{k}": float(np.mean(np.array(hits) <= k)) for k in ks}
    mean = {m: float(np.mean([v[m] for v in per_language.values()])) for m in per_language[next(iter(per_language))]
            if m != "queries"}
    return {"mkqa": {"mean": mean, "per_language": per_language}}
