"""The lexical part of every segment, through the real index: BM25 across segments and tombstones, search
modes, upgrade, merges, snapshots, verify, Chinese, Japanese and Thai, and the commands."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbt.bundle import sha256_file
from hbt.corpus import Document
from hbt.errors import SearchIndexError
from hbt.fusion import convex_fusion, reciprocal_rank_fusion
from hbt.index import (Index, IndexConfig, add_documents, build_index, compact_index, delete_documents, text_pieces,
                       upgrade_index, verify_index)
from hbt.index import fanout, lexical
from hbt.index.lexical import K1, B
from hbt.search import LEXICAL_WEIGHT, Searcher, SearchMode
from hbt.tokenizer import Tokenizer
from tests.conftest import write_tiny_tokenizer
from tests.fakes import HashEncoder
from tests.pieces import PieceEncoder
from tests.test_lexical import UNSPLIT

LANGS = ["en", "de", "sw"]
WORDS = ["text", "alpha", "beta", "gamma", "fresh", "title", "of", "d", "1", "2", "3", "4"]
CONFIG = IndexConfig(M=8, ef_construction=32, segment_size=16)


def corpus(count: int, seed: int = 0) -> list[Document]:
    """Documents of a few words from a small vocabulary, ids in label order (d000, d001, ...)."""
    rng = np.random.default_rng(seed)
    return [Document(f"d{i:03d}", " ".join(rng.choice(WORDS, size=rng.integers(1, 9))), lang=LANGS[i % 3])
            for i in range(count)]


def reference_ranking(documents, segment_of, deleted, query: str, langs, tokenizer) -> dict[str, float]:
    """BM25 of every admitted live document, written out: idf over every document stored (deleted ones too,
    as Lucene counts them), length normalized by the document's own segment."""
    pieces = text_pieces(tokenizer, [d.text for d in documents])
    terms = set(text_pieces(tokenizer, [query])[0].tolist())
    n = len(documents)
    df = {t: sum(t in set(p.tolist()) for p in pieces) for t in terms}
    lengths: dict[int, list[int]] = {}
    for p, s in zip(pieces, segment_of):
        lengths.setdefault(s, []).append(len(p))
    average = {s: (sum(v) / len(v)) or 1.0 for s, v in lengths.items()}
    scores = {}
    for doc, p, s in zip(documents, pieces, segment_of):
        if doc.id in deleted or (langs and doc.lang not in langs):
            continue
        counts = Counter(p.tolist())
        score = sum(math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) * counts[t] * (K1 + 1)
                    / (counts[t] + K1 * (1 - B + B * len(p) / average[s])) for t in terms if counts[t])
        if score > 0:
            scores[doc.id] = score
    return scores


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 50), seed=st.integers(0, 1000), k=st.integers(1, 60),
       query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=4), langs=st.sampled_from([None, ["de"]]),
       removed=st.sets(st.integers(0, 49), max_size=10))
