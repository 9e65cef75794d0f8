"""hbt-index and hbt-search through their commands, with the tiny exported bundle."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hbt.cli.index import main as index_cli
from hbt.cli.search import main as search_cli
from hbt.corpus import read_corpus
from hbt.encoder import Encoder
from hbt.errors import BundleError
from hbt.index import Index, build_index
from hbt.search import Searcher
from tests.conftest import MULTILINGUAL
from tests.test_export import assert_one_line_error

LANGS = ["en", "de", "es", "fr", "ru", "zh", "ja", "ar", "hi", "th", "el", "tr", "vi", "ko", "mix"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    rows = [{"id": f"d{i}", "text": text, "lang": lang} for i, (text, lang) in enumerate(zip(MULTILINGUAL, LANGS))]
    return write_jsonl(tmp_path / "corpus.jsonl", rows)


def invoke(cli, *args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_build_add_delete_compact_info_verify_search(tiny_bundle, corpus, tmp_path):
    index = tmp_path / "idx"
    assert "15 documents in 1 segment" in invoke(index_cli, "build", corpus, "--bundle", tiny_bundle, "--index",
                                                  index, "--M", "8")
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "x1", "text": "Ein neuer Text", "lang": "de"}])
    assert "16 documents in 2 segment" in invoke(index_cli, "add", extra, "--index", index)
    assert "deleted 1, 15 documents left" in invoke(index_cli, "delete", "--ids", "d1", "--index", index)
    info = json.loads(invoke(index_cli, "info", "--index", index, "--json"))
    assert info["languages"]["de"] == 1 and info["M"] == 8 and [s["deleted"] for s in info["segments"]] == [1, 0]
    assert "tombstones" in invoke(index_cli, "info", "--index", index)
    assert "2 -> 1 segment(s), 1 tombstones dropped" in invoke(index_cli, "compact", "--index", index)
    result = CliRunner().invoke(index_cli, ["verify", "--index", str(index)])
    assert result.exit_code == 0 and float(re.search(r"recall@10 ([\d.]+)", result.output).group(1)) == 1.0
    hit = json.loads(invoke(search_cli, "Ein neuer Text", "--index", index, "-k", "3", "--json"))
    assert hit["hits"][0]["id"] == "x1" and "exact" in hit["plan"] and set(hit["timings_ms"]) == {
        "encode", "search", "fetch"}
    queries = tmp_path / "q.tsv"
    queries.write_text("q1\tcat\nq2\tKatze\n", encoding="utf-8")
    run = invoke(search_cli, "query", "--queries", queries, "--index", index, "-k", "2")
    assert [line.split()[:4:3] for line in run.splitlines()] == [["q1", "1"], ["q1", "2"], ["q2", "1"], ["q2", "2"]]


def test_older_spellings_still_work(tiny_bundle, corpus, tmp_path):
    invoke(index_cli, "build", corpus, "--bundle", tiny_bundle, "--out", tmp_path / "idx")
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "x1", "text": "neu"}])
    assert "16 documents" in invoke(index_cli, "add", tmp_path / "idx", extra)
    assert "documents  16" in invoke(index_cli, "info", tmp_path / "idx")


def test_search_results_equal_exact_search_whole_top_k(tiny_bundle, corpus, tmp_path):
    encoder = Encoder(tiny_bundle)
    build_index(read_corpus(corpus), encoder, tmp_path / "idx")
    searcher = Searcher(encoder, Index(tmp_path / "idx"))
    scores = encoder.encode_passages(MULTILINGUAL) @ encoder.encode_queries([MULTILINGUAL[3]])[0]
    expected = [f"d{i}" for i in np.lexsort((np.arange(len(scores)), -scores))[:8]]
    hits = searcher.search([MULTILINGUAL[3]], k=8)[0]
    assert [h.id for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:8], atol=1e-5)


def test_errors_are_one_line(tiny_bundle, corpus, tmp_path):
    runner = CliRunner()
    invoke(index_cli, "build", corpus, "--bundle", tiny_bundle, "--index", tmp_path / "idx")
    assert_one_line_error(runner.invoke(search_cli, ["x", "--index", str(tmp_path / "idx"), "-k", "0"]), "k = 0")
    assert_one_line_error(runner.invoke(search_cli, ["x", "--index", str(tmp_path / "none")]), "no index here")
    assert_one_line_error(runner.invoke(index_cli, ["build", str(corpus), "--bundle", str(tiny_bundle),
                                                    "--index", str(tmp_path / "idx")]), "already exists")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(runner.invoke(index_cli, ["build", str(empty), "--bundle", str(tiny_bundle), "--index",
                                                    str(tmp_path / "e")]), "no documents")
    assert not (tmp_path / "e" / "manifest.json").exists()
    next((tmp_path / "idx").glob("seg-*/docs.sqlite")).write_bytes(b"garbage" * 10)
    assert_one_line_error(runner.invoke(index_cli, ["verify", "--index", str(tmp_path / "idx")]), "docs.sqlite")


def test_other_bundle_is_refused(tiny_model_dir, tiny_bundle, corpus, tmp_path):
    from hbt.export.exporter import ExportConfig, export_bundle

    build_index(read_corpus(corpus), Encoder(tiny_bundle), tmp_path / "idx")
    other = tmp_path / "other"
    export_bundle(ExportConfig(source=str(tiny_model_dir), out=other, quantize="int8", max_length=64))
    with pytest.raises(BundleError, match="built with another bundle"):
        Searcher(Encoder(other), Index(tmp_path / "idx"))


def test_shuffled_insertion_keeps_each_vector_with_its_document(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr("hbt.index.segment.INSERT_BATCH", 300)  # 700 documents: three shuffled batches
    encoder = Encoder(tiny_bundle)
    texts = [f"{i}: {MULTILINGUAL[i % len(MULTILINGUAL)]}" for i in range(700)]
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"x{i}", "text": t} for i, t in enumerate(texts)])
    build_index(read_corpus(corpus), encoder, tmp_path / "index")
    segment = Index(tmp_path / "index").segments[0].segment
    labels = np.arange(700)
    documents = segment.documents(labels)
    assert [documents[label].id for label in labels] == [f"x{i}" for i in range(700)]
    np.testing.assert_allclose(segment.vectors(labels), encoder.encode_passages(texts), atol=1e-5)


def test_search_path_does_not_import_torch(tiny_bundle, corpus, tmp_path):
    """A real query through the command, in a fresh interpreter."""
    build_index(read_corpus(corpus), Encoder(tiny_bundle), tmp_path / "idx")
    code = ("import sys, json; from click.testing import CliRunner; from hbt.cli.search import main; "
            f"result = CliRunner().invoke(main, ['cat', '--index', {str(tmp_path / 'idx')!r}, '--json']); "
            "assert result.exit_code == 0, result.output; assert json.loads(result.output)['hits']; "
            "heavy = {'torch', 'transformers', 'tokenizers'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_add_streams_a_process_substitution(tiny_bundle, corpus, tmp_path):
    """The reported failure: `hbt-index add <(cmd)` said "/dev/fd/63: no such file"."""
    import shutil

    index = tmp_path / "idx"
    invoke(index_cli, "build", corpus, "--bundle", tiny_bundle, "--index", index)
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"id": "x1", "text": "Ein neuer Text", "lang": "de"}])
    if shutil.which("bash"):
        command = f'"{Path(sys.executable).parent / "hbt-index"}" add <(cat "{extra}") --index "{index}"'
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "16 documents" in result.stdout, result.stderr
    read_end, write_end = os.pipe()  # what <(cmd) passes, within this process
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(b'{"id": "x2", "text": "noch ein Text"}\n')
    try:
        assert "17 documents" in invoke(index_cli, "add", f"/dev/fd/{read_end}", "--index", index)
    finally:
        os.close(read_end)


def test_a_waiting_writer_says_on_whom_it_waits(tmp_path):
    """The reported silence: a second writer waited on the lock up to 600 s without a word."""
    from hbt.corpus import Document
    from hbt.index import durable
    from tests.fakes import HashEncoder

    index = tmp_path / "idx"
    build_index([Document(f"d{i}", f"text {i}") for i in range(20)], HashEncoder(), index)
    with durable.write_lock(index, timeout=5):
        waiting = subprocess.Popen([Path(sys.executable).parent / "hbt-index", "delete", "--ids", "d3", "--index",
                                    str(index)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        spoke, _, _ = select.select([waiting.stderr], [], [], 30)  # a silent writer would wait 600 s
        message = waiting.stderr.readline() if spoke else ""
    assert waiting.wait(timeout=120) == 0, waiting.stderr.read()
    assert f"waiting for another process (pid {os.getpid()})" in message
    assert "deleted 1, 19 documents left" in waiting.stdout.read()
