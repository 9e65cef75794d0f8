"""Corpus and query readers: formats, gzip and stdin, file:line errors, and a fuzz that knows which rows are bad."""

from __future__ import annotations

import gzip
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbt.corpus import ReadStats, read_corpus, read_lines, read_queries
from hbt.errors import DataError

ROWS = [{"id": "d1", "text": "Erste Zeile", "lang": "de"}, {"id": 7, "text": "第二行", "title": "T", "url": "u"}]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def test_corpus_formats(tmp_path):
    (tmp_path / "beir.jsonl").write_text('{"_id": "b1", "title": "T", "text": "hello", "url": "x"}\n')
    (tmp_path / "miracl.jsonl").write_text('{"docid": "m#0", "title": "", "text": "hallo"}\n')
    (tmp_path / "c.tsv").write_text("t1\thello world\r\n\nt2\tzweite Zeile\n", encoding="utf-8")
    beir = list(read_corpus(tmp_path / "beir.jsonl"))
    assert beir[0].id == "b1" and beir[0].title == "T" and beir[0].meta == {"url": "x"}
    assert [d.id for d in read_corpus(tmp_path / "miracl.jsonl")] == ["m#0"]
    assert [(d.id, d.text) for d in read_corpus(tmp_path / "c.tsv")] == [("t1", "hello world"), ("t2", "zweite Zeile")]


def test_gzipped_files_and_stdin_read_like_plain_files(tmp_path, monkeypatch):
    plain = tmp_path / "c.jsonl"
    plain.write_bytes(jsonl(ROWS))
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(jsonl(ROWS)))
    (tmp_path / "c.tsv.gz").write_bytes(gzip.compress(b"d1\tErste Zeile\n7\t\xe7\xac\xac\xe4\xba\x8c\xe8\xa1\x8c\n"))
    expected = list(read_corpus(plain))
    assert [(d.id, d.text, d.title, d.lang) for d in expected] == [("d1", "Erste Zeile", "", "de"),
                                                                    ("7", "第二行", "T", "")]
    assert list(read_corpus(tmp_path / "c.jsonl.gz")) == expected
    assert [(d.id, d.text) for d in read_corpus(tmp_path / "c.tsv.gz")] == [(d.id, d.text) for d in expected]
    for data in (jsonl(ROWS), gzip.compress(jsonl(ROWS))):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
        assert list(read_corpus("-")) == expected


def test_a_damaged_gzip_file_is_one_error_at_its_line(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(ROWS * 50))[:-40])  # truncated
    with pytest.raises(DataError, match=r"c\.jsonl\.gz:\d+: cannot read"):
        list(read_corpus(path))


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"id": "x"}', "needs 'id'"),
    ('{"id": "", "text": "t"}', "non-empty string or integer"),
    ('{"id": ["x"], "text": "t"}', "non-empty string or integer"),
    ('{"id": "x", "text": 3}', "a string 'text'"),
    ('{"id": "x", "text": "   "}', "empty text"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "text": "fine"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"bad.jsonl:3: .*{message}"):
        list(read_corpus(path))
    stats = ReadStats()
    assert [d.id for d in read_corpus(path, skip_invalid=True, stats=stats)] == ["ok"]
    assert (stats.documents, stats.skipped) == (1, 1)


def test_skip_invalid_counts_invalid_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n{"id": "c", "text": "fine"}\n')
    with pytest.raises(DataError, match="latin1.jsonl:2: invalid UTF-8"):
        list(read_corpus(path))
    stats = ReadStats()
    assert [d.id for d in read_corpus(path, skip_invalid=True, stats=stats)] == ["a", "c"]
    assert (stats.documents, stats.skipped) == (2, 1)


# The reader fuzz: every generated line is valid, invalid or blank, and the test knows which.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
IDS = st.one_of(TEXT.filter(bool), st.integers(-10**12, 10**12))


@st.composite
def valid_row(draw):
    row_id, text = draw(IDS), draw(TEXT.filter(str.strip))
    row = {draw(st.sampled_from(["id", "_id", "docid"])): row_id, "text": text}
    return json.dumps(row, ensure_ascii=draw(st.booleans())).encode(), (str(row_id), text)


