"""Merges: rewrite segments' live documents into fewer segments, dropping tombstones.

``merge_small_segments`` is the policy that runs after each add (Lucene's log merge
policy): segments are grouped into tiers by size (1-9, 10-99, 100-999 documents, ...)
and ten in one tier merge into one of the next, so a run of small adds costs a bounded
number of segments and each document is rewritten about once per tier. Compaction
(``hbt.index.ops``) packs the small segments and rewrites those whose tombstones reach
DELETED_SHARE: a few tombstones cost a search nothing, while rewriting a million-document graph takes minutes
(``expunge_deletes`` rewrites every segment that has any, Lucene's forceMergeDeletes).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from hbt.index.format import LEXICAL_FILE, Manifest, SegmentEntry
from hbt.index.lexical import LexicalWriter
from hbt.index.writer import IndexWriter

MERGE_FACTOR = 10
DELETED_SHARE = 0.1  # compact rewrites a full-size segment once this share of it is deleted
READ_CHUNK = 4096  # documents copied per step


def _tier(documents: int) -> int:
    return int(math.log10(max(documents, 1)))


def merge_small_segments(writer: IndexWriter) -> None:
    """Merge any tier that has reached MERGE_FACTOR segments, until none has (each merge is a commit)."""
    while True:
        tiers: dict[int, list[SegmentEntry]] = {}
        for entry in writer.manifest.segments:
            if entry.live < writer.manifest.segment_size // MERGE_FACTOR:
                tiers.setdefault(_tier(entry.live), []).append(entry)
        full = next((group for _, group in sorted(tiers.items()) if len(group) >= MERGE_FACTOR), None)
        if full is None:
            return
        merge_segments(writer, full)


def merge_segments(writer: IndexWriter, entries: list[SegmentEntry], progress: Callable[[int], None] = lambda n: None,
                   threads: int = 0) -> Manifest:
    """Rewrite the live documents of ``entries`` as new segments (at most segment_size each), one commit.

    The lexical parts are rebuilt from the old ones' postings, with no tokenizer; if one of
    ``entries`` has none (an index not yet upgraded), neither have the new segments.
    """
    new, target = [], None
    lexical = all(LEXICAL_FILE in entry.files for entry in entries)
    for entry in entries:
        segment = writer.segment(entry)
        live = np.setdiff1d(np.arange(entry.count), writer.tombstones(entry))
        for start in range(0, len(live), READ_CHUNK):
            labels = live[start : start + READ_CHUNK]
            documents = segment.documents(labels)
            target = target or writer.new_segment(threads, LexicalWriter() if lexical else None)
            target.add([documents[int(label)] for label in labels], segment.vectors(labels),
                       segment.lexical.document_pieces(labels) if lexical else None)
            progress(len(labels))
            if target.count >= writer.manifest.segment_size:
                new.append(target.finish())
                target = None
    if target:
        new.append(target.finish())
    return writer.commit(add=new, remove=[entry.name for entry in entries])
