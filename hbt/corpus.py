"""Corpus and query readers: JSONL (hbt or BEIR fields) and TSV, plain or gzipped, streamed, with file:line errors."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from hbt.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
BOM = "\ufeff"  # a UTF-8 byte order mark, as some editors start a file with
LINE_BLOCK = 1 << 16  # bytes read at a time
DOCUMENT_ID_KEYS = ("id", "_id", "docid")  # hbt, BEIR, MIRACL
QUERY_ID_KEYS = ("id", "_id", "qid", "query_id")
QUERY_TEXT_KEYS = ("text", "query")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""
    lang: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class ReadStats:
    documents: int = 0
    skipped: int = 0


def _display_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


@contextlib.contextmanager
def _open_bytes(path: str | Path, stream: BinaryIO | None = None) -> Iterator[BinaryIO]:
    """The bytes of a file, of stdin ('-') or of ``stream`` (the file, opened by the caller), gunzipped when they
    start with gzip's magic number."""
    with contextlib.ExitStack() as stack:
        if stream is not None:
            pass
        elif str(path) == "-":
            stream = sys.stdin.buffer
        elif Path(path).exists() and not Path(path).is_dir():  # a file, a FIFO, or <(cmd)'s /dev/fd/N
            stream = stack.enter_context(open(path, "rb"))
        else:
            raise DataError(f"{path}: {'a directory' if Path(path).is_dir() else 'no such file'}")
        if not hasattr(stream, "peek"):  # stdin replaced by a plain byte stream (tests, embedding)
            stream = io.BufferedReader(stream)
        if stream.peek(2)[:2] == GZIP_MAGIC:
            stream = stack.enter_context(gzip.GzipFile(fileobj=stream))
        yield stream


@contextlib.contextmanager
def open_text(path: str | Path) -> Iterator[io.TextIOWrapper]:
    """A UTF-8 text file or stdin ('-'), gunzipped when it starts with gzip's magic number."""
    with _open_bytes(path) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8")
        try:
            yield text
        finally:
            text.detach()  # _open_bytes closes the file, and leaves stdin open


def read_lines(path: str | Path, stats: ReadStats | None = None,
               stream: BinaryIO | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a UTF-8 file, plain or gzipped, or of stdin ('-').

    Lines end with \\n, \\r\\n or a lone \\r (old Mac files), as Python's universal newlines; a
    UTF-8 byte order mark at the start is dropped. A line of invalid UTF-8 raises
    DataError(file:line), or is counted in ``stats.skipped`` when ``stats`` is given.
    """
    name, number = _display_name(path), 0
    with _open_bytes(path, stream) as stream:
        try:
            # Bytes, decoded line by line, so that an encoding error names its line.
            for number, raw in enumerate(_raw_lines(stream), start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    if stats is None:
                        raise DataError(f"{name}:{number}: invalid UTF-8 ({e.reason}); "
                                        "re-encode the file as UTF-8") from e
                    stats.skipped += 1
                    continue
                if number == 1:
                    line = line.removeprefix(BOM)
                if line.strip():
                    yield number, line
        except (OSError, EOFError, zlib.error) as e:  # a corrupt or truncated gzip stream
            raise DataError(f"{name}:{number + 1}: cannot read ({e}); the file is damaged, fetch it again") from e


def _raw_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's lines without their ends (\\n, \\r\\n or \\r), read a block at a time."""
    parts: list[bytes] = []  # the unfinished line
    while True:
        block = stream.read1(LINE_BLOCK)
        if block and b"\n" not in block and b"\r" not in block:
            parts.append(block)
            continue
        lines = (b"".join(parts) + block).splitlines(keepends=True)
        # Unless the stream has ended, the last line may go on in the next block, and a final \r may be the
        # first half of a \r\n.
        parts = [lines.pop()] if block and lines and not lines[-1].endswith(b"\n") else []
        for line in lines:
            yield line.removesuffix(b"\n").removesuffix(b"\r")
        if not block:
            return


def _json_object(line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg})") from e
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    if "\\u" in line:  # only an escape can make a lone surrogate, which no UTF-8 text can hold
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"a lone surrogate ({e.object[e.start]!r}) in a string; it is not Unicode text") from e
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
    return row


def _alternatives(keys: tuple[str, ...]) -> str:
    return repr(keys[0]) + (f" (or {', '.join(map(repr, keys[1:]))})" if len(keys) > 1 else "")


