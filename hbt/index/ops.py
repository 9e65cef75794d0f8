"""The index's operations: build, add, delete, compact, and committing segments staged elsewhere.

They sit above ``writer`` (the lock, segment names, commits) and ``merge`` (the merge
policy), so neither of those imports the other's callers. Each operation is one commit.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hbt.corpus import Document
from hbt.errors import DataError, SearchIndexError
from hbt.index import durable
from hbt.index.format import IndexConfig, Manifest, SegmentEntry, tombstone_name
from hbt.index.lexical import LexicalWriter
from hbt.index.merge import DELETED_SHARE, MERGE_FACTOR, merge_segments, merge_small_segments
from hbt.index.reader import check_bundle
from hbt.index.segment import SegmentWriter, file_record
from hbt.index.writer import bundle_identity, check_build_target, new_manifest, open_writer

STAGED_ENTRY = "entry.json"  # a staged segment's entry, written last: the segment is whole when it is there


def build_index(docs: Iterable[Document], encoder, out: Path, config: IndexConfig = IndexConfig(),
                progress: Callable[[int], None] = lambda n: None, force: bool = False) -> Manifest:
    """Embed a stream of documents into a new index at ``out`` (with ``force``, replacing one)."""
    out = Path(out)
    check_build_target(out, force)  # early, before the lock: open_writer decides again under it
    with open_writer(out, new_manifest(bundle_identity(encoder), encoder.dimension, config), force=force) as writer:
        segments = writer.write_documents(docs, encoder, progress, config.threads)
        if not segments:
            raise DataError("the corpus has no documents; give a JSONL or TSV file with at least one")
        return writer.commit(add=segments)


def add_documents(directory: Path, docs: Iterable[Document], encoder,
                  progress: Callable[[int], None] = lambda n: None, threads: int = 0) -> Manifest:
    """Add documents as new segments, one commit; small segments are then merged by the merge policy."""
    directory = Path(directory)
    with open_writer(directory) as writer:
        check_bundle(writer.manifest, encoder, directory)
        segments = writer.write_documents(docs, encoder, progress, threads)
        if segments:
            writer.commit(add=segments)
            merge_small_segments(writer)
        return writer.manifest


def delete_documents(directory: Path, ids: list[str]) -> tuple[Manifest, list[str]]:
    """Tombstone documents by id, one commit; returns the manifest and the ids that were not live."""
    directory = Path(directory)
    with open_writer(directory) as writer:
        generation = writer.manifest.generation + 1
        replaced, found = {}, set()
        for entry in writer.manifest.segments:
            deleted = writer.tombstones(entry)
            rows = writer.segment(entry).find(ids)
            alive = ~np.isin([label for _, label, _ in rows], deleted)
            hits = [row for row, keep in zip(rows, alive) if keep]
            if not hits:
                continue
            found.update(doc_id for doc_id, _, _ in hits)
            replaced[entry.name] = _with_tombstones(directory / entry.name, entry, deleted, hits, generation)
        if replaced:
            writer.commit(updated=replaced)
        return writer.manifest, [i for i in dict.fromkeys(ids) if i not in found]


def _with_tombstones(directory: Path, entry: SegmentEntry, deleted: np.ndarray, hits: list[tuple[str, int, str]],
                     generation: int) -> SegmentEntry:
    """The entry of a segment with ``hits`` deleted too: a new tombstone file, counts updated."""
    labels = np.union1d(deleted, [label for _, label, _ in hits]).astype(np.int64)
    name = tombstone_name(generation)
    np.save(directory / name, labels)
    languages = dict(entry.languages)
    for _, _, lang in hits:
        languages[lang] -= 1
    files = {n: record for n, record in entry.files.items() if n != entry.tombstones}  # the lexical part stays
    files[name] = file_record(directory / name)
    durable.fsync_dir(directory)
    return replace(entry, deleted=len(labels), tombstones=name, files=files,
                   languages={lang: n for lang, n in languages.items() if n})


def compact_index(directory: Path, progress: Callable[[int], None] = lambda n: None, threads: int = 0,
                  expunge_deletes: bool = False) -> Manifest:
    """Pack the small segments (below segment_size / MERGE_FACTOR) together and rewrite those with
    many tombstones (with ``expunge_deletes``, any), as one commit."""
    with open_writer(Path(directory)) as writer:
        size = writer.manifest.segment_size
        threshold = 0 if expunge_deletes else DELETED_SHARE
        chosen = [e for e in writer.manifest.segments if e.live < size // MERGE_FACTOR
                  or (e.deleted and e.deleted >= threshold * e.count)]
        if len(chosen) > 1 or any(e.deleted for e in chosen):
            merge_segments(writer, chosen, progress, threads)
        return writer.manifest


def stage_segment(target: Path, dimension: int, config: IndexConfig,
                  batches: Iterable[tuple[list[Document], np.ndarray]], tokenizer=None) -> SegmentEntry:
    """Write documents and their vectors [n, d] as a segment outside any index, at ``target``
    (with the bundle's ``tokenizer``, its lexical part too).

    The segment is written beside ``target`` and renamed into place whole, with its entry,
    so ``target`` either does not exist or holds a finished segment (a Ray part). Returns the entry.
    """
    temporary = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    writer = SegmentWriter(temporary, dimension, config, LexicalWriter(tokenizer) if tokenizer is not None else None)
    try:
        for documents, vectors in batches:
            writer.add(documents, vectors)
        entry = writer.finish()
        durable.write_atomically(temporary / STAGED_ENTRY, json.dumps(entry.to_json()).encode("utf-8"))
        temporary.rename(target)
        durable.fsync_dir(target.parent)
    except BaseException:
        writer.close()
        durable.remove(temporary)
        raise
    return entry


def is_staged(target: Path) -> bool:
    """Whether ``target`` holds a segment that ``stage_segment`` finished."""
    return (target / STAGED_ENTRY).is_file()


def discard_unfinished(directory: Path) -> None:
    """Remove the segments that ``stage_segment`` began in ``directory`` and never finished (their writer died)."""
    for leftover in directory.glob("*.tmp-*"):
        durable.remove(leftover)


def commit_staged(out: Path, staged: list[Path], encoder, config: IndexConfig, force: bool = False) -> Manifest:
    """Make a new index at ``out`` of finished staged segments, renamed in, as one commit under the lock.

    An index that appeared at ``out`` meanwhile is refused (unless ``force``) under that
    lock, and the staged segments stay where they are, so a rerun with ``force`` commits them.
    """
    out = Path(out)
    create = new_manifest(bundle_identity(encoder), encoder.dimension, config)
    with open_writer(out, create=create, force=force) as writer:
        added = []
        for source in staged:
            name = writer.next_name()
            entry = _staged_entry(source, name)
            source.rename(out / name)
            durable.remove(out / name / STAGED_ENTRY)
            added.append(entry)
        return writer.commit(add=added)


def _staged_entry(source: Path, name: str) -> SegmentEntry:
    """The entry ``stage_segment`` wrote, named as the segment it becomes."""
    path = source / STAGED_ENTRY
    try:
        return SegmentEntry.from_json(json.loads(path.read_text(encoding="utf-8")) | {"name": name}, str(path))
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise SearchIndexError(f"{path}: not a staged segment's entry ({e}); remove {source.parent} and rerun "
                               "the build") from e