INVALID_ROWS = st.one_of(
    TEXT.filter(lambda t: "\n" not in t and "\r" not in t).map(lambda t: b"{" + t.encode()),  # cut-off JSON
    st.sampled_from([b"[1, 2]", b'"just a string"', b"42", b"null", b"id\ttext"]),
    IDS.map(lambda i: json.dumps({"id": i}).encode()),  # no text
    TEXT.map(lambda t: json.dumps({"text": t + "x"}).encode()),  # no id
    st.sampled_from(["", None, True, 1.5, [1], {"a": 1}]).map(lambda i: json.dumps({"id": i, "text": "t"}).encode()),
    st.sampled_from([None, 3, ["t"], {"t": 1}]).map(lambda t: json.dumps({"id": "x", "text": t}).encode()),
    st.sampled_from(["", " ", "\t\n", "\u3000"]).map(lambda t: json.dumps({"id": "x", "text": t}).encode()),
    st.binary(max_size=6).filter(lambda b: b"\n" not in b and b"\r" not in b).map(  # invalid UTF-8
        lambda b: b'{"id": "x", "text": "\xff' + b + b'"}'),
)
BLANK = st.sampled_from([b"", b"  ", b"\t", b" \r"])
LINE = st.one_of(valid_row(), INVALID_ROWS.map(lambda b: (b, "invalid")),
                 BLANK.map(lambda b: (b, None)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=8), gzipped=st.booleans())
def test_reader_fuzz_fails_exactly_at_the_first_invalid_line(tmp_path, lines, gzipped):
    data = b"\n".join(line for line, _ in lines) + b"\n"
    path = tmp_path / ("fuzz.jsonl.gz" if gzipped else "fuzz.jsonl")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    invalid = [number for number, (_, kind) in enumerate(lines, start=1) if kind == "invalid"]
    valid = [kind for _, kind in lines if isinstance(kind, tuple)]
    if invalid:
        with pytest.raises(DataError) as error:
            list(read_corpus(path))
        assert str(error.value).startswith(f"{path}:{invalid[0]}: ")
    else:
        assert [(d.id, d.text) for d in read_corpus(path)] == valid
    stats = ReadStats()
    assert [(d.id, d.text) for d in read_corpus(path, skip_invalid=True, stats=stats)] == valid
    assert (stats.documents, stats.skipped) == (len(valid), len(invalid))


TSV_LINE = st.one_of(
    st.tuples(TEXT.filter(lambda t: t and "\t" not in t and "\n" not in t and "\r" not in t),
              TEXT.filter(lambda t: t.strip() and "\t" not in t and "\n" not in t and "\r" not in t)).map(
        lambda f: (f"{f[0]}\t{f[1]}".encode(), f)),
    st.sampled_from([b"no tab here", b"\tno id", b"id\t", b"id\t   ", b"id\t\xe9t\xe9"]).map(lambda b: (b, "invalid")),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(TSV_LINE, max_size=6))
def test_tsv_reader_fuzz(tmp_path, lines):
    path = tmp_path / "fuzz.tsv"
    path.write_bytes(b"".join(line + b"\n" for line, _ in lines))
    invalid = [number for number, (_, kind) in enumerate(lines, start=1) if kind == "invalid"]
    valid = [kind for _, kind in lines if kind != "invalid"]
    if invalid:
        with pytest.raises(DataError, match=f"^{path}:{invalid[0]}: "):
            list(read_corpus(path))
    assert [(d.id, d.text) for d in read_corpus(path, skip_invalid=True)] == valid


def test_read_queries_formats(tmp_path, monkeypatch):
    (tmp_path / "topics.tsv").write_text("q1\twer hat Penicillin entdeckt?\n\nq2\t蜜蜂如何交流？\n", encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a", "metadata": {}}\n{"qid": 2, "query": "b"}\n'
                                            '{"query_id": "q3", "text": "c"}\n')
    (tmp_path / "topics.tsv.gz").write_bytes(gzip.compress((tmp_path / "topics.tsv").read_bytes()))
    assert read_queries(tmp_path / "topics.tsv") == (["q1", "q2"], ["wer hat Penicillin entdeckt?", "蜜蜂如何交流？"])
    assert read_queries(tmp_path / "topics.tsv.gz") == read_queries(tmp_path / "topics.tsv")
    assert read_queries(tmp_path / "queries.jsonl") == (["q1", "2", "q3"], ["a", "b", "c"])
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"x\tfrom stdin\n")))
    assert read_queries("-") == (["x"], ["from stdin"])


