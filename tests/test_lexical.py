"""Lexical search (BM25 over SentencePiece pieces) against a brute-force reference, in every script; fusion rules."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.errors import SearchIndexError
from hbt.fusion import convex_fusion, min_max, reciprocal_rank_fusion
from hbt.index import lexical
from hbt.index.lexical import K1, B, LexicalIndex, LexicalWriter, plan_query, text_pieces, write_lexical


def reference_bm25(corpus: list[list[int]], query: list[int], k1: float = K1, b: float = B) -> list[float]:
    """BM25 of every document, term by term, written from the textbook formula (Lucene's idf)."""
    n = len(corpus)
    average = sum(map(len, corpus)) / n or 1.0
    scores = []
    for document in corpus:
        counts, score = Counter(document), 0.0
        for term in set(query):
            df = sum(term in d for d in corpus)
            if counts[term]:
                tf = counts[term]
                score += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf * (k1 + 1) / (
                    tf + k1 * (1 - b + b * len(document) / average))
        scores.append(score)
    return scores


corpora = st.lists(st.lists(st.integers(0, 12), max_size=15), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(corpus=corpora, query=st.lists(st.integers(0, 14), min_size=1, max_size=6), k=st.integers(1, 35),
       batch=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_bm25_equals_brute_force(tmp_path_factory, corpus, query, k, batch, seed):
    path = tmp_path_factory.mktemp("lexical") / "lexical.bin"
    writer = LexicalWriter()
    for start in range(0, len(corpus), batch):  # rows follow across batches
        writer.add([np.array(d, dtype=np.int32) for d in corpus[start : start + batch]])
    writer.finish(path)
    index = LexicalIndex(path)
    admitted = np.random.default_rng(seed).random(len(corpus)) < 0.6
    for mask in (None, admitted):
        rows, scores = index.search(index.query(np.array(query), max_df=1.0), k, mask)
        reference = np.array(reference_bm25(corpus, query))
        if mask is not None:
            reference[~mask] = 0
        expected = np.sort(reference[reference > 0])[::-1][:k]
        np.testing.assert_allclose(scores, expected, rtol=1e-5)
        np.testing.assert_allclose(scores, reference[rows], rtol=1e-5)  # each row carries its own score
        assert len(set(rows.tolist())) == len(rows) and np.all(reference[rows] > 0)
        # Best first; exact ties (identical documents) by row.
        assert all((s1 > s2) or (s1 == s2 and r1 < r2) for s1, s2, r1, r2 in zip(scores, scores[1:], rows, rows[1:]))


def sum_every_posting(index: LexicalIndex, query, k: int, admitted=None) -> tuple[np.ndarray, np.ndarray]:
    """The search before MaxScore, as the reference: every posting of every query term summed by row."""
    positions, found = index._find(query.terms)
    spans = [(index.offsets[p], index.offsets[p + 1], w) for p, w in zip(positions[found], query.weights[found])]
    if not spans:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    rows = np.concatenate([index.rows[start:end] for start, end, _ in spans])
    contributions = np.concatenate([index.weights[start:end] * weight for start, end, weight in spans])
    if admitted is not None:
        keep = admitted(rows) if callable(admitted) else admitted[rows]
        rows, contributions = rows[keep], contributions[keep]
    order = np.argsort(rows, kind="stable")
    rows, contributions = rows[order], contributions[order].astype(np.float64)
    starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1]))) if len(rows) else np.zeros(0, int)
    candidates = rows[starts].astype(np.int64)
    scores = np.add.reduceat(contributions, starts) if len(rows) else contributions
    order = np.lexsort((candidates, -scores))[:k]
    return candidates[order], scores[order]


@settings(max_examples=300, deadline=None)
@given(corpus=st.lists(st.lists(st.integers(0, 9), max_size=12), min_size=1, max_size=40), copies=st.integers(1, 4),
       queries=st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=8), min_size=1, max_size=4),
       k=st.integers(1, 90), first_round=st.sampled_from([1, 2, 5, 30, lexical.FIRST_ROUND]),
       kind=st.sampled_from(["all", "mask", "function"]), seed=st.integers(0, 2**16))
