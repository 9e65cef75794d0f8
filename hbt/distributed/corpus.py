"""The corpus as a Ray Data dataset: JSONL, TSV or Parquet files, on any filesystem pyarrow or fsspec reads.

Lines are parsed by hbt's own corpus reader, so a bad line stops the build with
``file:line`` as a local build does (or is skipped with ``skip_invalid``). Rows hold
``id``, ``text``, ``title``, ``lang`` and ``meta`` (the other fields, as JSON).
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from hbt.corpus import Document, document_from_row, read_corpus
from hbt.errors import DataError

ROWS_PER_BLOCK = 4096


def is_parquet(path: str) -> bool:
    return path.endswith(".parquet")


class CorpusSource(FileBasedDatasource):
    """Corpus files read by Ray Data: each file streamed by one read task, in blocks of documents."""

    def __init__(self, paths: str | list[str], skip_invalid: bool = False, filesystem=None):
        super().__init__(paths, filesystem=filesystem)
        self.skip_invalid = skip_invalid

    def fingerprint(self) -> str:
        """Identifies the corpus without reading it: each file's path, size and modification time."""
        files = self._filesystem.get_file_info(self._paths())
        listing = [[f.path, f.size, f.mtime_ns] for f in sorted(files, key=lambda f: f.path)]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()

    def resolve_compression(self, path: str, open_args: dict) -> None:
        return None  # hbt's reader gunzips by gzip's magic number, whatever the file's name, as a local build does

    def _open_input_source(self, filesystem, path: str, **open_args):
        if is_parquet(path):
            return filesystem.open_input_file(path)  # Parquet needs random access
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        documents = (self._parquet_documents(f, path) if is_parquet(path)
                     else read_corpus(path, self.skip_invalid, stream=f))
        block: list[Document] = []
        for doc in documents:
            block.append(doc)
            if len(block) == ROWS_PER_BLOCK:
                yield _table(block)
                block = []
        if block:
            yield _table(block)

    def _parquet_documents(self, f: pa.NativeFile, path: str) -> Iterator[Document]:
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_BLOCK):
            for row in batch.to_pylist():
                number += 1
                try:
                    doc = document_from_row(row)
                except ValueError as e:
                    if self.skip_invalid:
                        continue
                    raise DataError(f"{path}: row {number}: {e}; fix the row or pass --skip-invalid") from e
                yield doc


def _table(docs: list[Document]) -> pa.Table:
    return pa.table({"id": [d.id for d in docs], "text": [d.text for d in docs], "title": [d.title for d in docs],
                     "lang": [d.lang for d in docs],
                     "meta": [json.dumps(d.meta, ensure_ascii=False) for d in docs]})


def batch_documents(batch: dict[str, np.ndarray], rows: Iterable[int]) -> list[Document]:
    """Rows of a numpy batch of the dataset, back as the documents they were read as."""
    return [Document(str(batch["id"][i]), str(batch["text"][i]), str(batch["title"][i]), str(batch["lang"][i]),
                     json.loads(batch["meta"][i])) for i in rows]
