"""Corpus evaluation (qrels, MKQA answer recall), exact vs HNSW ranking, and hbt-bench download."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from hbt.cli.bench import main as bench_cli
from hbt.corpus import Document
from hbt.download import SOURCES
from hbt.errors import DataError
from hbt.retrieval import (ann_index, evaluate_mkqa, evaluate_qrels, normalize_answer, read_mkqa, read_qrels,
                           read_queries, retrieve)
from tests.conftest import DATA_DIR
from tests.test_export import assert_one_line_error


def test_exact_and_hnsw_rankings_agree_on_easy_data():
    rng = np.random.default_rng(0)
    passages = rng.normal(size=(500, 16)).astype(np.float32)
    passages /= np.linalg.norm(passages, axis=1, keepdims=True)
    queries = passages[:50] + 0.01 * rng.normal(size=(50, 16)).astype(np.float32)
    exact = retrieve(queries, passages, depth=10)
    assert (exact[:, 0] == np.arange(50)).all()
    assert np.all(np.diff(np.take_along_axis(queries @ passages.T, exact, axis=1), axis=1) <= 0)  # best first
    assert (retrieve(queries, ann_index(passages), depth=10)[:, 0] == np.arange(50)).all()


def topic_encoder(topics: list[str]):
    """One dimension per topic word: a perfect retriever for texts that name their topic."""
    def encode(texts):
        vectors = np.array([[float(t in text) for t in topics] + [0.01] for text in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return encode


def test_qrels_evaluation_reads_miracl_and_beir_files(tmp_path):
    topics = ["alpha", "beta", "gamma"]
    docs = [Document(f"d{i}", f"{t} passage {i}") for i, t in enumerate(topics * 3)]
    (tmp_path / "topics.tsv").write_text("q1\tabout alpha\nq2\tabout beta\nq3\tabout nothing\n")
    (tmp_path / "qrels.txt").write_text("q1 Q0 d0 1\nq1 Q0 d3 1\nq2 Q0 d1 1\nq2 Q0 d2 0\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "about alpha"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    assert read_qrels(tmp_path / "qrels.txt") == {"q1": {"d0", "d3"}, "q2": {"d1"}}
    assert read_qrels(tmp_path / "qrels.tsv") == {"q1": {"d0"}} and read_queries(tmp_path / "queries.jsonl") == {"q1": "about alpha"}
    encode = topic_encoder(topics)
    for ann in (False, True):
        results = evaluate_qrels(read_queries(tmp_path / "topics.tsv"), read_qrels(tmp_path / "qrels.txt"), docs,
                                 encode, encode, ann=ann)["qrels"]
        assert results["mean"]["map"] == pytest.approx(1.0) and results["mean"]["queries"] == 2
        assert results["unjudged_queries"] == 1
    with pytest.raises(DataError, match="share no query id"):
        evaluate_qrels({"x": "alpha"}, {"q1": {"d0"}}, docs, encode, encode)
    with pytest.raises(DataError, match="no documents"):
        evaluate_qrels({"q1": "alpha"}, {"q1": {"d0"}}, [], encode, encode)
    with pytest.raises(DataError, match="no judged document"):
        evaluate_qrels({"q1": "alpha"}, {"q1": {"other"}}, docs, encode, encode)


def test_normalize_answer():
    assert normalize_answer("The  Ridley-Scott!") == "ridley scott"
    assert normalize_answer("Ｒｉｄｌｅｙ　Scott。") == "ridley scott"
    assert normalize_answer("2017-05-18") == "2017 05 18"


def test_mkqa_recall_on_the_shared_fixture():
    path = DATA_DIR / "mkqa" / "test_mkqa.fixture-6-examples.jsonl.gz"
    if not path.is_file():
        pytest.skip("shared data not present")
    mkqa = read_mkqa(path)
    rows = [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
    answerable = [r for r in rows if any(a.get("text") for a in r["answers"]["en"])]
    assert len(mkqa) == 26 and all(len(queries) == len(answerable) for queries in mkqa.values())
    # One English passage per example that answers it; the retriever finds each example's passage first.
    ids = [r["example_id"] for r in rows]
    docs = [Document(str(i), f"topic{i}: " + (f"The answer is {r['answers']['en'][0]['text']}." if k % 2 == 0
                                              else "no answer here."))
            for k, (i, r) in enumerate(zip(ids, rows))]
    of_query = {q: str(r["example_id"]) for r in rows for q in r["queries"].values()}

    def encode(texts):
        keys = [of_query.get(t) or t.split(":")[0].removeprefix("topic") for t in texts]
        vectors = np.array([[float(k == str(i)) for i in ids] + [0.01] for k in keys], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    results = evaluate_mkqa(mkqa, docs, encode, encode, ks=(1, 20))["mkqa"]
    answered_first = sum(k % 2 == 0 for k, r in enumerate(rows) if r in answerable) / len(answerable)
    assert results["per_language"]["de"]["recall@1"] == pytest.approx(answered_first)
    assert 0 < answered_first < 1 and results["mean"]["recall@20"] == pytest.approx(answered_first)  # no other passage answers


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server laid out like github.com for the xquad-r files."""
    root = tmp_path / "mirror"
    for source, _ in SOURCES["xquad-r"]:
        (root / source).parent.mkdir(parents=True, exist_ok=True)
        (root / source).write_text(json.dumps({"data": [], "source": source}))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *args: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def test_download_from_a_local_mirror(mirror, tmp_path):
    url, root = mirror
    data = tmp_path / "data"
    result = CliRunner().invoke(bench_cli, ["download", "xquad-r", "--data-dir", str(data), "--base-url", url])
    assert result.exit_code == 0, result.output
    files = sorted((data / "xquad-r").iterdir())
    assert [f.name for f in files] == sorted(name for _, name in SOURCES["xquad-r"])
    first = json.loads(gzip.open(data / "xquad-r" / "ar.json.gz", "rt").read())
    assert first["source"].endswith("xquad-r/ar.json")
    assert "0 new file(s)" in CliRunner().invoke(bench_cli, ["download", "xquad-r", "--data-dir", str(data),
                                                             "--base-url", url]).output
    (root / SOURCES["xquad-r"][0][0]).unlink()  # a broken mirror: one line, nothing partial left
    (data / "xquad-r" / "ar.json.gz").unlink()
    assert_one_line_error(CliRunner().invoke(bench_cli, ["download", "xquad-r", "--data-dir", str(data),
                                                         "--base-url", url]), "download failed")
    assert not any(f.name.startswith(".") for f in (data / "xquad-r").iterdir())
    assert_one_line_error(CliRunner().invoke(bench_cli, ["download", "nope", "--data-dir", str(data)]), "unknown dataset")


def test_accuracy_on_corpus_datasets_and_missing_files(tiny_bundle, tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "t", "text": "Berlin is the capital of Germany."}\n'
                                         '{"_id": "d2", "text": "Bees communicate by dancing."}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "capital of Germany"}\n')
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "beir",
                                            "--data-dir", str(tmp_path), "--out", str(out), "--ann"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert report["search"] == "hnsw top 100" and report["settings"]["qrels"]["mean"]["recall@100"] == 1.0
    assert "| qrels |" in (out / "report.md").read_text()
    assert_one_line_error(CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "miracl",
                                                         "--data-dir", str(tmp_path)]), "missing --corpus", "--qrels")
    assert_one_line_error(CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "mkqa",
                                                         "--data-dir", str(tmp_path)]), "missing", "hbt-bench download mkqa")