def test_maxscore_equals_summing_every_posting(tmp_path_factory, corpus, copies, queries, k, first_round, kind, seed):
    # Copies of each document make exact ties, which the row must break; small rounds make MaxScore
    # stop early and look candidates up, as it does at 1M documents.
    path = tmp_path_factory.mktemp("lexical") / "lexical.bin"
    rng = np.random.default_rng(seed)
    write_lexical(path, [np.array(d, dtype=np.int32) for d in rng.permutation(np.array(corpus * copies, dtype=object))])
    index = LexicalIndex(path)
    mask = rng.random(index.documents) < rng.uniform(0.05, 1)
    admitted = {"all": None, "mask": mask, "function": mask.__getitem__}[kind]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lexical, "FIRST_ROUND", first_round)
        for pieces in queries * 2:  # twice: the terms' largest weights are found, then remembered
            query = index.query(np.array(pieces), max_df=1.0)
            rows, scores, postings = index.search_counted(query, k, admitted)
            expected_rows, expected_scores = sum_every_posting(index, query, k, admitted)
            np.testing.assert_array_equal(rows, expected_rows)
            np.testing.assert_array_equal(scores, expected_scores)


def test_maxscore_leaves_a_frequent_term_unread(tmp_path, monkeypatch):
    """A rare term's documents beat any holding only the frequent one: the frequent list is only looked up."""
    rare, frequent = 1, 2
    corpus = [np.array([rare, frequent])] * 3 + [np.array([frequent])] * 5000 + [np.array([3])] * 5000
    write_lexical(tmp_path / "lexical.bin", corpus)
    index = LexicalIndex(tmp_path / "lexical.bin")
    query = index.query(np.array([rare, frequent]), max_df=1.0)
    monkeypatch.setattr(lexical, "FIRST_ROUND", 1)
    rows, scores, postings = index.search_counted(query, 2)
    assert rows.tolist() == [0, 1] and postings == 3 + 3  # the rare term's postings, then 3 look-ups
    np.testing.assert_array_equal(scores, sum_every_posting(index, query, 2)[1])


def test_frequent_pieces_are_left_out_unless_nothing_else_is_there():
    frequencies = np.array([90, 3, 0, 60])  # of 100 documents, for pieces 1, 5, 7, 9
    query = plan_query(np.array([9, 5, 1, 7, 5]), frequencies, 100, max_df=0.5)
    assert query.terms.tolist() == [5] and query.dropped == 2
    only_common = plan_query(np.array([1, 9]), np.array([90, 60]), 100, max_df=0.5)
    assert only_common.terms.tolist() == [9] and only_common.dropped == 1  # the rarer one stays
    assert query.weights[0] > plan_query(np.array([9]), np.array([60]), 100, max_df=1.0).weights[0]


def test_a_removed_file_still_answers_and_a_damaged_one_is_refused(tmp_path):
    path = tmp_path / "lexical.bin"
    write_lexical(path, [np.array([4, 5, 5]), np.array([], dtype=np.int32), np.array([5, 6])])
    index = LexicalIndex(path)
    path.unlink()  # a merge removed the segment: an open snapshot keeps answering
    rows, _ = index.search(index.query(np.array([4])), 10)
    assert rows.tolist() == [0] and index.documents == 3
    write_lexical(path, [np.array([4, 5, 5])])
    data = bytearray(path.read_bytes())
    path.write_bytes(data[:-8])
    with pytest.raises(SearchIndexError, match="unreadable lexical index.*hbt-index upgrade"):
        LexicalIndex(path)
    path.write_bytes(b"not a lexical file at all")
    with pytest.raises(SearchIndexError, match=str(path.name)):
        LexicalIndex(path)


# Passages with no spaces inside a sentence, and a same-language distractor each; queries in the same language.
UNSPLIT = {
    "zh": ("北京是中华人民共和国的首都，也是全国的政治和文化中心。", "上海是中国最大的城市，位于长江入海口。", "北京是哪个国家的首都？"),
    "ja": ("東京タワーは東京都港区にある電波塔で、高さは333メートルです。", "富士山は日本で最も高い山で、標高は3776メートルです。",
           "東京タワーの高さは？"),
    "th": ("กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย", "เชียงใหม่เป็นจังหวัดทางภาคเหนือของประเทศไทย",
           "เมืองหลวงของไทยคืออะไร"),
}


