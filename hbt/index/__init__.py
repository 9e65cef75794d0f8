"""The index: immutable segments (HNSW graph, SQLite documents, languages) listed by a commit manifest.

This package is the index's one public face: other packages import from ``hbt.index``,
never from its inner modules (a test checks). Inside: ``format`` (the files and the
manifest's rules), ``durable`` (fsync, atomic rename, the writers' lock), ``graph``
(hnswlib), ``segment`` (one segment written and searched), ``planner`` (exact scan or
HNSW per filter), ``calibrate`` (the planner's costs measured on this machine),
``language_graphs`` (a graph per mid-sized language of each segment), ``lexical`` (BM25
over the bundle tokenizer's pieces, a part of each segment), ``fanout`` (segments, and
hybrid's two sides, searched on threads, off by default), ``snapshot`` (what every
snapshot answers, document keys, the merge), ``reader`` (a commit's snapshot), ``writer``
(the lock, names, commits), ``merge`` (the merge policy), ``ops`` (build, add, delete,
compact, staged segments), ``upgrade`` (format 1) and ``verify``. Importing this package
loads neither hnswlib nor an encoder.
"""

from hbt.index.durable import remove, write_atomically
from hbt.index.fanout import fan_out
from hbt.index.format import (FORMAT_VERSION, FileRecord, IndexBundle, IndexConfig, Manifest, SegmentEntry,
                              passage_text, read_manifest)
from hbt.index.planner import Costs
from hbt.index.graph import INSERT_BATCH, add_in_batches, add_shuffled, new_graph
from hbt.index.lexical import bundle_tokenizer, has_lexical, merge_lexical, require_lexical, text_pieces
from hbt.index.ops import (add_documents, build_index, commit_staged, compact_index, delete_documents,
                           discard_unfinished, is_staged, stage_segment)
from hbt.index.reader import Index, check_bundle
from hbt.index.snapshot import (CommitFacts, IndexSnapshot, Ranking, document_key, key_label, key_position, merge_rankings,
                                summary)
from hbt.index.upgrade import upgrade_index
from hbt.index.verify import verify_index
from hbt.index.writer import ENCODE_CHUNK, check_build_target

__all__ = ["CommitFacts", "Costs", "ENCODE_CHUNK", "FORMAT_VERSION", "INSERT_BATCH", "FileRecord", "Index",
           "IndexBundle", "IndexConfig", "IndexSnapshot", "Manifest", "Ranking", "SegmentEntry", "add_documents",
           "add_in_batches", "add_shuffled", "build_index", "bundle_tokenizer", "check_build_target", "check_bundle",
           "commit_staged", "compact_index", "delete_documents", "discard_unfinished", "document_key", "fan_out",
           "has_lexical", "is_staged", "key_label", "key_position", "merge_lexical", "merge_rankings", "new_graph", "passage_text",
           "read_manifest", "remove", "require_lexical", "stage_segment", "summary", "text_pieces", "upgrade_index",
           "verify_index", "write_atomically"]