def test_lexical_search_is_bm25_over_the_whole_index(tmp_path_factory, monkeypatch, count, seed, k, query, langs,
                                                       removed):
    monkeypatch.setattr(lexical, "MAX_DF", 1.0)  # no piece left out: the reference scores them all
    encoder, documents = PieceEncoder(), corpus(count, seed)
    directory = tmp_path_factory.mktemp("index") / "index"
    build_index(documents, encoder, directory, CONFIG)
    deleted = {f"d{i:03d}" for i in removed if i < count}
    delete_documents(directory, sorted(deleted))
    expected = reference_ranking(documents, [i // CONFIG.segment_size for i in range(count)], deleted,
                                 " ".join(query), langs, encoder.tokenizer)
    hits = Searcher(encoder, Index(directory)).search([" ".join(query)], k=k, langs=langs, mode="lexical")[0]
    assert len(hits) == min(k, len(expected))
    for hit in hits:
        assert math.isclose(hit.score, expected[hit.id], rel_tol=1e-5), hit.id
    best = sorted(expected.values(), reverse=True)[: len(hits)]
    np.testing.assert_allclose([hit.score for hit in hits], best, rtol=1e-5)
    assert all(a.score > b.score or (a.score == b.score and a.id < b.id) for a, b in zip(hits, hits[1:]))  # ties: id


@pytest.fixture
def segmented(tmp_path):
    encoder, documents = PieceEncoder(), corpus(90)
    build_index(documents, encoder, tmp_path / "index", CONFIG)
    delete_documents(tmp_path / "index", ["d004", "d040"])
    return tmp_path / "index", encoder


@pytest.mark.parametrize("fusion", ["convex", "rrf"])
@pytest.mark.parametrize("langs", [None, ["de"]])
def test_hybrid_fuses_the_two_rankings(segmented, fusion, langs):
    directory, encoder = segmented
    searcher = Searcher(encoder, Index(directory))
    for query in ("alpha beta", "fresh text 3", "gamma"):
        dense = [(h.id, h.score) for h in searcher.search([query], k=100, langs=langs, mode="dense")[0]]
        lexical_side = [(h.id, h.score) for h in searcher.search([query], k=100, langs=langs, mode="lexical")[0]]
        run = searcher.run([query], k=7, langs=langs, mode=SearchMode("hybrid", 0.3, fusion))
        fused = dict(convex_fusion(dense, lexical_side, 0.3) if fusion == "convex" else
                     reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in lexical_side]]))
        best = sorted(fused.values(), reverse=True)[:7]
        np.testing.assert_allclose([hit.score for hit in run.hits[0]], best, rtol=1e-6)
        assert all(math.isclose(hit.score, fused[hit.id], rel_tol=1e-6) for hit in run.hits[0])
        assert {"encode", "search", "lexical", "fuse", "fetch"} <= set(run.timings)
        assert "mode hybrid" in run.plan and "lexical:" in run.plan


def test_hybrids_two_sides_on_threads_answer_as_one_after_another(segmented, monkeypatch):
    directory, encoder = segmented
    searcher = Searcher(encoder, Index(directory))
    runs = {}
    for workers in (1, 2):
        monkeypatch.setattr(fanout, "WORKERS", workers)
        runs[workers] = [searcher.run([query], k=7, langs=langs, mode="hybrid")
                         for query in ("alpha beta", "fresh text 3") for langs in (None, ["de"])]
    assert len(Index(directory).segments) > 1  # the dense side fans out again, inside a pool thread
    for one, two in zip(runs[1], runs[2]):
        assert one.hits == two.hits and one.plan == two.plan and set(one.timings) == set(two.timings)


def test_auto_is_hybrid_for_queries_searched_in_their_own_language_alone(segmented, tmp_path):
    directory, encoder = segmented
    searcher = Searcher(encoder, Index(directory))
    german = SearchMode(query_lang="de")
    assert searcher.run(["alpha"], langs=["de"], mode=german).plan.startswith(
        "mode hybrid (convex, lexical weight 0.3) by auto (query language de, searched alone)")
    assert searcher.run(["alpha"], langs=["de"]).plan.startswith("mode dense by auto (query language not given)")
    assert searcher.run(["alpha"], langs=["en"], mode=german).plan.startswith("mode dense by auto")  # cross
    assert searcher.run(["alpha"], mode=german).plan.startswith("mode dense by auto")
    assert searcher.run(["alpha"], langs=["de", "en"], mode=german).plan.startswith("mode dense by auto")
    lexical_only = searcher.run(["alpha"], mode="lexical")
    assert "encode" not in lexical_only.timings and "lexical" in lexical_only.timings  # nothing embedded
    assert SearchMode().lexical_weight == LEXICAL_WEIGHT == 0.3
    # An index built before lexical parts: auto stays dense, lexical and hybrid name the fix.
    build_index(corpus(20), HashEncoder(), tmp_path / "old", CONFIG)
    old = Searcher(encoder, Index(tmp_path / "old"))
    assert old.run(["alpha"], langs=["de"], mode=SearchMode(query_lang="de")).plan.startswith("mode dense by auto")
    for mode in ("lexical", "hybrid"):
        with pytest.raises(SearchIndexError, match=re.escape(f"hbt-index upgrade {tmp_path / 'old'}")):
            old.run(["alpha"], mode=mode)


