"""TREC runs: a golden file, and trec_eval (through pytrec_eval) reading every rank as the run writes it."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.errors import DataError
from hbt.trec import format_score, write_trec_run


@dataclass(frozen=True)
class Hit:
    id: str
    score: float


def test_golden_run():
    out = io.StringIO()
    write_trec_run(out, ["q1", "q2"], [[Hit("d1", 0.5), Hit("d3", 0.5), Hit("d2", 0.8125)], [Hit("x", -0.1)]])
    assert out.getvalue() == ("q1 Q0 d2 1 0.8125 hbt\n"
                              "q1 Q0 d3 2 0.5 hbt\n"  # a tie goes in trec_eval's order: document id descending
                              "q1 Q0 d1 3 0.5 hbt\n"
                              "q2 Q0 x 1 -0.1 hbt\n")


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_scores_read_back_as_the_same_float32(score):
    assert np.float32(float(format_score(score))) == np.float32(score)


def test_ids_that_break_the_format_are_refused():
    for query_ids, hits, bad in ((["q 1"], [[Hit("d", 1.0)]], "query id 'q 1'"),
                                 (["q1"], [[Hit("doc\t7", 1.0)]], "document id 'doc\\t7'"),
                                 (["q1"], [[Hit("", 1.0)]], "document id ''")):
        with pytest.raises(DataError, match=re.escape(bad)):
            write_trec_run(io.StringIO(), query_ids, hits)


# Scores in clusters: exact ties, differences below 6 decimals, and below a float32's precision.
BASE = st.floats(-1, 1, width=32)
NUDGE = st.sampled_from([0.0, 0.0, 1e-9, 2e-8, 1e-7, 4e-7, 3e-6, 1e-3])
DOC_IDS = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=4)


@st.composite
def ranked_lists(draw):
    bases = draw(st.lists(BASE, min_size=1, max_size=3))
    ids = draw(st.lists(DOC_IDS.filter(lambda i: not any(c.isspace() for c in i)), min_size=1, max_size=8, unique=True))
    scored = [Hit(i, float(np.float32(draw(st.sampled_from(bases)))) + draw(NUDGE)) for i in ids]
    # Any order: the writer, not its caller, owes trec_eval its order.
    return draw(st.permutations(scored))


@settings(max_examples=150, deadline=None)
@given(st.lists(ranked_lists(), min_size=1, max_size=4))
def test_trec_eval_reads_every_rank_as_written(results):
    """For each line, one qrels file makes that line's document the only relevant one: trec_eval's reciprocal rank
    must then be 1 / the rank the line says."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    out = io.StringIO()
    query_ids = [f"q{i}" for i in range(len(results))]
    write_trec_run(out, query_ids, results)
    run = pytrec_eval.parse_run(out.getvalue().splitlines())
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert sorted((qid, docid) for qid, _, docid, _, _, _ in lines) == sorted(
        (qid, hit.id) for qid, hits in zip(query_ids, results) for hit in hits)
    qrels, probes = {}, {}
    for number, (qid, _, docid, rank, _, _) in enumerate(lines):
        qrels[f"{qid}#{number}"] = {docid: 1}
        probes[f"{qid}#{number}"] = (run[qid], 1 / int(rank))
    measured = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate({p: r for p, (r, _) in probes.items()})
    assert {p: m["recip_rank"] for p, m in measured.items()} == pytest.approx({p: e for p, (_, e) in probes.items()})
