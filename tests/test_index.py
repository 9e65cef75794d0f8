"""Index and search on the tiny bundle: formats, updates, filters, errors, crash safety, no torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbt.cli.index import main as index_cli
from hbt.cli.search import main as search_cli
from hbt.corpus import read_corpus
from hbt.encoder import Encoder
from hbt.errors import DataError
from hbt.index import Index, add_documents, build_index, delete_documents, verify_index
from hbt.search import Searcher
from tests.conftest import MULTILINGUAL
from tests.test_export import assert_one_line_error

LANGS = ["en", "de", "es", "fr", "ru", "zh", "ja", "ar", "hi", "th", "el", "tr", "vi", "ko", "mix"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    rows = [{"id": f"d{i}", "text": text, "lang": lang, "source": "test"} for i, (text, lang) in enumerate(zip(MULTILINGUAL, LANGS))]
    return write_jsonl(tmp_path / "corpus.jsonl", rows)


@pytest.fixture
def index_dir(tiny_bundle, corpus, tmp_path):
    build_index(read_corpus(corpus), Encoder(tiny_bundle), tmp_path / "index")
    return tmp_path / "index"


def test_corpus_formats(tmp_path):
    write_jsonl(tmp_path / "beir.jsonl", [{"_id": "b1", "title": "T", "text": "hello", "url": "x"}])
    (tmp_path / "c.tsv").write_text("t1\thello world\nt2\tzweite Zeile\n", encoding="utf-8")
    beir = list(read_corpus(tmp_path / "beir.jsonl"))
    assert beir[0].id == "b1" and beir[0].title == "T" and beir[0].meta == {"url": "x"}
    assert [d.id for d in read_corpus(tmp_path / "c.tsv")] == ["t1", "t2"]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"id": "x"}', "needs 'id'"),
    ('{"id": "x", "text": "   "}', "empty text"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"bad.jsonl:2: .*{message}"):
        list(read_corpus(path))
    assert [d.id for d in read_corpus(path, skip_invalid=True)] == ["ok"]


def test_invalid_utf8_is_reported(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match="latin1.jsonl:2: invalid UTF-8"):
        list(read_corpus(path))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=30)), max_size=6))
def test_reader_fuzz_never_crashes_unexpectedly(tmp_path, rows):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows), encoding="utf-8")
    try:
        docs = list(read_corpus(path))
    except DataError as e:
        assert "fuzz.jsonl:" in str(e)
    else:
        assert [d.text for d in docs] == [t for _, t in rows]


def test_search_finds_documents_and_scores_are_similarities(tiny_bundle, index_dir):
    searcher = Searcher(Encoder(tiny_bundle), Index(index_dir))
    hits = searcher.search([MULTILINGUAL[3]], k=5)[0]
    vectors = Encoder(tiny_bundle)
    exact = vectors.encode_queries([MULTILINGUAL[3]]) @ vectors.encode_passages(MULTILINGUAL).T
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0].score == pytest.approx(float(exact.max()), abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_lang_filter_inside_search(tiny_bundle, index_dir):
    searcher = Searcher(Encoder(tiny_bundle), Index(index_dir))
    hits = searcher.search(["cat"], k=5, langs=["de", "zh"])[0]
    assert {h.lang for h in hits} <= {"de", "zh"} and len(hits) == 2


@pytest.fixture(scope="module")
def fuzz_searcher(tiny_bundle, tmp_path_factory):
    rows = [{"id": f"d{i}", "text": text, "lang": lang} for i, (text, lang) in enumerate(zip(MULTILINGUAL, LANGS))]
    directory = tmp_path_factory.mktemp("fuzz")
    build_index(read_corpus(write_jsonl(directory / "c.jsonl", rows)), Encoder(tiny_bundle), directory / "index")
    return Searcher(Encoder(tiny_bundle), Index(directory / "index"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(queries=st.lists(st.text(max_size=300), min_size=1, max_size=4), k=st.integers(-2, 20),
       langs=st.none() | st.lists(st.sampled_from(LANGS + ["xx"]), max_size=3))
def test_query_path_fuzz(fuzz_searcher, queries, k, langs):
    """Any text, k and language filter: ranked hits from the filter's languages, or a DataError for bad k."""
    count = fuzz_searcher.index.count
    try:
        results = fuzz_searcher.search(queries, k=k, langs=langs)
    except DataError as e:
        assert not 1 <= k <= count and "k = " in str(e)
        return
    assert 1 <= k <= count and len(results) == len(queries)
    pool = sum(1 for lang in LANGS if not langs or lang in langs)
    for hits in results:
        assert len(hits) == min(k, pool) and [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert all(h.lang in langs for h in hits) if langs else True
        assert all(-1.0001 <= h.score <= 1.0001 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_unwritable_output_is_one_line_and_changes_nothing(tiny_bundle, index_dir, corpus, monkeypatch):
    """Root ignores permission bits, so the operating system's refusal is simulated where it surfaces."""
    import tempfile

    before = (index_dir / "manifest.json").read_bytes()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    runner = CliRunner()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK and real_access(path, mode))
    assert_one_line_error(runner.invoke(index_cli, ["build", str(corpus), "--bundle", str(tiny_bundle), "--out",
                                                    str(index_dir.parent / "new")]), "not writable")
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert_one_line_error(runner.invoke(index_cli, ["add", str(index_dir), str(corpus)]), "Permission denied",
                          "Nothing was changed")
    assert (index_dir / "manifest.json").read_bytes() == before and not (index_dir.parent / "new").exists()


def test_add_grows_and_delete_hides(tiny_bundle, index_dir, tmp_path):
    encoder = Encoder(tiny_bundle)
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": f"x{i}", "text": f"extra text number {i}"} for i in range(1200)])
    manifest = add_documents(index_dir, read_corpus(extra), encoder)
    assert manifest["count"] == len(MULTILINGUAL) + 1200 and manifest["capacity"] >= manifest["count"]
    delete_documents(index_dir, ["d3", "x5"])
    searcher = Searcher(encoder, Index(index_dir))
    ids = {h.id for h in searcher.search([MULTILINGUAL[3], "extra text number 5"], k=50)[0]}
    assert "d3" not in ids and "x5" not in ids
    report = verify_index(index_dir)
    assert report["documents"] == len(MULTILINGUAL) + 1198 and report["recall_at_k"] >= 0.9


def test_shuffled_insertion_keeps_each_vector_with_its_document(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr("hbt.index.INSERT_BATCH", 300)  # 700 documents: three shuffled batches
    encoder = Encoder(tiny_bundle)
    texts = [f"{i}: {MULTILINGUAL[i % len(MULTILINGUAL)]}" for i in range(700)]
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"x{i}", "text": t} for i, t in enumerate(texts)])
    build_index(read_corpus(corpus), encoder, tmp_path / "index")
    index = Index(tmp_path / "index")
    labels = list(range(700))
    docs = index.documents(labels)
    assert [docs[label].id for label in labels] == [f"x{i}" for i in range(700)]
    np.testing.assert_allclose(np.asarray(index.graph.get_items(labels)), encoder.encode_passages(texts), atol=1e-5)


