"""Writing an index: build, add and delete, each one commit made under the writers' lock.

A change writes new files only (segments, tombstones), syncs them, then replaces the
manifest in one rename: a crash at any point leaves the last commit whole. Files that
no commit names (an interrupted change's) are removed by the next writer.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from hbt import __version__
from hbt.corpus import Document
from hbt.errors import DataError, SearchIndexError
from hbt.index import durable
from hbt.index.format import (FORMAT_1_FILES, MANIFEST, SEGMENT_NAME, IndexBundle, IndexConfig, Manifest,
                              SegmentEntry, dump_manifest, passage_text, read_manifest, segment_name)
from hbt.index.lexical import LexicalWriter
from hbt.index.segment import Segment, SegmentWriter, load_tombstones

ENCODE_CHUNK = 256  # documents embedded and written per step while streaming
LOCK_TIMEOUT = 600.0  # seconds a writer waits for another to finish


@contextlib.contextmanager
def _missing_is_damage() -> Iterator[None]:
    """A file the commit names that is not there: damage to report as such, not a disk to free."""
    try:
        yield
    except FileNotFoundError as e:
        raise SearchIndexError(f"{e.filename}: missing, though the index's commit names it; the index is damaged: "
                               "restore it or rebuild with hbt-index build") from e


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class IndexWriter:
    """The one writer of an index directory: it holds the lock, names new segments and commits."""

    def __init__(self, directory: Path, manifest: Manifest):
        self.directory, self.manifest = directory, manifest
        self._segments: dict[str, Segment] = {}
        self._tombstones: dict[tuple[str, str | None], np.ndarray] = {}

    @property
    def config(self) -> IndexConfig:
        return self.manifest.config

    def segment(self, entry: SegmentEntry) -> Segment:
        """A committed segment, opened once per writer (duplicate checks, deletes and merges read it)."""
        if entry.name not in self._segments:
            with _missing_is_damage():
                self._segments[entry.name] = Segment(self.directory / entry.name, entry, self.manifest.dimension)
        return self._segments[entry.name]

    def next_name(self) -> str:
        """A fresh segment name: the manifest's next_segment stays above every name used."""
        name = segment_name(self.manifest.next_segment)
        self.manifest = replace(self.manifest, next_segment=self.manifest.next_segment + 1)
        return name

    def new_segment(self, threads: int = 0, lexical: LexicalWriter | None = None) -> SegmentWriter:
        return SegmentWriter(self.directory / self.next_name(), self.manifest.dimension,
                             replace(self.config, threads=threads), lexical)

    def tombstones(self, entry: SegmentEntry) -> np.ndarray:
        key = (entry.name, entry.tombstones)
        if key not in self._tombstones:
            with _missing_is_damage():
                self._tombstones[key] = load_tombstones(self.directory / entry.name, entry)
        return self._tombstones[key]

    def live_ids(self, ids: list[str], entries: list[SegmentEntry] | None = None) -> list[str]:
        """Which of ``ids`` are live documents of the committed segments (or of ``entries``)."""
        found = []
        for entry in self.manifest.segments if entries is None else entries:
            rows = self.segment(entry).find(ids)
            alive = ~np.isin([label for _, label, _ in rows], self.tombstones(entry))
            found += [doc_id for (doc_id, _, _), keep in zip(rows, alive) if keep]
        return found

    def write_documents(self, docs: Iterable[Document], encoder, progress: Callable[[int], None],
                        threads: int = 0) -> list[SegmentEntry]:
        """Embed and write a stream of documents as new segments of at most ``segment_size`` each."""
        finished: list[SegmentEntry] = []
        writer = None
        try:
            for chunk in _chunks(docs, ENCODE_CHUNK):
                clash = self.live_ids([d.id for d in chunk]) or self.live_ids([d.id for d in chunk], finished)
                if clash:
                    raise DataError(f"duplicate document id {clash[0]!r}: already in the index; ids must be unique")
                vectors = encoder.encode_passages([passage_text(d) for d in chunk])
                progress(len(chunk))
                while chunk:
                    writer = writer or self.new_segment(threads, lexical_writer(encoder))
                    room = self.manifest.segment_size - writer.count
                    writer.add(chunk[:room], vectors[:room])
                    chunk, vectors = chunk[room:], vectors[room:]
                    if writer.count == self.manifest.segment_size:
                        finished.append(writer.finish())
                        writer = None
            if writer:
                finished.append(writer.finish())
                writer = None
        finally:
            if writer:
                writer.close()
        return finished

    def commit(self, add: Iterable[SegmentEntry] = (), remove: Iterable[str] = (),
               updated: dict[str, SegmentEntry] | None = None) -> Manifest:
        """Make the changes one commit: new segments, removed segments, updated entries (by name)."""
        removed, updated = set(remove), updated or {}
        segments = [updated.get(e.name, e) for e in self.manifest.segments if e.name not in removed]
        segments += list(add)
        durable.fsync_dir(self.directory)  # the new segment directories' names
        languages: dict[str, int] = {}
        for entry in segments:
            for lang, count in entry.languages.items():
                languages[lang] = languages.get(lang, 0) + count
        self.manifest = replace(self.manifest, generation=self.manifest.generation + 1, segments=tuple(segments),
                                count=sum(e.live for e in segments), languages=dict(sorted(languages.items())),
                                updated=_now())
        durable.write_atomically(self.directory / MANIFEST, dump_manifest(self.manifest))
        for name in FORMAT_1_FILES:  # replaced by this commit's segments (an upgrade, a forced rebuild)
            if (self.directory / name).exists():
                durable.remove(self.directory / name)
        self.collect_garbage()
        return self.manifest

    def collect_garbage(self) -> None:
        """Remove what no commit names: interrupted changes' segments and files, replaced tombstones.

        Only names that hbt writes are touched, so a mistaken path never loses a user's files.
        """
        live = {e.name: set(e.files) for e in self.manifest.segments}  # the segment files, tombstones, lexical part
        for path in self.directory.iterdir():
            if SEGMENT_NAME.fullmatch(path.name):
                if path.name not in live:
                    self._segments.pop(path.name, None)
                    durable.remove(path)
                else:
                    for file in path.iterdir():
                        if file.name not in live[path.name]:
                            durable.remove(file)
            elif path.name.startswith(f"{MANIFEST}.tmp-"):
                durable.remove(path)  # a manifest never renamed into place

    def close(self) -> None:
        for segment in self._segments.values():
            segment.close()


