"""Metrics (property tests, cross-checked with ranx), LAReQA settings, reports and bench CLI."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from hbt.cli.bench import main as bench_cli
from hbt.errors import DataError
from hbt.lareqa import SETTINGS, evaluate, load_dataset, read_paragraphs
from hbt.metrics import average_precision, language_bias, ndcg_at, recall_at, relevant_ranks
from hbt.retrieval import RANKERS, Ranker
from tests.fakes import HashEncoder
from tests.test_export import assert_one_line_error


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_agree_with_ranx(seed):
    """200 random rankings with ties, evaluated by hbt and by ranx (one call: ranx compiles with numba)."""
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(seed)
    qrels, run, ours = {}, {}, {}
    for q in range(200):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, n // 2 + 1, size=n).astype(float)  # many ties
        relevant = rng.choice(n, size=rng.integers(1, n + 1), replace=False)
        ranks = relevant_ranks(scores, relevant)
        ours[f"q{q:03d}"] = (average_precision(ranks), ndcg_at(ranks, 10), recall_at(ranks, 10))
        assert 0 <= language_bias(ranks) <= n - 1
        # Stable descending order by score, then index: give ranx strictly decreasing scores in that order.
        order = sorted(range(n), key=lambda i: (-scores[i], i))
        qrels[f"q{q:03d}"] = {f"d{i:03d}": 1 for i in relevant}
        run[f"q{q:03d}"] = {f"d{i:03d}": float(n - position) for position, i in enumerate(order)}
    expected = {m: ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), m, return_mean=False)
                for m in ("map", "ndcg@10", "recall@10")}
    for position, q in enumerate(sorted(ours)):  # ranx returns queries in id order
        assert ours[q] == pytest.approx((expected["map"][position], expected["ndcg@10"][position],
                                         expected["recall@10"][position]))


def test_metric_edge_cases():
    assert average_precision(np.array([1, 2, 3])) == 1.0
    assert average_precision(np.array([2])) == 0.5
    assert ndcg_at(np.array([11]), 10) == 0.0
    assert language_bias(np.array([3, 3])) == 0


def write_lareqa(folder, lang, paragraphs):
    """paragraphs: list of (sentences, [(qa_id, question, answer_sentence_index)])."""
    data = {"data": [{"title": "t", "paragraphs": []}]}
    for sentences, qas in paragraphs:
        breaks, start = [], 0
        for s in sentences:
            breaks.append([start, start + len(s)])
            start += len(s) + 1
        data["data"][0]["paragraphs"].append({
            "context": " ".join(sentences), "sentences": sentences, "sentence_breaks": breaks,
            "qas": [{"id": qid, "question": q, "answers": [{"text": "x", "answer_start": breaks[i][0]}]} for qid, q, i in qas],
        })
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{lang}.json.gz", "wt", encoding="utf-8") as f:
        json.dump(data, f)


@pytest.fixture
def toy_dataset(tmp_path):
    root = tmp_path / "data"
    for lang in ("aa", "bb"):
        write_lareqa(root / "xquad-r", lang, [
            ([f"{lang} alpha sentence", f"{lang} beta sentence"], [("q1", f"{lang} alpha?", 0), ("q2", f"{lang} beta?", 1)]),
        ])
    return root


def fake_encoder(texts):
    """Embeds by topic word only: a perfect, language-blind retriever."""
    topics = ["alpha", "beta"]
    vectors = np.array([[float(t in text) for t in topics] + [0.01] for text in texts])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_lareqa_settings_on_a_perfect_retriever(toy_dataset):
    data = load_dataset(toy_dataset, "xquad-r")
    assert data["aa"].answers == {"q1": 0, "q2": 1}
    results = evaluate(data, fake_encoder, fake_encoder)
    assert results["mono"]["mean"]["map"] == 1.0 and results["cross"]["mean"]["groups"] == 2
    assert results["cross"]["mean"]["map"] == 1.0
    multi = results["multi"]["mean"]
    assert multi["map"] == 1.0 and multi["language_bias"] == pytest.approx(1.0)  # ties: both answers rank 1 and 2


@pytest.mark.parametrize("kind", RANKERS)
def test_x_to_english_with_either_ranker(tmp_path, kind):
    for lang in ("en", "de", "hi"):
        write_lareqa(tmp_path / "xquad-r", lang, [
            ([f"{lang} alpha sentence", f"{lang} beta sentence"], [("q1", f"{lang} alpha?", 0), ("q2", f"{lang} beta?", 1)]),
        ])
    data = load_dataset(tmp_path, "xquad-r")
    results = evaluate(data, fake_encoder, fake_encoder, ("x-en", "multi"), ranker=Ranker(kind))
    assert set(results["x-en"]["pairs"]) == {"de-en", "hi-en"} and results["x-en"]["mean"]["map"] == 1.0
    assert results["multi"]["mean"]["map"] == 1.0
    with pytest.raises(DataError, match="x-en setting needs English"):
        evaluate({"de": data["de"]}, fake_encoder, fake_encoder, ("x-en",))


def test_every_setting_ranks_within_its_pool_and_the_index_agrees(tmp_path):
    """Exact ranks are brute force over the setting's pool (its languages' candidates, in dataset order, ties by
    position); the index ranker, on pools far below its top 100, returns the same ranks."""
    rng = np.random.default_rng(3)
    langs = ("de", "en", "hi")
    for lang in langs:
        write_lareqa(tmp_path / "xquad-r", lang, [
            ([f"{lang} sentence {p}-{i}" for i in range(5)],
             [(f"q{p}-{j}", f"{lang} question {p}-{j}", int(rng.integers(5))) for j in range(3) if rng.random() < 0.8])
            for p in range(6)])  # 90 candidates: every pool within the top 100
    data = load_dataset(tmp_path, "xquad-r")
    encoder = HashEncoder(dimension=8)  # random-looking vectors: ties are as rare as in real data
    questions = {lang: encoder.encode([data[lang].questions[q] for q in sorted(data[lang].questions)]) for lang in langs}
    candidates = {lang: encoder.encode(data[lang].candidates) for lang in langs}

    def brute_force(query_lang, pool_langs):
        pool = np.vstack([candidates[l] for l in pool_langs])
        offsets = np.cumsum([0] + [len(candidates[l]) for l in pool_langs])
        out = {}
        for qid, scores in zip(sorted(data[query_lang].questions), questions[query_lang] @ pool.T):
            relevant = [offsets[j] + data[l].answers[qid] for j, l in enumerate(pool_langs) if qid in data[l].answers]
            if relevant:
                out[qid] = relevant_ranks(scores, np.array(relevant))
        return out

    expected = {f"mono/{l}": brute_force(l, [l]) for l in langs}
    expected |= {f"cross/{x}-{y}": brute_force(x, [y]) for x in langs for y in langs if x != y}
    expected |= {f"x-en/{x}-en": brute_force(x, ["en"]) for x in langs if x != "en"}
    expected |= {f"multi/{l}": brute_force(l, list(langs)) for l in langs}
    for kind in RANKERS:
        per_question = {}
        evaluate(data, encoder.encode, encoder.encode, SETTINGS, ranker=Ranker(kind), per_question=per_question)
        found = {group: dict(zip(ids, ranks)) for group, (ids, ranks) in per_question.items()}
        assert found.keys() == expected.keys()
        for group, ranks in expected.items():
            assert found[group].keys() == ranks.keys() and len(ranks) > 0
            assert all(np.array_equal(found[group][qid], ranks[qid]) for qid in ranks), (kind, group)


def test_sample_keeps_the_same_ids_in_every_language(tmp_path):
    """A sampled question keeps its paragraph (its answer) in every language, so relevance stays whole."""
    for lang in ("aa", "bb"):
        write_lareqa(tmp_path / "mlqa-r", lang, [([f"{lang} s{i}a", f"{lang} s{i}b"], [(f"id{i}", f"{lang} q{i}?", i % 2)])
                                                 for i in range(200)])
    full = load_dataset(tmp_path, "mlqa-r")
    part = load_dataset(tmp_path, "mlqa-r", share=0.3)
    kept = set(part["aa"].questions)
    assert kept == set(part["bb"].questions) and 30 < len(kept) < 90
    assert load_dataset(tmp_path, "mlqa-r", share=0.3)["aa"].questions == part["aa"].questions
    for lang in ("aa", "bb"):
        assert len(part[lang].candidates) == 2 * len(kept)
        assert all(part[lang].candidates[part[lang].answers[q]] == full[lang].candidates[full[lang].answers[q]] for q in kept)


def test_bench_accuracy_writes_report(tiny_bundle, toy_dataset, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "xquad-r",
                                            "--data-dir", str(toy_dataset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["settings"]) == {"mono", "cross", "multi"} and results["environment"]["bundle"]["fingerprint"]
    assert "| mono |" in (out / "report.md").read_text()
    from hbt.machine import cpu_model

    environment = results["environment"]
    assert environment["cpu"] == cpu_model() and environment["int8_check"] is None  # an fp32 bundle: nothing to check
    assert (out / "report.md").read_text().splitlines()[2].startswith(f"Measured on {cpu_model()}")
    assert (out / "heatmap.png").stat().st_size > 1000 and (out / "languages.png").stat().st_size > 1000
    table = CliRunner().invoke(bench_cli, ["compare", str(out), str(out)]).output
    assert "(+0.000)" in table
    damaged = tmp_path / "damaged"
    for name, text in (("truncated", (out / "results.json").read_text()[:100]), ("latency", '{"settings": {"x": 1}}')):
        (damaged / name).mkdir(parents=True)
        (damaged / name / "results.json").write_text(text)
        assert_one_line_error(CliRunner().invoke(bench_cli, ["compare", str(out), str(damaged / name)]),
                              f"{name}/results.json: not an hbt-bench accuracy result")


def test_bench_accuracy_through_the_index(tiny_bundle, toy_dataset, tmp_path):
    """--ranker index (with --ef and --depth) reports what it searched, and on pools this small the exact figures; --ann,
    deprecated, means --ranker index; --ef with the exact ranker is refused."""
    runs = {"exact": [], "index": ["--ranker", "index", "--ef", "40", "--depth", "50"], "ann": ["--ann"]}
    searched = {"exact": "exact", "index": "index top 50, ef 40", "ann": "index top 1000, ef 128"}  # LAReQA's depth
    for name, options in runs.items():
        out = tmp_path / name
        result = CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "xquad-r",
                                                "--data-dir", str(toy_dataset), "--out", str(out), *options])
        assert result.exit_code == 0, result.output
        report = json.loads((out / "results.json").read_text())
        assert report["search"] == searched[name]
        assert (sum(report["plans"].values()) > 0) == (name != "exact")  # the index's plans, counted
        assert report["settings"] == json.loads((tmp_path / "exact" / "results.json").read_text())["settings"]
        assert ("--ann is deprecated; use --ranker index" in result.output) == (name == "ann")
    assert_one_line_error(CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "xquad-r",
                                                         "--data-dir", str(toy_dataset), "--ef", "40"]),
                          "--ef 40: the exact ranker has no ef; add --ranker index")


def test_bench_latency_report_on_the_demo_corpus(tiny_bundle, tmp_path):
    out = tmp_path / "latency"
    result = CliRunner().invoke(bench_cli, ["latency", "--bundle", str(tiny_bundle), "--data-dir", str(tmp_path),
                                            "--num-queries", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["workload"]["source"] == "demo corpus" and results["index_build"]["documents"] == 240
    e2e = results["end_to_end"]
    assert len(e2e["seconds"]) == 30 and 0 < e2e["p50_ms"] <= e2e["p99_ms"]
    assert results["encode"]["batch_32_texts_per_second"] > 0 and results["peak_memory_mib"] > 0
    assert "end to end p50" in (out / "report.md").read_text() and (out / "latency.png").stat().st_size > 1000


def test_bench_errors(tiny_bundle, tmp_path):
    runner = CliRunner()
    assert_one_line_error(runner.invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "nope",
                                                    "--data-dir", str(tmp_path)]), "unknown dataset")
    assert_one_line_error(runner.invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "mlqa-r",
                                                    "--data-dir", str(tmp_path)]), "no mlqa-r files", "HBT_DATA")


def test_settings_that_pair_languages_need_two(toy_dataset, tiny_bundle):
    data = load_dataset(toy_dataset, "xquad-r", ["aa"])
    for setting in ("cross", "x-en"):
        with pytest.raises(DataError, match=f"the {setting} setting pairs two languages"):
            evaluate(data if setting == "cross" else {"en": data["aa"]}, fake_encoder, fake_encoder, (setting,))
    assert_one_line_error(CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "xquad-r",
                                                         "--data-dir", str(toy_dataset), "--lang", "aa",
                                                         "--settings", "cross"]), "pairs two languages")


def test_settings_without_answerable_questions_are_one_error(tmp_path):
    """Two languages that share no qa id: no cross-lingual pair has a relevant candidate."""
    write_lareqa(tmp_path / "xquad-r", "aa", [(["aa alpha"], [("q1", "aa alpha?", 0)])])
    write_lareqa(tmp_path / "xquad-r", "bb", [(["bb beta"], [("q2", "bb beta?", 0)])])
    with pytest.raises(DataError, match="the cross setting has no question with an answer"):
        evaluate(load_dataset(tmp_path, "xquad-r"), fake_encoder, fake_encoder, ("cross",))


def gzipped_paragraph(**paragraph) -> bytes:
    return gzip.compress(json.dumps({"data": [{"title": "t", "paragraphs": [paragraph]}]}).encode())


@pytest.mark.parametrize("content, problem", [
    (b"not gzip at all", "not readable as JSON"),
    (gzip.compress(b'{"data": [{"paragraphs": [{"sentences": ["a"'), "not readable as JSON"),
    (gzip.compress(b"\xff\xfe{}"), "not readable as JSON"),
    (gzip.compress(b'{"data": [{"title": "t"}]}'), "data[0]: not LAReQA data (no 'paragraphs')"),
    (gzipped_paragraph(sentences=["s"], qas=[]), "data[0].paragraphs[0]: not LAReQA data (no 'sentence_breaks')"),
    (gzipped_paragraph(sentences=["s"], sentence_breaks=[[0, 1]], qas=[{"id": "q", "question": "?", "answers": []}]),
     "data[0].paragraphs[0]: not LAReQA data (qa 'q' has no answer)"),
    (gzipped_paragraph(sentences=[1], sentence_breaks=[[0, 1]], qas=[]), "sentences must be a list of strings"),
])
def test_malformed_lareqa_files_are_one_line_errors(tmp_path, tiny_bundle, content, problem):
    (tmp_path / "xquad-r").mkdir()
    (tmp_path / "xquad-r" / "aa.json.gz").write_bytes(content)
    with pytest.raises(DataError, match=re.escape(problem)):
        read_paragraphs(tmp_path / "xquad-r" / "aa.json.gz")
    assert_one_line_error(CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "xquad-r",
                                                         "--data-dir", str(tmp_path)]), "aa.json.gz", problem)


def test_lang_selects_languages_and_languages_stays_a_hidden_alias(toy_dataset, tiny_bundle, tmp_path):
    write_lareqa(toy_dataset / "xquad-r", "cc", [(["cc alpha"], [("q1", "cc alpha?", 0)])])
    runs = {"lang": ["--lang", "aa", "--lang", "cc"], "languages": ["--languages", "aa,cc"]}
    for name, option in runs.items():
        result = CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "xquad-r",
                                                "--data-dir", str(toy_dataset), "--settings", "mono",
                                                "--out", str(tmp_path / name), *option])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / name / "results.json").read_text())
        assert set(report["settings"]["mono"]["per_language"]) == {"aa", "cc"}
        assert ("--languages is deprecated" in result.output) == (name == "languages")
    assert "--languages" not in CliRunner().invoke(bench_cli, ["accuracy", "--help"]).output


def test_latency_on_a_damaged_index_is_one_line(tiny_bundle, tmp_path):
    """A document store SQLite cannot query (here: its table renamed) ends in one line, not a traceback; the old
    spelling --queries of --num-queries still works, with a warning."""
    from hbt.corpus import read_corpus
    from hbt.demo import DEMO_CORPUS
    from hbt.encoder import Encoder
    from hbt.index import build_index

    build_index(read_corpus(DEMO_CORPUS), Encoder(tiny_bundle), tmp_path / "index")
    with sqlite3.connect(next((tmp_path / "index").rglob("docs.sqlite"))) as db:
        db.execute("ALTER TABLE docs RENAME TO elsewhere")
    result = CliRunner().invoke(bench_cli, ["latency", "--bundle", str(tiny_bundle), "--index", str(tmp_path / "index"),
                                            "--data-dir", str(tmp_path), "--queries", "5", "--out", str(tmp_path / "r")])
    assert "--queries is deprecated; use --num-queries" in result.output
    assert_one_line_error(result, str(tmp_path / "index"), "no such table")


def pooled_dataset(root, rng, langs=("aa", "bb"), candidates=150):
    """Random sentences over a few words the tiny tokenizer knows, so that BM25 matches some candidates of
    every question and ties among them; pools above hybrid's FUSION_DEPTH, so that some run past the fusion."""
    words = ["text", "fresh", "alpha", "beta", "gamma", "title", "of", "d", "1", "2", "3", "4"]
    for lang in langs:
        sentences = [" ".join(rng.choice(words, 4)) for _ in range(candidates)]
        qas = [(f"q{j}", " ".join(rng.choice(words, 3)) + "?", int(rng.integers(candidates))) for j in range(12)]
        write_lareqa(root / "xquad-r", lang, [(sentences, qas)])
    return load_dataset(root, "xquad-r")