@pytest.mark.parametrize("content, message", [
    (b"q1\tok\nq2\tcaf\xe9\n", "q.tsv:2: invalid UTF-8"),
    (b"q1\tok\nq2 without a tab\n", "q.tsv:2: expected id<TAB>text"),
    (b"q1\tok\nq2\t  \n", "q.tsv:2: empty text"),
    (b"q1\tok\n\nq1\tagain\n", "q.tsv:3: query id 'q1' already on line 1"),
    (b"\n \n", "q.tsv: no queries"),
])
def test_read_queries_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "q.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_queries(path)


def test_read_lines_of_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.txt: no such file"):
        list(read_lines(tmp_path / "nope.txt"))


def test_hbt_index_builds_from_gzip_on_stdin_and_skips_invalid_utf8(tiny_bundle, tmp_path):
    """The reported failure: `hbt-index build` on a gzipped corpus stopped at line 1 with "invalid UTF-8"."""
    from click.testing import CliRunner

    from hbt.cli.index import main as index_cli

    corpus = gzip.compress(jsonl(ROWS) + b'{"id": "latin-1", "text": "caf\xe9"}\n')
    result = CliRunner().invoke(index_cli, ["build", "-", "--bundle", str(tiny_bundle), "--out", str(tmp_path / "index"),
                                            "--skip-invalid"], input=corpus)
    assert result.exit_code == 0, result.output
    assert "index: 2 documents" in result.output and "1 invalid lines skipped" in result.output


# Issue 21: byte order marks, line endings, nesting, surrogates, FIFOs ---------------------------------------

def test_a_byte_order_mark_is_dropped_not_made_part_of_the_first_id(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "c.tsv").write_bytes(bom + "d1\tErste Zeile\nd2\tzweite\n".encode())
    (tmp_path / "q.tsv").write_bytes(bom + b"q1\twho?\nq2\twhat?\n")
    (tmp_path / "c.jsonl").write_bytes(bom + jsonl(ROWS))
    assert [(d.id, d.text) for d in read_corpus(tmp_path / "c.tsv")] == [("d1", "Erste Zeile"), ("d2", "zweite")]
    assert read_queries(tmp_path / "q.tsv") == (["q1", "q2"], ["who?", "what?"])
    assert [d.id for d in read_corpus(tmp_path / "c.jsonl")] == ["d1", "7"]


@pytest.mark.parametrize("ending", [b"\r", b"\r\n", b"\n"])
def test_every_line_ending_separates_documents(tmp_path, ending):
    """The reported loss: with CR-only endings two lines were one document, and the second was dropped."""
    path = tmp_path / "c.tsv"
    path.write_bytes(ending.join([b"d1\tone", b"d2\ttwo", b"", b"d3\tthree"]))
    assert [(d.id, d.text) for d in read_corpus(path)] == [("d1", "one"), ("d2", "two"), ("d3", "three")]
    (tmp_path / "q.tsv").write_bytes(ending.join([b"q1\tone", b"q2\ttwo"]) + ending)
    assert read_queries(tmp_path / "q.tsv") == (["q1", "q2"], ["one", "two"])


