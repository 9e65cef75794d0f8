"""Corpus evaluation (qrels, MKQA answer recall), the exact and index rankers, and hbt-bench download."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import re
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.cli.bench import main as bench_cli
from hbt.corpus import Document, read_queries
from hbt.download import SOURCES, RemoteFile
from hbt.errors import DataError
from hbt.index import Index, build_index
from hbt.metrics import relevant_ranks
from hbt.retrieval import (DEPTH, GRAPHS, RANKERS, Ranker, evaluate_mkqa, evaluate_qrels, has_answer, normalize_answer,
                           ranks_in, read_mkqa, read_qrels)
from tests.conftest import DATA_DIR
from tests.fakes import HashEncoder
from tests.test_export import assert_one_line_error


@pytest.mark.parametrize("kind, costs", [("exact", None), ("index", None), ("index", GRAPHS)])
def test_both_rankers_agree_with_brute_force_on_the_whole_top_k(kind, costs):
    """Unfiltered and filtered to one language or two: the top 100 and the relevant ranks, through the plans this
    machine's costs choose (at this size, scans) and through the graphs."""
    rng = np.random.default_rng(0)
    passages = rng.normal(size=(500, 16)).astype(np.float32)
    passages /= np.linalg.norm(passages, axis=1, keepdims=True)
    docs = [Document(f"d{i}", f"text {i}", lang="abc"[i % 3]) for i in range(500)]
    queries = passages[:50] + 0.3 * rng.normal(size=(50, 16)).astype(np.float32)
    relevant = [list(rng.choice(500, size=3, replace=False)) for _ in range(50)]
    ranker = Ranker(kind, costs=costs)
    with ranker.pool(docs, passages) as pool:
        for langs in (None, ["b"], ["a", "c"]):
            rows = np.array([i for i, d in enumerate(docs) if langs is None or d.lang in langs])
            scores = queries @ passages[rows].T
            brute_force = rows[np.argsort(-scores, axis=1, kind="stable")[:, :DEPTH]]
            # On 500 points with ef 128, HNSW is exact: any miss or misorder in the top 100 is a bug.
            assert np.array_equal(pool.top(queries, DEPTH, langs), brute_force)
            admitted = [[r for r in wanted if r in rows] for wanted in relevant]
            expected = ([relevant_ranks(row, np.searchsorted(rows, wanted)) for row, wanted in zip(scores, admitted)]
                        if kind == "exact" else [ranks_in(found, wanted) for found, wanted in zip(brute_force, admitted)])
            found = pool.ranks(queries, admitted, langs)
            assert all(np.array_equal(a, b) for a, b in zip(found, expected)) and len(found) == 50
            if langs is None:
                unfiltered = found
    assert any(np.isinf(r).any() for r in expected) == (kind == "index")  # only the index's top 100 cuts ranks off
    if costs is GRAPHS:
        assert set(ranker.plans) == {"hnsw", "filtered-hnsw"}
    assert sum(ranker.plans.values()) == (0 if kind == "exact" else 6)  # a search per top and ranks, per filter
    with Ranker(kind, depth=10).pool(docs, passages) as pool:
        ranks = pool.ranks(queries, relevant)
    if kind == "index":  # ranked to its depth only
        assert all(np.array_equal(r, np.where(full <= 10, full, np.inf)) for r, full in zip(ranks, unfiltered))
    else:  # the reference ranks every candidate, whatever the depth
        assert all(np.array_equal(r, full) for r, full in zip(ranks, unfiltered))


