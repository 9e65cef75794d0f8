"""TREC run files (qid Q0 docid rank score tag), written in the order trec_eval evaluates them.

trec_eval ignores the rank column: it reads each score into a 32-bit float and sorts a
query's documents by that score, descending, then by document id, descending
(``comp_sim_docno`` in its ``form_res_rels.c``). So the writer rounds scores the same
way, writes each in the fewest digits that read back as that float32, and puts tied
documents in trec_eval's order; the rank column then holds the rank trec_eval uses.
"""

from __future__ import annotations

from typing import Iterable, Protocol, TextIO

import numpy as np

from hbt.errors import DataError


class ScoredHit(Protocol):
    id: str
    score: float


def trec_order(hits: Iterable[ScoredHit]) -> list[ScoredHit]:
    """``hits`` in trec_eval's order: float32 score descending, then document id descending."""
    return sorted(hits, key=lambda hit: (np.float32(hit.score), hit.id), reverse=True)


def format_score(score: float) -> str:
    """The shortest decimal that reads back as the same float32, as trec_eval reads it."""
    return np.format_float_positional(np.float32(score), unique=True, trim="0")


def _field(kind: str, value: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise DataError(f"{kind} {value!r}: a TREC run needs ids without spaces; "
                        "change it in the corpus or queries, or use --json output")
    return value


def write_trec_run(out: TextIO, query_ids: list[str], results: list[list[ScoredHit]], tag: str = "hbt") -> None:
    """One line per hit, each query's hits in trec_eval's order; ``results[i]`` answers ``query_ids[i]``."""
    if len(query_ids) != len(results):
        raise ValueError(f"{len(query_ids)} query ids for {len(results)} result lists")
    _field("run tag", tag)
    for qid, hits in zip(query_ids, results):
        _field("query id", qid)
        for rank, hit in enumerate(trec_order(hits), start=1):
            out.write(f"{qid} Q0 {_field('document id', hit.id)} {rank} {format_score(hit.score)} {tag}\n")