@pytest.mark.parametrize("line", [
    "[" * 100_000 + "]" * 100_000,
    '{"id": "n", "text": "t", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_deeply_nested_json_is_one_error_at_its_line(tmp_path, line):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"deep\.jsonl:2: "):
        list(read_corpus(path))
    assert [d.id for d in read_corpus(path, skip_invalid=True)] == ["a"]


@pytest.mark.parametrize("row", [
    r'{"id": "x", "text": "half a pair \ud83d"}', r'{"id": "\udfff", "text": "t"}',
    r'{"id": "x", "text": "t", "title": "\ud800"}', r'{"id": "x", "text": "t", "source": {"a": ["\udc00"]}}'])
def test_a_lone_surrogate_is_one_error_at_its_line(tmp_path, row):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "ok", "text": "a whole pair \\ud83d\\ude00"}\n' + row + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.jsonl:2: a lone surrogate"):
        list(read_corpus(path))
    assert [d.text for d in read_corpus(path, skip_invalid=True)] == ["a whole pair 😀"]
    (tmp_path / "q.jsonl").write_text(row.replace('"text"', '"query"') + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"q\.jsonl:1: a lone surrogate"):
        read_queries(tmp_path / "q.jsonl")


def test_a_fifo_and_a_process_substitution_stream_like_stdin(tmp_path):
    """`hbt-index add <(cmd)` said "/dev/fd/63: no such file"."""
    import os
    import threading

    expected = list(read_corpus("rows.jsonl", stream=io.BytesIO(jsonl(ROWS))))
    fifo = tmp_path / "corpus.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(jsonl(ROWS)), daemon=True)
    writer.start()
    try:
        assert list(read_corpus(fifo)) == expected
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # unblocks a writer the reader never met
        writer.join(10)
    read_end, write_end = os.pipe()  # what bash's <(cmd) passes: /dev/fd/N
    with os.fdopen(write_end, "wb") as pipe:
        pipe.write(gzip.compress(jsonl(ROWS)))
    try:
        assert list(read_corpus(f"/dev/fd/{read_end}")) == expected
    finally:
        os.close(read_end)
    with pytest.raises(DataError, match="a directory"):
        list(read_corpus(tmp_path))


# The readers' property: any field, any line ending, a BOM or not. A row is read back exactly, or refused at its
# line; nothing is silently dropped, merged or changed.
HOSTILE = st.text(st.sampled_from(["a", "é", "语", "😀", " ", "\ufeff", "\x00", "\t", "\r", "\n", "\ud800",
                                   "\udc00"]), max_size=4)
ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])
NO_BREAKS = str.maketrans("", "", "\t\r\n")  # TSV cannot carry these in a field


def has_surrogate(*fields: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for field in fields for c in field)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(HOSTILE, HOSTILE, HOSTILE), max_size=6), tsv=st.booleans(), ending=ENDINGS,
       bom=st.booleans(), trailing=st.booleans(), ascii_json=st.booleans(), block=st.sampled_from([1, 2, 5, 65536]),
       queries=st.booleans())
def test_readers_keep_or_refuse_every_row_of_hostile_text(tmp_path, rows, tsv, ending, bom, trailing, ascii_json,
                                                          block, queries):
    from unittest import mock

    # Row i's id ends with i, so ids are unique (queries need it) unless empty (invalid anyway).
    rows = [(f"{row_id}{i}" if row_id else "", text, title) for i, (row_id, text, title) in enumerate(rows)]
    if tsv:
        rows = [(row_id.translate(NO_BREAKS).lstrip("\ufeff"), text.translate(NO_BREAKS), "")
                for row_id, text, _ in rows]
        lines = [f"{row_id}\t{text}" for row_id, text, _ in rows]
        blank = [not line.strip() for line in lines]
    else:
        # What a JSON reader sees: an escaped high and low surrogate side by side are one character.
        rows = [tuple(json.loads(json.dumps(field)) for field in row) for row in rows]
        ascii_json = ascii_json or has_surrogate(*(field for row in rows for field in row))
        lines = [json.dumps({"id": row_id, "text": text, "title": title}, ensure_ascii=ascii_json)
                 for row_id, text, title in rows]
        blank = [False] * len(rows)
    data = ending.join(line.encode("utf-8", "surrogatepass") for line in lines) + (ending if trailing else b"")
    path = tmp_path / ("rows.tsv" if tsv else "rows.jsonl")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    good = [not skip and bool(row[0]) and bool(row[1].strip()) and not has_surrogate(*row)
            for row, skip in zip(rows, blank)]
    valid = [row for row, keep in zip(rows, good) if keep]
    invalid = [number for number, (keep, skip) in enumerate(zip(good, blank), start=1) if not keep and not skip]
    with mock.patch("hbt.corpus.LINE_BLOCK", block):  # line ends split across the reader's blocks too
        if queries:
            if invalid or not valid:
                with pytest.raises(DataError, match=f"^{path}:{invalid[0]}: " if invalid else "no queries"):
                    read_queries(path)
            else:
                assert read_queries(path) == ([r[0] for r in valid], [r[1] for r in valid])
            return
        if invalid:
            with pytest.raises(DataError, match=f"^{path}:{invalid[0]}: "):
                list(read_corpus(path))
        else:
            assert [(d.id, d.text, d.title) for d in read_corpus(path)] == valid
        stats = ReadStats()
        assert [(d.id, d.text, d.title) for d in read_corpus(path, skip_invalid=True, stats=stats)] == valid
        assert (stats.documents, stats.skipped) == (len(valid), len(invalid))