def test_rankers_refuse_what_they_cannot_do():
    with pytest.raises(DataError, match="unknown ranker 'hnsw'; choose one of exact, index"):
        Ranker("hnsw")
    for ranker in (dict(kind="exact", ef=64), dict(kind="index", ef=0)):
        with pytest.raises(DataError, match="applies to the index ranker only, and must be at least 1"):
            Ranker(**ranker)
    with pytest.raises(DataError, match="depth = 0: must be at least 1"):
        Ranker("index", depth=0)
    with pytest.raises(DataError, match="planner costs apply to the index ranker only"):
        Ranker("exact", costs=GRAPHS)
    assert Ranker("index", 64, 500).describe() == "index top 500, ef 64" and Ranker().describe() == "exact"
    docs = [Document("d0", "one"), Document("d0", "two")]
    with pytest.raises(DataError, match="duplicate document id 'd0'"):  # as a deployed index refuses them
        evaluate_qrels({"q": "one"}, {"q": {"d0"}}, docs, HashEncoder().encode, HashEncoder().encode, Ranker("index"))


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
    assert read_qrels(tmp_path / "qrels.tsv") == {"q1": {"d0"}}
    encode = topic_encoder(topics)
    for kind in RANKERS:
        results = evaluate_qrels(dict(zip(*read_queries(tmp_path / "topics.tsv"))), read_qrels(tmp_path / "qrels.txt"),
                                 docs, encode, encode, Ranker(kind))["qrels"]
        assert results["mean"]["map"] == pytest.approx(1.0) and results["mean"]["queries"] == 2
        assert results["unjudged_queries"] == 1
    with pytest.raises(DataError, match="share no query id"):
        evaluate_qrels({"x": "alpha"}, {"q1": {"d0"}}, docs, encode, encode)
    with pytest.raises(DataError, match="no documents"):
        evaluate_qrels({"q1": "alpha"}, {"q1": {"d0"}}, [], encode, encode)
    with pytest.raises(DataError, match="no judged document"):
        evaluate_qrels({"q1": "alpha"}, {"q1": {"other"}}, docs, encode, encode)


def recording(encode, asked: list[str]):
    def record(texts):
        asked.extend(texts)
        return encode(texts)
    return record


@pytest.mark.parametrize("kind", RANKERS)
def test_evaluation_embeds_what_the_index_embeds(tmp_path, kind):
    """Titled passages are embedded as title plus text, the vectors an index built from them holds; untitled ones
    exactly as their text, as before titles counted. A topic named only in a title is found through it."""
    topics = ["alpha", "beta", "gamma"]
    docs = [Document("t0", "a passage", title="about alpha"), Document("t1", "a passage", title="about beta"),
            Document("u2", "gamma passage"), Document("u3", "plain passage")]
    asked: list[str] = []
    encode = topic_encoder(topics)
    results = evaluate_qrels({"q1": "alpha", "q2": "beta", "q3": "gamma"}, {"q1": {"t0"}, "q2": {"t1"}, "q3": {"u2"}},
                             docs, encode, recording(encode, asked), Ranker(kind))["qrels"]
    assert results["mean"]["map"] == 1.0
    assert asked[2:] == ["gamma passage", "plain passage"]  # untitled: the very texts, so the very vectors, of before
    encoder = HashEncoder()
    build_index(docs, encoder, tmp_path / "index")
    index = Index(tmp_path / "index")
    ranking = index.search(encoder.encode(asked), 1)
    found = index.documents(ranking.keys[:, 0])
    assert [found[key].id for key in ranking.keys[:, 0]] == [d.id for d in docs]
    assert np.allclose(ranking.scores[:, 0], 1.0)  # each evaluation vector is the one the index holds for its passage
    index.close()
    (tmp_path / "mkqa.jsonl").write_text(json.dumps({"example_id": 1, "queries": {"en": "beta"},
                                                     "answers": {"en": [{"text": "beta"}]}}))
    asked.clear()
    mkqa = evaluate_mkqa(read_mkqa(tmp_path / "mkqa.jsonl"), docs, encode, recording(encode, asked), ks=(1,),
                         ranker=Ranker(kind))["mkqa"]
    assert asked[:2] == ["about alpha a passage", "about beta a passage"] and mkqa["mean"]["recall@1"] == 1.0


@pytest.mark.parametrize("line, message", [
    ("q1 d1", "2 columns"),
    ("q1 Q0 d1 1 extra", "5 columns"),
    ("q1 Q0 d1 yes", "could not convert"),
])
def test_bad_qrels_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "qrels.txt").write_text(f"q0 Q0 d0 1\n{line}\n")
    with pytest.raises(DataError, match=f"qrels.txt:2: not a qrels line .*{message}"):
        read_qrels(tmp_path / "qrels.txt")


def test_normalize_answer():
    assert normalize_answer("The  Ridley-Scott!") == "ridley scott"
    assert normalize_answer("Ｒｉｄｌｅｙ　Scott。") == "ridley scott"
    assert normalize_answer("2017-05-18") == "2017 05 18"
    assert normalize_answer("It cost $1,945.50, roughly.") == "it cost 1945.50 roughly"
    assert normalize_answer("東京タワー") == "東 京 タ ワ ー"