def fused_reference(data, encoder, index, fusion) -> dict:
    """Each group's relevant ranks from ``hbt.fusion`` applied to brute-force dense scores and the index's BM25
    (each side's top FUSION_DEPTH), the candidates neither side brought after them in dense order."""
    from hbt.fusion import convex_fusion, reciprocal_rank_fusion
    from hbt.index import text_pieces
    from hbt.search import FUSION_DEPTH

    langs = list(data)
    first = dict(zip(langs, np.cumsum([0] + [len(data[lang].candidates) for lang in langs])))
    vectors = np.vstack([encoder.encode(data[lang].candidates) for lang in langs])
    row_of = {f"{lang}/{i}": first[lang] + i for lang in langs for i in range(len(data[lang].candidates))}
    expected = {}
    groups = {f"mono/{lang}": (lang, [lang]) for lang in langs} | {f"multi/{lang}": (lang, langs) for lang in langs}
    groups |= {f"cross/{x}-{y}": (x, [y]) for x in langs for y in langs if x != y}
    for group, (query_lang, pool_langs) in groups.items():
        rows = np.concatenate([first[lang] + np.arange(len(data[lang].candidates)) for lang in pool_langs])
        ids = sorted(data[query_lang].questions)
        texts = [data[query_lang].questions[q] for q in ids]
        lexical = index.search_lexical(text_pieces(encoder.tokenizer, texts), FUSION_DEPTH, pool_langs)
        documents = index.documents({int(key) for key in lexical.keys.ravel() if key >= 0})
        out = {}
        for q, (qid, scores) in enumerate(zip(ids, encoder.encode(texts) @ vectors[rows].T)):
            order = rows[np.argsort(-scores, kind="stable")]
            dense = [(int(row), float(score)) for row, score in zip(order, np.sort(scores)[::-1])][:FUSION_DEPTH]
            found = [(row_of[documents[key].id], score) for key, score in zip(lexical.keys[q], lexical.scores[q])
                     if key >= 0]
            fused = ([row for row, _ in convex_fusion(dense, found, 0.3)] if fusion == "convex" else
                     [row for row, _ in reciprocal_rank_fusion([[r for r, _ in dense], [r for r, _ in found]])])
            ranking = fused + [int(row) for row in order if row not in set(fused)]
            wanted = [first[lang] + data[lang].answers[qid] for lang in pool_langs if qid in data[lang].answers]
            if wanted:
                out[qid] = np.sort([ranking.index(row) + 1 for row in wanted]).astype(float)
        expected[group] = out
    return expected


