"""The scan cache under many language filters: memory a reader keeps, and query time, over distinct subsets.

``python -m hbt.bench.language_subsets [--documents N] [--languages L] [--dimension D]``: random
unit vectors, L languages of equal share, one segment; every 2- and 3-language subset is asked
twice (the second pass reads the cache). Retained memory is what tracemalloc sees numpy keep
after the passes (the graph, in hnswlib's own memory, is not counted). Issue 21 measured a
cache keyed by subset at 1,170 MiB here; keyed by language it holds one copy of the vectors.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from hbt.corpus import Document
from hbt.index import Index, IndexConfig, build_index


class RandomVectors:
    """A stand-in encoder: seeded random unit vectors, whatever the texts."""

    def __init__(self, dimension: int):
        self.dimension, self.rng = dimension, np.random.default_rng(0)
        self.bundle_dir = Path("bench-random-vectors")
        self.manifest = SimpleNamespace(fingerprint="bench-random-vectors")

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        vectors = self.rng.standard_normal((len(texts), self.dimension)).astype(np.float32)  # [n, d]
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    encode_queries = encode_passages


def run(documents: int, languages: int, dimension: int) -> dict:
    names = [f"l{i:02d}" for i in range(languages)]
    encoder = RandomVectors(dimension)
    with tempfile.TemporaryDirectory() as scratch:
        corpus = (Document(f"d{i}", f"text {i}", lang=names[i % languages]) for i in range(documents))
        build_index(corpus, encoder, Path(scratch) / "index", IndexConfig(M=16, ef_construction=64))
        index = Index(Path(scratch) / "index")
        query = encoder.encode_queries(["probe"])
        subsets = [combo for size in (2, 3) for combo in itertools.combinations(names, size)]
        tracemalloc.start()
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        passes = []
        for _ in range(2):
            began = time.perf_counter()
            for subset in subsets:
                index.search(query, 10, langs=subset)
            passes.append((time.perf_counter() - began) / len(subsets) * 1e3)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - start
        tracemalloc.stop()
        index.close()
    return {"subsets": len(subsets), "retained_mib": retained / 2**20,
            "vectors_mib": documents * dimension * 4 / 2**20, "first_pass_ms": passes[0], "second_pass_ms": passes[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=12_000)
    parser.add_argument("--languages", type=int, default=12)
    parser.add_argument("--dimension", type=int, default=384)
    args = parser.parse_args()
    result = run(args.documents, args.languages, args.dimension)
    print(f"{result['subsets']} subsets: retained {result['retained_mib']:.1f} MiB (the vectors: "
          f"{result['vectors_mib']:.1f} MiB); {result['first_pass_ms']:.2f} ms/query first pass, "
          f"{result['second_pass_ms']:.2f} ms/query from the cache (under tracemalloc)")


if __name__ == "__main__":
    main()
