"""Upgrades in place, without re-embedding: format 1 to format 2 (the single graph and store become the
first segment), then a lexical part for each segment written before lexical search existed."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from hbt.errors import SearchIndexError
from hbt.index import durable
from hbt.index.format import (DOCS_FILE, FORMAT, FORMAT_VERSION, GRAPH_FILE, LANGS_FILE, LEXICAL_FILE, MANIFEST,
                              IndexBundle, IndexConfig, Manifest, SegmentEntry, passage_text, tombstone_name)
from hbt.index.lexical import LexicalWriter, bundle_tokenizer
from hbt.index.merge import READ_CHUNK
from hbt.index.segment import file_record
from hbt.index.writer import new_manifest, open_writer


def upgrade_index(directory: Path, bundle: Path | str | None = None, tokenizer=None) -> Manifest:
    """Convert a format-1 index to format 2, then add the lexical parts its segments lack, tokenized by
    ``tokenizer`` or else by the tokenizer of ``bundle`` (default: the bundle the index names), which must be
    the one the index was built with. An index with nothing to upgrade is left as it is."""
    directory = Path(directory)
    _convert_format_1(directory)
    return add_lexical_parts(directory, bundle, tokenizer)


def add_lexical_parts(directory: Path, bundle: Path | str | None = None, tokenizer=None) -> Manifest:
    """Write each segment's missing lexical part from its stored texts, as one commit."""
    with open_writer(directory) as writer:
        missing = [entry for entry in writer.manifest.segments if LEXICAL_FILE not in entry.files]
        if not missing:
            return writer.manifest
        recorded = writer.manifest.bundle
        tokenizer = tokenizer or bundle_tokenizer(bundle or recorded.path, recorded.fingerprint, directory)
        updated = {}
        for entry in missing:
            segment, lexical = writer.segment(entry), LexicalWriter(tokenizer)
            for start in range(0, entry.count, READ_CHUNK):
                labels = range(start, min(entry.count, start + READ_CHUNK))
                documents = segment.documents(labels)
                # Deleted documents may be gone from the store (format 1 removed them): none of their pieces count.
                lexical.add(lexical.pieces([passage_text(documents[label]) if label in documents else ""
                                            for label in labels]))
            path = directory / entry.name / LEXICAL_FILE
            lexical.finish(path)
            updated[entry.name] = replace(entry, files=entry.files | {LEXICAL_FILE: file_record(path)})
            durable.fsync_dir(path.parent)
        return writer.commit(updated=updated)


def _convert_format_1(directory: Path) -> None:
    """Format 1 to format 2 in place; an index of format 2 is left as it is."""
    path = directory / MANIFEST
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SearchIndexError(f"{path}: cannot read ({e}); is {directory} an hbt index?") from e
    if old.get("format") != FORMAT or old.get("format_version") not in (1, FORMAT_VERSION):
        raise SearchIndexError(f"{path}: not an hbt index of format 1 or {FORMAT_VERSION}")
    if old["format_version"] == FORMAT_VERSION:
        return
    config = IndexConfig(M=old["M"], ef_construction=old["ef_construction"], ef=old["ef"])
    bundle = IndexBundle(old["bundle"]["path"], old["bundle"]["fingerprint"])
    with open_writer(directory, replace(new_manifest(bundle, old["dimension"], config), created=old["created"]),
                     force=True) as writer:
        segment = directory / writer.next_name()
        segment.mkdir()
        for source, target in (("hnsw.bin", GRAPH_FILE), ("docs.sqlite", DOCS_FILE)):
            _link_or_copy(directory / source, segment / target)
        db = sqlite3.connect(str(segment / DOCS_FILE))
        rows = db.execute("SELECT label, lang FROM docs").fetchall()
        db.close()
        count = old["next_label"]
        codes = sorted({lang for _, lang in rows})
        code_of = {lang: code for code, lang in enumerate(codes)}
        langs = np.zeros(count, dtype=np.uint16)
        live = np.zeros(count, dtype=bool)
        for label, lang in rows:
            langs[label], live[label] = code_of[lang], True
        np.save(segment / LANGS_FILE, langs)
        deleted, tombstones = int(count - live.sum()), None
        if deleted:  # format 1 removed deleted documents from the store and marked them in the graph
            tombstones = tombstone_name(writer.manifest.generation + 1)
            np.save(segment / tombstones, np.flatnonzero(~live).astype(np.int64))
        files = {file.name: file_record(file) for file in segment.iterdir()}
        durable.fsync_dir(segment)
        writer.commit(add=[SegmentEntry(segment.name, count, deleted, tombstones, tuple(codes),
                                               dict(Counter(lang for _, lang in rows)), files)])


def _link_or_copy(source: Path, target: Path) -> None:
    """Format 1 files are never written in place, so the segment may share them."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