@pytest.mark.parametrize("fusion", ["convex", "rrf"])
def test_hybrid_ranks_as_hbt_fusion_fuses_the_two_sides(tmp_path, fusion):
    """Hybrid, with either ranker, is ``hbt.fusion`` over brute-force dense and the index's BM25 within each
    pool (the index scanning to depth 1000: its graphs may miss some of 150); auto is hybrid where the pool is the
    question's own language alone (mono) and dense where it is another language (cross) or all of them (multi)."""
    from hbt.corpus import Document
    from hbt.index import Costs, Index, build_index
    from hbt.search import SearchMode
    from tests.pieces import PieceEncoder

    data = pooled_dataset(tmp_path / "data", np.random.default_rng(5))
    encoder = PieceEncoder(dimension=8)
    docs = [Document(f"{lang}/{i}", text, lang=lang) for lang in data for i, text in enumerate(data[lang].candidates)]
    build_index(docs, encoder, tmp_path / "index")
    index = Index(tmp_path / "index")
    try:
        expected = fused_reference(data, encoder, index, fusion)
    finally:
        index.close()

    def run(kind, mode):
        found = {}
        index = {"costs": Costs(exact=1e-9, beam=1e9, source="scans forced"), "depth": 1000}  # every candidate, exactly
        evaluate(data, encoder.encode, encoder.encode, ranker=Ranker(kind, mode=SearchMode(mode, fusion=fusion),
                                                                     **(index if kind == "index" else {})),
                 per_question=found, tokenizer=encoder.tokenizer)
        return {group: {qid: found.tolist() for qid, found in zip(ids, ranks)} for group, (ids, ranks) in found.items()}

    for kind in RANKERS:
        hybrid = run(kind, "hybrid")
        assert hybrid.keys() == expected.keys()
        for group, ranks in expected.items():
            assert len(ranks) > 0 and hybrid[group] == {qid: found.tolist() for qid, found in ranks.items()}, (kind, group)
        assert any(rank > 100 for ranks in expected.values() for found in ranks.values() for rank in found)
        dense, auto = run(kind, "dense"), run(kind, "auto")
        assert all(any(hybrid[g] != dense[g] for g in hybrid if g.startswith(s)) for s in ("mono/", "cross/"))
        assert auto == {group: (hybrid if group.startswith("mono/") else dense)[group] for group in auto}


