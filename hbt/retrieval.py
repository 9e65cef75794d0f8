"""Corpus retrieval evaluation: MIRACL/BEIR-style qrels, and MKQA answer recall.

Both embed a passage corpus once and rank it for every query, by exact search
(one matrix product, the reference) or through an HNSW index (``ann``, what a
deployed index returns). Qrels runs score mAP, Recall@k and nDCG@10 from the
ranks of the relevant documents; MKQA scores Recall@k as "a normalized answer
string occurs in one of the top k passages" (the BGE-M3 / RocketQA protocol).
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hbt.corpus import Document, open_text
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


def _lines(path: Path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line.rstrip("\n")


def read_queries(path: Path) -> dict[str, str]:
    """MIRACL topics TSV (qid<TAB>query) or BEIR queries JSONL (_id, text)."""
    queries = {}
    for number, line in _lines(path):
        try:
            if line.lstrip().startswith("{"):
                row = json.loads(line)
                qid = next(row[k] for k in ("_id", "id", "query_id", "qid") if k in row)
                queries[str(qid)] = next(row[k] for k in ("text", "query") if k in row)
            else:
                qid, text = line.split("\t")[:2]
                queries[qid] = text
        except (ValueError, StopIteration, json.JSONDecodeError) as e:
            raise DataError(f"{path}:{number}: not a query (qid<TAB>text, or JSON with _id and text)") from e
    return queries


def read_qrels(path: Path) -> dict[str, set[str]]:
    """Relevant documents per query: TREC (qid Q0 docid rel) or BEIR TSV (query-id corpus-id score, header)."""
    qrels: dict[str, set[str]] = {}
    for number, line in _lines(path):
        parts = line.split()
        if number == 1 and parts[:2] == ["query-id", "corpus-id"]:
            continue
        try:
            qid, docid, rel = (parts[0], parts[2], parts[3]) if len(parts) == 4 else (parts[0], parts[1], parts[2])
            if float(rel) > 0:
                qrels.setdefault(qid, set()).add(docid)
        except (IndexError, ValueError) as e:
            raise DataError(f"{path}:{number}: not a qrels line (qid Q0 docid rel, or query-id corpus-id score)") from e
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


def normalize_answer(text: str) -> str:
    """SQuAD-style: NFKC, lower case, no punctuation, no English articles, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in string.punctuation or unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def read_mkqa(path: Path, languages: list[str] | None = None, answer_language: str = "en") -> dict[str, list[MkqaQuery]]:
    """Answerable MKQA queries per language, with the answers of ``answer_language``.

    The answers are looked for in the passages, so they come in the corpus's language
    (English, for the usual Wikipedia corpus) whatever the query's language is.
    """
    out: dict[str, list[MkqaQuery]] = {}
    for number, line in _lines(path):
        try:
            row = json.loads(line)
            answers = [normalize_answer(t) for a in row["answers"].get(answer_language, [])
                       for t in [a.get("text") or ""] + list(a.get("aliases") or [])]
            answers = [a for a in answers if a]
            for lang, query in row["queries"].items():
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
    normalized = [normalize_answer(f"{d.title} {d.text}") for d in docs]
    per_language = {}
    for lang, queries in mkqa.items():
        found = retrieve(encode_queries([q.text for q in queries]), pool, max(ks))
        hits = [next((rank for rank, i in enumerate(row, 1) if any(a in normalized[i] for a in q.answers)), np.inf)
                for q, row in zip(queries, found)]
        per_language[lang] = {"queries": len(queries)} | {f"recall@{k}": float(np.mean(np.array(hits) <= k)) for k in ks}
    mean = {m: float(np.mean([v[m] for v in per_language.values()])) for m in per_language[next(iter(per_language))]
            if m != "queries"}
    return {"mkqa": {"mean": mean, "per_language": per_language}}