@pytest.mark.parametrize("passage, answer, expected", [
    ("The war ended in 1945.", "1", False),  # a number is a whole token
    ("The war ended in 1945.", "1945", True),
    ("It had 1,945 members.", "1945", True),  # thousands separators aside
    ("Pi is about 3.14.", "14", False),
    ("Pi is about 3.14.", "3.14", True),
    ("She studied the arts.", "art", False),  # a short answer is not a word prefix
    ("Arthur was king.", "art", False),
    ("It was in the U.S. Army.", "U.S.", True),
    ("Ridley Scott directed it.", "Ridley-Scott", True),
    ("Scott directed it.", "Ridley Scott", False),  # every token, in order
    ("Scott Ridley directed it.", "Ridley Scott", False),
    ("首都是东京。", "东京", True),  # unspaced scripts: a character is a token
])
def test_has_answer_matches_token_sequences(passage, answer, expected):
    assert has_answer(normalize_answer(passage), [normalize_answer(answer)]) is expected


WORD = st.text("bcxyz019", min_size=1, max_size=4)  # never "a", "an" or "the", which the normalization drops
WORDS = st.lists(WORD, min_size=1, max_size=12)


@settings(deadline=None)  # the first call builds the punctuation table
@given(WORDS, st.data())
def test_an_answer_is_found_if_and_only_if_its_words_are_a_run_of_the_passage_words(words, data):
    passage = normalize_answer(" ".join(words))
    start = data.draw(st.integers(0, len(words) - 1))
    run = words[start : data.draw(st.integers(start + 1, len(words)))]
    assert has_answer(passage, [normalize_answer(" ".join(run))])
    answer = data.draw(st.lists(WORD, min_size=1, max_size=3))
    is_run = any(words[i : i + len(answer)] == answer for i in range(len(words)))
    assert has_answer(passage, [normalize_answer(" ".join(answer))]) == is_run
    assert not has_answer(passage, [""])


def test_mkqa_recall_matches_tokens_and_aliases(tmp_path):
    rows = [{"example_id": 1, "queries": {"en": "when did the war end", "de": "wann endete der Krieg"},
             "answers": {"en": [{"type": "date", "text": "1", "aliases": []}]}},
            {"example_id": 2, "queries": {"en": "who directed Alien", "de": "wer drehte Alien"},
             "answers": {"en": [{"type": "entity", "text": "Sir Ridley", "aliases": ["Ridley Scott"]}]}}]
    path = tmp_path / "mkqa.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    docs = [Document("a", "The war ended in 1945."), Document("b", "Alien (1979) was directed by Ridley Scott.")]
    encode = topic_encoder(["war", "Alien"])
    recall = evaluate_mkqa(read_mkqa(path), docs, encode, encode, ks=(1, 2))["mkqa"]["per_language"]["en"]
    assert recall == {"queries": 2, "recall@1": 0.5, "recall@2": 0.5}  # "1" is not in "1945"; the alias answers