def test_lexical_ranks_the_candidate_sharing_a_rare_piece_first(tmp_path):
    """Each question holds a word only its answer holds among common sentences: lexical ranks it first with either
    ranker, in its own language's pool; the random dense vectors do not."""
    from hbt.index import text_pieces
    from hbt.search import SearchMode
    from tests.pieces import PieceEncoder

    encoder = PieceEncoder(dimension=8)
    rare = ["Katze schläft", "窓辺で眠っている", "แมวนอนอยู่", "Кошка спит"]
    common = [f"text {i} of d, title {i % 5}" for i in range(40)]
    sentences = common[:20] + [f"text {j} of d, {word}" for j, word in enumerate(rare)] + common[20:]
    for lang in ("aa", "bb"):
        write_lareqa(tmp_path / "xquad-r", lang, [(sentences, [(f"q{j}", f"{word}?", 20 + j)
                                                               for j, word in enumerate(rare)])])
    pieces = text_pieces(encoder.tokenizer, sentences)
    for j in range(len(rare)):  # the premise: a piece of the answer that no other candidate holds
        assert set(pieces[20 + j].tolist()) - {p for i, row in enumerate(pieces) if i != 20 + j for p in row.tolist()}
    data = load_dataset(tmp_path, "xquad-r")
    for kind in RANKERS:
        for mode, first in (("lexical", True), ("dense", False)):
            results = evaluate(data, encoder.encode, encoder.encode, ("mono",), ranker=Ranker(kind, mode=SearchMode(mode)),
                               tokenizer=encoder.tokenizer)
            assert (results["mono"]["mean"]["recall@1"] == 1.0) == first, (kind, mode)