def test_duplicate_ids_are_refused(tiny_bundle, index_dir, corpus):
    with pytest.raises(DataError, match="duplicate document id 'd0'"):
        add_documents(index_dir, read_corpus(corpus), Encoder(tiny_bundle))
    assert verify_index(index_dir)["documents"] == len(MULTILINGUAL)  # unchanged


def test_cli_build_search_info_verify(tiny_bundle, corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "idx"
    result = runner.invoke(index_cli, ["build", str(corpus), "--bundle", str(tiny_bundle), "--out", str(out), "--M", "8"])
    assert result.exit_code == 0, result.output
    assert f"{len(MULTILINGUAL)} documents" in result.output
    assert '"M": 8' in runner.invoke(index_cli, ["info", str(out), "--json"]).output
    assert "ok" in runner.invoke(index_cli, ["verify", str(out)]).output
    result = runner.invoke(search_cli, ["query", "cat", "--index", str(out), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output.splitlines()[0])["hits"]) == 3
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\tcat\nq2\tKatze\n", encoding="utf-8")
    run = runner.invoke(search_cli, ["query", "--queries", str(queries), "--index", str(out), "-k", "2"]).output
    lines = [line.split() for line in run.splitlines()]
    assert [(l[0], l[1], l[3], l[5]) for l in lines] == [("q1", "Q0", "1", "hbt"), ("q1", "Q0", "2", "hbt"),
                                                         ("q2", "Q0", "1", "hbt"), ("q2", "Q0", "2", "hbt")]


def test_cli_errors(tiny_bundle, index_dir, tmp_path):
    runner = CliRunner()
    assert_one_line_error(runner.invoke(search_cli, ["query", "x", "--index", str(index_dir), "-k", "0"]), "k = 0")
    assert_one_line_error(runner.invoke(search_cli, ["query", "x", "--index", str(index_dir), "-k", "999"]), "larger than the index")
    assert_one_line_error(runner.invoke(search_cli, ["query", "x", "--index", str(tmp_path / "none")]), "no index here")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(runner.invoke(index_cli, ["build", str(empty), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "e")]), "no documents")
    assert not (tmp_path / "e").exists()
    (index_dir / "docs.sqlite").write_bytes(b"garbage")
    assert_one_line_error(runner.invoke(index_cli, ["verify", str(index_dir)]), "checksum mismatch")