def test_malformed_mkqa_rows_name_file_and_line(tmp_path):
    good = json.dumps({"example_id": 1, "queries": {"en": "q"}, "answers": {"en": [{"text": "a"}]}})
    for bad in ('{"example_id": 2}', json.dumps({"example_id": 2, "queries": {"en": 5}, "answers": {"en": []}}),
                '{"example_id": 2, "queries": '):
        (tmp_path / "m.jsonl").write_text(f"{good}\n{bad}\n")
        with pytest.raises(DataError, match="m.jsonl:2: not an MKQA row"):
            read_mkqa(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_bytes(good.encode() + b'\n{"example_id": "\xe9"}\n')
    with pytest.raises(DataError, match="m.jsonl:2: invalid UTF-8"):
        read_mkqa(tmp_path / "m.jsonl")


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
def mirror(tmp_path, monkeypatch):
    """A local HTTP server laid out like github.com, serving stand-ins for the xquad-r files, pinned to their sha256."""
    root = tmp_path / "mirror"
    stand_ins = []
    for file in SOURCES["xquad-r"]:
        content = json.dumps({"data": [], "source": file.source}).encode()
        (root / file.source).parent.mkdir(parents=True, exist_ok=True)
        (root / file.source).write_bytes(content)
        stand_ins.append(RemoteFile(file.source, file.name, hashlib.sha256(content).hexdigest()))
    monkeypatch.setitem(SOURCES, "xquad-r", stand_ins)
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
    assert [f.name for f in files] == sorted(file.name for file in SOURCES["xquad-r"])
    first = json.loads(gzip.open(data / "xquad-r" / "ar.json.gz", "rt").read())
    assert first["source"].endswith("xquad-r/ar.json")
    assert "0 new file(s)" in CliRunner().invoke(bench_cli, ["download", "xquad-r", "--data-dir", str(data),
                                                             "--base-url", url]).output
    (root / SOURCES["xquad-r"][0].source).unlink()  # a broken mirror: one line, nothing partial left
    (data / "xquad-r" / "ar.json.gz").unlink()
    assert_one_line_error(CliRunner().invoke(bench_cli, ["download", "xquad-r", "--data-dir", str(data),
                                                         "--base-url", url]), "download failed")
    assert not any(f.name.startswith(".") for f in (data / "xquad-r").iterdir())
    assert_one_line_error(CliRunner().invoke(bench_cli, ["download", "nope", "--data-dir", str(data)]), "unknown dataset")


def test_a_download_that_is_not_the_pinned_file_writes_nothing(mirror, tmp_path):
    url, root = mirror
    (root / SOURCES["xquad-r"][3].source).write_text('{"data": [], "tampered": true}')
    data = tmp_path / "data"
    assert_one_line_error(CliRunner().invoke(bench_cli, ["download", "xquad-r", "--data-dir", str(data), "--base-url",
                                                         url]), SOURCES["xquad-r"][3].source, "not the pinned")
    assert sorted(f.name for f in (data / "xquad-r").iterdir()) == [file.name for file in SOURCES["xquad-r"][:3]]
    # A file already there is checked too: a damaged or foreign one is named, and kept for the user to look at.
    (data / "xquad-r" / "ar.json.gz").write_bytes(gzip.compress(b'{"data": []}'))
    assert_one_line_error(CliRunner().invoke(bench_cli, ["download", "xquad-r", "--data-dir", str(data), "--base-url",
                                                         url]), "ar.json.gz: present, but not the pinned file")


def test_download_goes_to_the_user_data_directory_by_default(mirror, tmp_path, monkeypatch):
    url, _ = mirror
    monkeypatch.chdir(tmp_path / "mirror")
    env = {"HBT_DATA": None, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    result = CliRunner().invoke(bench_cli, ["download", "xquad-r", "--base-url", url], env=env)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "xdg" / "hbt" / "xquad-r").iterdir())) == len(SOURCES["xquad-r"])
    assert not (tmp_path / "shared").exists()
    result = CliRunner().invoke(bench_cli, ["download", "xquad-r", "--base-url", url],
                                env={"HBT_DATA": str(tmp_path / "mine")})
    assert result.exit_code == 0 and (tmp_path / "mine" / "xquad-r" / "ar.json.gz").is_file()
    assert "$HBT_DATA, else ~/.local/share/hbt" in CliRunner().invoke(bench_cli, ["download", "--help"]).output


def test_downloads_are_pinned_to_commits_and_checksums():
    for name, files in SOURCES.items():
        for file in files:
            assert re.fullmatch(r"[^/]+/[^/]+/raw/[0-9a-f]{10,40}/.+", file.source), file.source  # a commit
            assert re.fullmatch(r"[0-9a-f]{64}", file.sha256), file.source
    if not (DATA_DIR / "xquad-r").is_dir():
        pytest.skip("shared data not present: the checksums are checked against it")
    for name in ("xquad-r", "mlqa-r", "xquad"):  # the shared copies keep the sources' bytes, gzipped
        for file in SOURCES[name]:
            assert hashlib.sha256(gzip.open(DATA_DIR / name / file.name).read()).hexdigest() == file.sha256, file.name


def test_accuracy_on_corpus_datasets_and_missing_files(tiny_bundle, tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    (folder / "corpus.jsonl.gz").write_bytes(gzip.compress(  # MIRACL and many BEIR corpora come gzipped
        b'{"_id": "d1", "title": "t", "text": "Berlin is the capital of Germany."}\n'
        b'{"_id": "d2", "text": "Bees communicate by dancing."}\n'))
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "capital of Germany"}\n')
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "beir",
                                            "--data-dir", str(tmp_path), "--out", str(out), "--ranker", "index"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert report["search"] == "index top 100, ef 128" and report["settings"]["qrels"]["mean"]["recall@100"] == 1.0
    assert "| qrels |" in (out / "report.md").read_text()
    assert_one_line_error(CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "miracl",
                                                         "--data-dir", str(tmp_path)]), "missing --corpus", "--qrels")
    assert_one_line_error(CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "mkqa",
                                                         "--data-dir", str(tmp_path)]), "missing", "hbt-bench download mkqa")