def test_modes_that_rank_lexically_need_the_tokenizer_and_a_lareqa_dataset(toy_dataset):
    from hbt.corpus import Document
    from hbt.retrieval import evaluate_qrels
    from hbt.search import SearchMode

    data = load_dataset(toy_dataset, "xquad-r")
    for mode in ("lexical", "hybrid", "auto"):
        with pytest.raises(DataError, match=f"mode {mode} ranks by the bundle tokenizer's pieces"):
            evaluate(data, fake_encoder, fake_encoder, ranker=Ranker(mode=SearchMode(mode)))
        with pytest.raises(DataError, match="only LAReQA"):
            evaluate_qrels({"q": "alpha"}, {"q": {"d"}}, [Document("d", "alpha")], fake_encoder, fake_encoder,
                           Ranker(mode=SearchMode(mode)))


def test_bench_accuracy_modes(tiny_bundle, toy_dataset, tmp_path):
    """--mode dense is today's run (the default); the other modes say what they ranked by, in the report and its
    title; the options mean what hbt-search's mean, with its defaults; bad combinations are one line."""
    from hbt.search import FUSIONS, LEXICAL_WEIGHT, MODES

    def run(name, *options):
        out = tmp_path / name
        result = CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "xquad-r",
                                                "--data-dir", str(toy_dataset), "--out", str(out), *options])
        assert result.exit_code == 0, result.output
        return json.loads((out / "results.json").read_text()), (out / "report.md").read_text()

    (default, default_md), (dense, dense_md) = run("default"), run("dense", "--mode", "dense")
    assert dense["settings"] == default["settings"] and dense_md == default_md and dense["mode"] == "dense"
    assert dense["search"] == "exact"
    hybrid, hybrid_md = run("hybrid", "--mode", "hybrid", "--cache", str(tmp_path / "cache"))
    assert hybrid["mode"] == "hybrid" and hybrid["search"] == "exact, mode hybrid (convex, lexical weight 0.3)"
    assert hybrid_md.splitlines()[0].endswith(hybrid["search"]) and "language_bias" in hybrid["settings"]["multi"]["mean"]
    cached = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 4  # questions and candidates of two languages
    again, _ = run("again", "--mode", "hybrid", "--cache", str(tmp_path / "cache"))
    assert again["settings"] == hybrid["settings"] and sorted((tmp_path / "cache").glob("*.npy")) == cached
    lexical, _ = run("lexical", "--mode", "lexical", "--ranker", "index", "--fusion", "rrf")
    assert lexical["search"] == "index top 1000, ef 128, mode lexical"
    options = {o.name: o for o in bench_cli.commands["accuracy"].params}
    assert options["lexical_weight"].default == LEXICAL_WEIGHT and options["fusion"].default == "convex"
    assert set(options["mode"].type.choices) == set(MODES) and set(options["fusion"].type.choices) == set(FUSIONS)
    for bad, message in ((["--dataset", "tatoeba", "--mode", "lexical"], "--mode lexical: only xquad-r, mlqa-r"),
                         (["--dataset", "xquad-r", "--mode", "hybrid", "--lexical-weight", "1.5"], "1.5"),
                         (["--dataset", "xquad-r", "--mode", "hybrid", "--fusion", "max"], "max")):
        assert_one_line_error(CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--data-dir",
                                                             str(toy_dataset), *bad]), message)