def lexical_digests(directory: Path) -> list[str]:
    return [sha256_file(directory / entry.name / "lexical.bin") for entry in Index(directory).manifest.segments]


def test_upgrade_adds_the_parts_a_build_would_have_written_without_re_embedding(tmp_path):
    documents, encoder = corpus(50), PieceEncoder()
    for name, builder in (("old", HashEncoder()), ("new", encoder)):  # HashEncoder: no tokenizer, no lexical part
        build_index(documents, builder, tmp_path / name, CONFIG)
        delete_documents(tmp_path / name, ["d001", "d030"])
    before = Index(tmp_path / "old")
    dense = Searcher(encoder, before).search(["alpha gamma"], k=10, mode="dense")
    graphs = [sha256_file(tmp_path / "old" / e.name / "graph.hnsw") for e in before.manifest.segments]
    manifest = upgrade_index(tmp_path / "old", tokenizer=encoder.tokenizer)
    assert manifest.generation == before.generation + 1 and manifest.count == 48
    assert lexical_digests(tmp_path / "old") == lexical_digests(tmp_path / "new")
    assert [sha256_file(tmp_path / "old" / e.name / "graph.hnsw") for e in manifest.segments] == graphs
    after = Searcher(encoder, Index(tmp_path / "old"))
    assert after.search(["alpha gamma"], k=10, mode="dense") == dense
    assert after.search(["alpha gamma"], k=10, mode="lexical") == Searcher(encoder, Index(tmp_path / "new")).search(
        ["alpha gamma"], k=10, mode="lexical")
    assert upgrade_index(tmp_path / "old").generation == manifest.generation  # nothing left to do: no bundle read
    assert Searcher(encoder, before).search(["alpha gamma"], k=10, mode="dense") == dense


def test_a_merge_rebuilds_the_parts_with_no_tokenizer_as_a_build_of_the_live_documents(tmp_path):
    documents, encoder = corpus(60), PieceEncoder()
    build_index(documents[:20], encoder, tmp_path / "merged", IndexConfig(M=8, ef_construction=32, segment_size=64))
    add_documents(tmp_path / "merged", documents[20:40], encoder)
    add_documents(tmp_path / "merged", documents[40:], encoder)
    gone = ["d002", "d025", "d041", "d059"]
    delete_documents(tmp_path / "merged", gone)
    compact_index(tmp_path / "merged", expunge_deletes=True)
    assert len(Index(tmp_path / "merged").manifest.segments) == 1
    live = [d for d in documents if d.id not in gone]
    build_index(live, encoder, tmp_path / "fresh", IndexConfig(M=8, ef_construction=32, segment_size=64))
    assert lexical_digests(tmp_path / "merged") == lexical_digests(tmp_path / "fresh")


def test_a_snapshot_keeps_its_lexical_answers_after_a_merge_removed_its_files(segmented):
    directory, encoder = segmented
    snapshot = Index(directory)
    searcher = Searcher(encoder, snapshot)
    before = searcher.search(["alpha beta", "gamma 3"], k=5, mode="lexical")
    delete_documents(directory, ["d010", "d020", "d035", "d050", "d070", "d085"])  # one in each segment
    compact_index(directory, expunge_deletes=True)
    assert not any((directory / view.segment.name).exists() for view in snapshot.segments)
    assert searcher.search(["alpha beta", "gamma 3"], k=5, mode="lexical") == before
    newest = Searcher(encoder, Index(directory)).search(["alpha beta", "gamma 3"], k=90, mode="lexical")
    assert "d010" not in {hit.id for hits in newest for hit in hits}