def test_other_bundle_is_refused(tiny_model_dir, index_dir, tmp_path):
    from hbt.errors import SearchIndexError
    from hbt.export.exporter import ExportConfig, export_bundle

    other = tmp_path / "other"
    export_bundle(ExportConfig(source=str(tiny_model_dir), out=other, quantize="int8", max_length=64))
    with pytest.raises(SearchIndexError, match="built with another bundle"):
        Searcher(Encoder(other), Index(index_dir))


KILL_SCRIPT = """
import sys
from hbt.corpus import read_corpus
from hbt.encoder import Encoder
from hbt.index import add_documents, build_index
encoder = Encoder(sys.argv[1])
if sys.argv[2] == "build":
    build_index(read_corpus(sys.argv[3]), encoder, sys.argv[4])
else:
    add_documents(sys.argv[4], read_corpus(sys.argv[3]), encoder)
"""


def test_killed_build_and_add_leave_previous_index_or_none(tiny_bundle, index_dir, tmp_path):
    big = write_jsonl(tmp_path / "big.jsonl", [{"id": f"k{i}", "text": f"document {i} " * 20} for i in range(3000)])
    for attempt, delay in enumerate([0.5, 1.0, 1.5, 2.5]):
        for mode, target in (("build", tmp_path / f"new{attempt}"), ("add", index_dir)):
            process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_bundle), mode, str(big), str(target)])
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
            if mode == "build":
                assert not target.exists() or verify_index(target)["documents"] == 3000
            else:
                assert verify_index(index_dir)["documents"] in (len(MULTILINGUAL), len(MULTILINGUAL) + 3000)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert all(".partial-" in name for name in leftovers)  # staging copies only, never the index


def test_search_cli_does_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from hbt.cli.search import main; "
            "assert CliRunner().invoke(main, ['query', '--help']).exit_code == 0; "
            "import hbt.encoder, hbt.index, hbt.search; "
            "heavy = {'torch', 'transformers', 'tokenizers'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    script = Path(sys.executable).parent / "hbt-search"  # the console script of this environment
    assert subprocess.run([str(script), "--help"], capture_output=True).returncode == 0