@contextlib.contextmanager
def open_writer(directory: Path, create: Manifest | None = None, timeout: float = LOCK_TIMEOUT,
                force: bool = False) -> Iterator[IndexWriter]:
    """Lock an index for writing and clean up what a crash left.

    With ``create`` (a new manifest), the index is made, or with ``force`` a rebuild
    replaces the current commit's segments; its generation keeps growing, so readers
    see a new commit. Whether an index is already there is decided under the lock: one
    that another build committed while this one waited is refused, not replaced. A change
    that fails removes its uncommitted files at once (they may be what filled the disk).
    """
    directory = Path(directory)
    try:
        if create is not None:
            directory.mkdir(parents=True, exist_ok=True)
        elif not (directory / MANIFEST).is_file():
            read_manifest(directory)  # the one-line "no index here"
        with durable.write_lock(directory, timeout):
            if create is not None:
                check_build_target(directory, force)
            current = read_manifest(directory) if create is None else _readable_manifest(directory)
            writer = IndexWriter(directory, current or create)
            try:
                writer.collect_garbage()
                if create is not None and current is not None:  # its commit lists only the new segments
                    writer.manifest = replace(create, generation=current.generation, next_segment=current.next_segment)
                yield writer
            except BaseException:
                _discard_uncommitted(writer, create is not None)
                raise
            finally:
                writer.close()
    except OSError as e:  # a read-only directory (also for root), a full disk, ...
        raise SearchIndexError(f"{directory}: cannot write ({e.strerror or e}); free space or choose another "
                               "directory. The index is unchanged") from e


def _discard_uncommitted(writer: IndexWriter, creating: bool) -> None:
    """Remove the segments and files of a failed change: what the commit on disk does not name."""
    with contextlib.suppress(OSError, SearchIndexError):
        if (writer.directory / MANIFEST).exists():
            writer.manifest = read_manifest(writer.directory)
        elif creating:
            writer.manifest = replace(writer.manifest, segments=())
        else:
            return  # no commit to go by: leave everything
        writer.collect_garbage()


def _readable_manifest(directory: Path) -> Manifest | None:
    """The commit a forced rebuild replaces, if there is a readable one."""
    with contextlib.suppress(SearchIndexError):
        return read_manifest(directory)
    return None


def bundle_identity(encoder) -> IndexBundle:
    """What an index records of its bundle: searches and updates with another are refused."""
    return IndexBundle(str(encoder.bundle_dir.resolve()), encoder.manifest.fingerprint)


def new_manifest(bundle: IndexBundle, dimension: int, config: IndexConfig) -> Manifest:
    """The manifest of an index with no commit yet (generation 0, no segments)."""
    return Manifest(generation=0, hbt_version=__version__, bundle=bundle, dimension=dimension, M=config.M,
                    ef_construction=config.ef_construction, ef=config.ef, segment_size=config.segment_size,
                    next_segment=0, segments=(), count=0, languages={}, created=_now(), updated=_now(),
                    language_graphs=config.language_graphs)


def lexical_writer(encoder) -> LexicalWriter | None:
    """A segment's lexical part, tokenized by the encoder's tokenizer (a stand-in encoder without one: none)."""
    tokenizer = getattr(encoder, "tokenizer", None)
    return LexicalWriter(tokenizer) if tokenizer is not None else None


def _chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    chunk = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_build_target(out: Path, force: bool) -> None:
    """Refuse to build over an index (unless ``force``) or over a directory that is not one."""
    if out.exists() and not force and (out / MANIFEST).exists():
        raise SearchIndexError(f"{out}: an index already exists there; choose another --index, add to it with "
                               "hbt-index add, or replace it with --force")
    if out.exists() and not force and any(not _is_leftover(p) for p in out.iterdir()):
        raise SearchIndexError(f"{out}: exists and is not an index; choose another --index")


def _is_leftover(path: Path) -> bool:
    """What an interrupted first build leaves: its lock and unfinished segments."""
    return path.name == durable.LOCK_FILE or bool(SEGMENT_NAME.fullmatch(path.name))