def test_verify_checks_the_parts_against_the_stored_texts(segmented, tmp_path):
    directory, encoder = segmented
    assert verify_index(directory, tokenizer=encoder.tokenizer)["lexical"].startswith("ok (checksums, pieces")
    other = tmp_path / "other.model"
    write_tiny_tokenizer(other, ["completely other words here", "nothing like the corpus", "zzz yyy xxx"])
    with pytest.raises(SearchIndexError, match="does not hold the pieces of document"):
        verify_index(directory, tokenizer=Tokenizer(other))
    path = directory / Index(directory).manifest.segments[0].name / "lexical.bin"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a weight changed, the size kept
    path.write_bytes(bytes(data))
    with pytest.raises(SearchIndexError, match="lexical.bin: checksum mismatch"):
        verify_index(directory)
    path.write_bytes(bytes(data[:-64]))
    with pytest.raises(SearchIndexError, match="lexical.bin.*(bytes|unreadable)"):
        Index(directory)


def test_chinese_japanese_and_thai_passages_are_found_lexically_through_the_index(default_model_dir, tmp_path):
    """Passages with no spaces, queries in their language: found by their pieces, in the real index."""
    encoder = HashEncoder()
    encoder.tokenizer = Tokenizer(default_model_dir / "sentencepiece.bpe.model")  # the bundle's real tokenizer
    documents = [Document(f"{lang}-{n}", text, lang=lang) for lang, texts in UNSPLIT.items()
                 for n, text in enumerate(texts[:2])]
    documents += [Document(f"en-{n}", text, lang="en") for n, text in enumerate(
        ["The capital of France is Paris.", "Tokyo Tower is 333 metres tall.", "Bangkok is the capital."])]
    build_index(documents, encoder, tmp_path / "index", IndexConfig(M=8, ef_construction=32, segment_size=4))
    searcher = Searcher(encoder, Index(tmp_path / "index"))
    for lang, (passage, _, question) in UNSPLIT.items():
        assert " " not in passage
        for langs in (None, [lang]):
            hits = searcher.search([question], k=3, langs=langs, mode="lexical")[0]
            assert hits[0].text == passage and hits[0].id == f"{lang}-0", (lang, langs)
            assert len(hits) == 1 or hits[0].score > hits[1].score
        hybrid = searcher.run([question], k=3, langs=[lang], mode=SearchMode(query_lang=lang))  # auto: hybrid
        assert hybrid.plan.startswith("mode hybrid") and f"{lang}-0" in {hit.id for hit in hybrid.hits[0]}
        assert all(hit.lang == lang for hit in hybrid.hits[0])  # the filter holds on both sides


