"""The index: immutable segments (HNSW graph, SQLite documents, languages) listed by a commit manifest.

``format`` (the files and the manifest's rules), ``durable`` (fsync, atomic rename, the
writers' lock), ``graph`` (hnswlib), ``segment`` (one segment written and searched),
``planner`` (exact scan or HNSW per filter), ``reader`` (a commit's snapshot, merged
search), ``writer`` (build, add, delete), ``merge`` (merge policy, compaction),
``upgrade`` (format 1) and ``verify``. Importing this package loads neither hnswlib nor an encoder.
"""

from hbt.index.format import IndexConfig, passage_text, read_manifest
from hbt.index.graph import INSERT_BATCH, add_in_batches, add_shuffled, new_graph
from hbt.index.merge import compact_index
from hbt.index.reader import Index, Ranking
from hbt.index.upgrade import upgrade_index
from hbt.index.verify import verify_index
from hbt.index.writer import add_documents, build_index, delete_documents

__all__ = ["INSERT_BATCH", "Index", "IndexConfig", "Ranking", "add_documents", "add_in_batches", "add_shuffled",
           "build_index", "compact_index", "delete_documents", "new_graph", "passage_text", "read_manifest",
           "upgrade_index", "verify_index"]
