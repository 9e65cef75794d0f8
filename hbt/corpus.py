"""Corpus readers: JSONL (hbt or BEIR fields) and TSV, streamed, with file:line errors."""

from __future__ import annotations

import contextlib
import gzip
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from hbt.errors import DataError


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


def open_text(path: Path):
    """A UTF-8 text file, gzip-compressed when its name ends in .gz."""
    return gzip.open(path, "rt", encoding="utf-8") if Path(path).suffix == ".gz" else open(path, encoding="utf-8")


def _open_bytes(path: str | Path):
    """Bytes, decoded line by line below, so an encoding error names its line."""
    if str(path) == "-":
        return "<stdin>", contextlib.nullcontext(sys.stdin.buffer)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such corpus file")
    return str(path), open(path, "rb")


def _parse_jsonl(line: str) -> Document:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg})") from e
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    return document_from_row(row)


def document_from_row(row: dict) -> Document:
    """A document from a JSON object or a Parquet row (hbt, BEIR or MIRACL fields); ValueError names what is missing."""
    key = next((k for k in ("id", "_id", "docid") if k in row), None)  # hbt, BEIR, MIRACL
    doc_id = row.pop(key) if key else None
    text = row.pop("text", None)
    if doc_id is None or not isinstance(text, str):
        raise ValueError("needs 'id' (or BEIR '_id', MIRACL 'docid') and a string 'text'")
    title, lang = row.pop("title", "") or "", row.pop("lang", "") or ""
    return Document(str(doc_id), text, str(title), str(lang), row)


def _parse_tsv(line: str) -> Document:
    parts = line.rstrip("\n").split("\t")
    if len(parts) < 2:
        raise ValueError("expected id<TAB>text")
    return Document(parts[0], parts[1])


def read_corpus(path: str | Path, skip_invalid: bool = False, stats: ReadStats | None = None) -> Iterator[Document]:
    """Yield documents one by one; bad lines raise DataError(file:line) or, with skip_invalid, are counted."""
    name, opened = _open_bytes(path)
    with opened as handle:
        yield from parse_lines(name, handle, skip_invalid, stats)


def parse_lines(name: str, lines: Iterable[bytes], skip_invalid: bool = False,
                stats: ReadStats | None = None) -> Iterator[Document]:
    """The documents of a corpus file's lines (JSONL or TSV, decided by ``name`` or the first line)."""
    stats = stats if stats is not None else ReadStats()
    parse = _parse_tsv if name.endswith(".tsv") else None
    for line_number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{name}:{line_number}: invalid UTF-8 ({e.reason}); re-encode the file as UTF-8") from e
        if not line.strip():
            continue
        if parse is None:  # stdin and unknown extensions: decide from the first line
            parse = _parse_jsonl if line.lstrip().startswith("{") else _parse_tsv
        try:
            doc = parse(line)
            if not doc.text.strip():
                raise ValueError("empty text")
        except ValueError as e:
            if skip_invalid:
                stats.skipped += 1
                continue
            raise DataError(f"{name}:{line_number}: {e}; fix the line or pass --skip-invalid") from e
        stats.documents += 1
        yield doc