def _pop_first(row: dict, keys: tuple[str, ...]):
    """The value of the first of ``keys`` in ``row``, removed from it; None if none is there."""
    for key in keys:
        if key in row:
            return row.pop(key)
    return None


def _id_and_text(row: dict, id_keys: tuple[str, ...], text_keys: tuple[str, ...]) -> tuple[str, str]:
    """Pop the row's id and text (the first of their keys present) and check them."""
    row_id, text = _pop_first(row, id_keys), _pop_first(row, text_keys)
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or row_id == "" or not isinstance(text, str):
        raise ValueError(f"needs {_alternatives(id_keys)}, a non-empty string or integer, "
                         f"and a string {_alternatives(text_keys)}")
    return str(row_id), _non_empty(text)


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("empty text")
    return text


def _tsv_fields(line: str) -> tuple[str, str]:
    parts = line.split("\t")
    if len(parts) < 2 or not parts[0]:
        raise ValueError("expected id<TAB>text")
    return parts[0], _non_empty(parts[1])


def _document_from_json(line: str) -> Document:
    return document_from_row(_json_object(line))


def document_from_row(row: dict) -> Document:
    """A document from a JSON object or a Parquet row (its fields: hbt's, BEIR's or MIRACL's); ValueError says
    what is wrong."""
    doc_id, text = _id_and_text(row, DOCUMENT_ID_KEYS, ("text",))
    title, lang = row.pop("title", "") or "", row.pop("lang", "") or ""
    return Document(doc_id, text, str(title), str(lang), row)


def _document_from_tsv(line: str) -> Document:
    return Document(*_tsv_fields(line))


def _query_from_json(line: str) -> tuple[str, str]:
    return _id_and_text(_json_object(line), QUERY_ID_KEYS, QUERY_TEXT_KEYS)


def _is_json(path: str | Path, first_line: str) -> bool:
    """JSONL or TSV: from the file name (.gz aside); for stdin and other names, from the first line."""
    suffix = Path(str(path).removesuffix(".gz")).suffix
    if suffix in (".jsonl", ".json", ".tsv"):
        return suffix != ".tsv"
    return first_line.lstrip().startswith("{")


def _parsed(path: str | Path, from_json: Callable, from_tsv: Callable, hint: str,
            stats: ReadStats | None = None, stream: BinaryIO | None = None) -> Iterator[tuple[int, object]]:
    """(line number, parsed row) of each non-blank line; a bad line raises DataError(file:line) naming ``hint``,
    or is counted in ``stats.skipped`` when ``stats`` is given."""
    parse = None
    for number, line in read_lines(path, stats, stream):
        parse = parse or (from_json if _is_json(path, line) else from_tsv)
        try:
            row = parse(line)
        except ValueError as e:
            if stats is None:
                raise DataError(f"{_display_name(path)}:{number}: {e}; {hint}") from e
            stats.skipped += 1
            continue
        yield number, row


def read_corpus(path: str | Path, skip_invalid: bool = False, stats: ReadStats | None = None,
                stream: BinaryIO | None = None) -> Iterator[Document]:
    """Yield documents one by one; bad lines (invalid UTF-8 too) raise DataError(file:line) or, with skip_invalid,
    are counted in ``stats.skipped``. ``stream`` is the file at ``path`` already opened (as a Ray read task opens
    it), read as it is and not closed."""
    stats = stats if stats is not None else ReadStats()
    for _, doc in _parsed(path, _document_from_json, _document_from_tsv, "fix the line or pass --skip-invalid",
                          stats if skip_invalid else None, stream):
        stats.documents += 1
        yield doc


def read_queries(path: str | Path) -> tuple[list[str], list[str]]:
    """Query ids and texts, in file order: TSV (qid<TAB>text, MIRACL topics) or JSONL (id, _id, qid or query_id,
    and text or query: BEIR queries); plain, gzipped or stdin ('-'). Ids must be unique."""
    ids, texts, first_seen = [], [], {}
    for number, (qid, text) in _parsed(path, _query_from_json, _tsv_fields,
                                       "expected qid<TAB>text, or JSON with id and text"):
        if qid in first_seen:
            raise DataError(f"{_display_name(path)}:{number}: query id {qid!r} already on line {first_seen[qid]}; "
                            "query ids must be unique")
        first_seen[qid] = number
        ids.append(qid)
        texts.append(text)
    if not ids:
        raise DataError(f"{_display_name(path)}: no queries; expected qid<TAB>text lines, "
                        "or JSON lines with id and text")
    return ids, texts
