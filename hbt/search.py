"""Search: a query encoder over an index, with ranked hits and TREC run output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

from hbt.errors import SearchIndexError
from hbt.index import Index


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    id: str
    lang: str
    text: str
    title: str


class Searcher:
    """Answers queries in any language with the documents nearest to them."""

    def __init__(self, encoder, index: Index):
        if encoder.manifest.fingerprint != index.manifest["bundle"]["fingerprint"]:
            raise SearchIndexError(
                f"{index.directory}: built with another bundle ({index.manifest['bundle']['path']}); "
                f"{encoder.bundle_dir} would give incomparable vectors. Use that bundle or rebuild the index"
            )
        self.encoder = encoder
        self.index = index

    @classmethod
    def open(cls, index_dir: Path | str, bundle: Path | str | None = None, threads: int | None = None) -> "Searcher":
        """Open an index and the bundle named in its manifest (or ``bundle``)."""
        from hbt.encoder import Encoder

        index = Index(index_dir)
        return cls(Encoder(bundle or index.manifest["bundle"]["path"], threads=threads), index)

    def search(self, queries: list[str], k: int = 10, ef: int | None = None,
               langs: Iterable[str] | None = None) -> list[list[Hit]]:
        vectors = self.encoder.encode_queries(queries)
        labels, scores = self.index.search(vectors, k, ef, langs)
        documents = self.index.documents({int(label) for label in labels.ravel()})
        results = []
        for row_labels, row_scores in zip(labels, scores):
            # Deterministic order: score, then document id.
            ranked = sorted(zip(row_scores, row_labels), key=lambda pair: (-float(pair[0]), documents[pair[1]].id))
            results.append([
                Hit(rank, float(score), documents[label].id, documents[label].lang,
                    documents[label].text, documents[label].title)
                for rank, (score, label) in enumerate(ranked, start=1)
            ])
        return results


def write_trec_run(out: TextIO, query_ids: list[str], results: list[list[Hit]], tag: str = "hbt") -> None:
    """TREC run lines: qid Q0 docid rank score tag."""
    for qid, hits in zip(query_ids, results):
        for hit in hits:
            out.write(f"{qid} Q0 {hit.id} {hit.rank} {hit.score:.6f} {tag}\n")