def invoke(cli, *args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_commands_search_in_every_mode_and_upgrade_an_old_index(tiny_bundle, tmp_path):
    from hbt.cli.index import main as index_cli
    from hbt.cli.search import main as search_cli

    rows = [{"id": f"{lang}-{n}", "text": text, "lang": lang} for lang, texts in UNSPLIT.items()
            for n, text in enumerate(texts[:2])]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    index = tmp_path / "index"
    invoke(index_cli, "build", tmp_path / "corpus.jsonl", "--bundle", tiny_bundle, "--index", index)
    answers = {}
    for mode in ("dense", "lexical", "hybrid"):
        output = invoke(search_cli, "query", UNSPLIT["ja"][0], "--index", index, "--mode", mode, "--json", "-k", "2")
        answers[mode] = json.loads(output)
        assert answers[mode]["plan"].startswith(f"mode {mode}")
    assert "lexical" in answers["hybrid"]["timings_ms"] and "lexical" not in answers["dense"]["timings_ms"]
    assert answers["lexical"]["hits"][0]["id"] == "ja-0"  # its own text, found by its pieces
    rrf = json.loads(invoke(search_cli, "query", "東京", "--index", index, "--mode", "hybrid", "--fusion", "rrf",
                            "--json"))
    assert rrf["plan"].startswith("mode hybrid (rrf)")
    refused = CliRunner().invoke(search_cli, ["query", "x", "--index", str(index), "--lexical-weight", "1.5"])
    assert refused.exit_code == 2 and "1.5" in refused.output
    help_text = invoke(search_cli, "query", "--help")
    assert "auto: hybrid when the queries' language is known and the search is restricted to exactly that " \
           "language" in " ".join(help_text.split()) and "--query-lang CODE" in help_text
    by_auto = {given: json.loads(invoke(search_cli, "query", "東京", "--index", index, "--lang", "ja", *given,
                                        "--json"))["plan"] for given in ((), ("--query-lang", "ja"),
                                                                          ("--query-lang", "zh"))}
    assert by_auto[()].startswith("mode dense by auto (query language not given)")
    assert by_auto[("--query-lang", "ja")].startswith("mode hybrid (convex, lexical weight 0.3) by auto")
    assert by_auto[("--query-lang", "zh")].startswith("mode dense by auto (query language zh")
    # An index of before lexical parts: the manifest without them, as an older hbt wrote it.
    digests = lexical_digests(index)
    manifest = json.loads((index / "manifest.json").read_text())
    for entry in manifest["segments"]:
        del entry["files"]["lexical.bin"]
        (index / entry["name"] / "lexical.bin").unlink()
    (index / "manifest.json").write_text(json.dumps(manifest))
    assert json.loads(invoke(search_cli, "query", "東京", "--index", index, "--lang", "ja", "--query-lang", "ja",
                             "--json"))["plan"].startswith("mode dense by auto")
    refused = CliRunner().invoke(search_cli, ["query", "東京", "--index", str(index), "--mode", "lexical"])
    assert refused.exit_code != 0 and "hbt-index upgrade" in refused.output
    assert "lexical parts in all 1 segment(s)" in invoke(index_cli, "upgrade", index)
    assert lexical_digests(index) == digests
    assert "lexical ok (checksums, pieces of the stored texts)" in invoke(index_cli, "verify", index)


def test_a_wordpiece_bundle_searches_lexically_by_its_word_pieces(tmp_path):
    """WordPiece bundles (BERT-style) have lexical parts too: their word pieces are the terms. BERT's basic
    tokenization splits Chinese characters apart, but not Thai or kana runs, which are then matched only
    as whole words (a limit of WordPiece itself, left out here)."""
    pytest.importorskip("transformers", reason="the test vocabulary is made with transformers' BasicTokenizer")
    from hbt.tokenizer import TokenizerSpec
    from tests.st_models import SPECIALS, wordpiece_vocab

    texts = [passage for passage, _, _ in UNSPLIT.values()] + ["The capital of France is Paris.", "Bees make honey."]
    (tmp_path / "vocab.txt").write_text("\n".join(wordpiece_vocab(texts, lowercase=True)) + "\n", encoding="utf-8")
    spec = TokenizerSpec(file="vocab.txt", id_offset=0, bos_id=SPECIALS.index("[CLS]"), pad_id=0,
                         eos_id=SPECIALS.index("[SEP]"), unk_id=SPECIALS.index("[UNK]"), kind="wordpiece",
                         lowercase=True, strip_accents=True)
    encoder = HashEncoder()
    encoder.tokenizer = Tokenizer(tmp_path / "vocab.txt", spec)
    build_index([Document(f"p{i}", text) for i, text in enumerate(texts)], encoder, tmp_path / "index", CONFIG)
    searcher = Searcher(encoder, Index(tmp_path / "index"))
    for question, expected in (("北京的首都", "p0"), ("首都北京", "p0"), ("paris", "p3"), ("honey bees", "p4")):
        assert searcher.search([question], k=1, mode="lexical")[0][0].id == expected