def test_chinese_japanese_and_thai_are_found_by_their_pieces(default_model_dir, tmp_path):
    from hbt.tokenizer import Tokenizer

    tokenizer = Tokenizer(default_model_dir / "sentencepiece.bpe.model")
    passages = [text for passage, distractor, _ in UNSPLIT.values() for text in (passage, distractor)]
    passages += ["The capital of France is Paris.", "Tokyo Tower is 333 metres tall.", "Bangkok is the capital."]
    write_lexical(tmp_path / "lexical.bin", text_pieces(tokenizer, passages))
    index = LexicalIndex(tmp_path / "lexical.bin")
    for lang, (passage, _, question) in UNSPLIT.items():
        # Split on spaces, the question shares no term with its passage: only pieces can match them.
        assert not set(question.split()) & set(passage.split())
        rows, scores = index.search(index.query(text_pieces(tokenizer, [question])[0], max_df=0.5), 3)
        assert passages[rows[0]] == passage, lang
        assert len(rows) == 1 or scores[0] > scores[1]
    langs = np.array([lang for lang in UNSPLIT for _ in range(2)] + ["en"] * 3)
    rows, _ = index.search(index.query(text_pieces(tokenizer, [UNSPLIT["ja"][2]])[0], max_df=0.5), 3,
                           admitted=langs == "zh")
    assert set(langs[rows]) <= {"zh"}  # the language filter holds on the lexical side


rankings = st.lists(st.lists(st.integers(0, 20), unique=True, max_size=12), max_size=4)


@settings(max_examples=200, deadline=None)
@given(rankings=rankings, data=st.data())
def test_rrf_does_not_depend_on_the_order_of_its_inputs(rankings, data):
    shuffled = data.draw(st.permutations(rankings))
    assert reciprocal_rank_fusion(rankings) == reciprocal_rank_fusion(shuffled)


@settings(max_examples=200, deadline=None)
@given(rankings=rankings, k=st.integers(0, 100))
def test_rrf_scores_and_ties(rankings, k):
    fused = reciprocal_rank_fusion(rankings, k=k)
    expected = {key: sum(1 / (k + r.index(key) + 1) for r in rankings if key in r) for r in rankings for key in r}
    assert {key for key, _ in fused} == set(expected)
    assert all(math.isclose(score, expected[key]) for key, score in fused)
    assert all(s1 > s2 or (s1 == s2 and i1 < i2) for (i1, s1), (i2, s2) in zip(fused, fused[1:]))


def test_rrf_breaks_exact_ties_by_id():
    assert [key for key, _ in reciprocal_rank_fusion([["b", "a"], ["a", "b"]])] == ["a", "b"]


scored = st.lists(st.tuples(st.integers(0, 30), st.floats(-1e6, 1e6)), max_size=12, unique_by=lambda pair: pair[0])


def as_ranking(pairs):
    """Best first, ties by id: the order a searcher returns."""
    return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))


@settings(max_examples=300, deadline=None)
@given(dense=scored, lexical=scored)
def test_convex_fusion_at_weight_0_and_1_is_one_side(dense, lexical):
    dense, lexical = as_ranking(dense), as_ranking(lexical)
    assert [key for key, _ in convex_fusion(dense, lexical, 0.0)] == [key for key, _ in dense]
    assert [key for key, _ in convex_fusion(dense, lexical, 1.0)] == [key for key, _ in lexical]


@settings(max_examples=200, deadline=None)
@given(dense=scored, lexical=scored, weight=st.floats(0, 1))
def test_convex_fusion_scores(dense, lexical, weight):
    fused = dict(convex_fusion(as_ranking(dense), as_ranking(lexical), weight))
    d = dict(zip([key for key, _ in dense], min_max([s for _, s in dense])))
    lex = dict(zip([key for key, _ in lexical], min_max([s for _, s in lexical])))
    for key, score in fused.items():
        assert math.isclose(score, (1 - weight) * d.get(key, 0) + weight * lex.get(key, 0), abs_tol=1e-12)
    if 0 < weight < 1:
        assert set(fused) == set(d) | set(lex)


def test_convex_fusion_refuses_a_weight_outside_0_1():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        convex_fusion([], [], 1.5)
