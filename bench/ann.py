"""Approximate search: hnswlib beside faiss IndexHNSWFlat, and exact numpy search, on real embeddings.

    python -m hbt.bench.ann --bundle B [--scale 1000000] [--out bench/reports/ann]

The vectors are the bundle's embeddings of every XQuAD-R and MLQA-R candidate
sentence (about 34,000), the queries a seeded sample of their questions; both are
cached beside --out, so reruns skip the encoding. ``--scale N`` grows the set to N
vectors with randomly rotated, noised copies of the real ones (a hard, clustered
set, unlike uniform noise). For each M and ef, both libraries report recall@10
against exact search, queries/second one query at a time on one thread and batched
on all threads, build time and bytes per vector. hnswlib is built as hbt-index
builds it, in shuffled batches (``hbt.index.add_in_batches``); faiss as its users do.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from hbt.index import IndexConfig, add_in_batches, new_graph
from hbt.lareqa import raw_texts

K = 10


def real_vectors(bundle: Path, data_dir: Path, cache: Path, queries: int) -> tuple[np.ndarray, np.ndarray]:
    if (cache / "passages.npy").exists():
        return np.load(cache / "passages.npy"), np.load(cache / "queries.npy")
    from hbt.encoder import Encoder

    sentences, questions = raw_texts(data_dir, ("xquad-r", "mlqa-r"))
    chosen = np.random.default_rng(0).choice(len(questions), size=min(queries, len(questions)), replace=False)
    encoder = Encoder(bundle)
    cache.mkdir(parents=True, exist_ok=True)
    passages = encoder.encode_passages(sentences)
    query_vectors = encoder.encode_queries([questions[i] for i in chosen])
    np.save(cache / "passages.npy", passages)
    np.save(cache / "queries.npy", query_vectors)
    return passages, query_vectors


def grow(vectors: np.ndarray, size: int, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """The real vectors plus rotated, noised copies up to ``size`` rows, unit length."""
    rng = np.random.default_rng(seed)
    parts, total = [vectors], len(vectors)
    while total < size:
        rotation, _ = np.linalg.qr(rng.normal(size=(vectors.shape[1],) * 2))
        copy = vectors[: size - total] @ rotation.astype(np.float32)
        copy += noise * rng.normal(size=copy.shape).astype(np.float32) / np.sqrt(vectors.shape[1])
        parts.append(copy)
        total += len(copy)
    out = np.vstack(parts).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def exact_top_k(passages: np.ndarray, queries: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Exact top K by inner product, best first, in chunks of queries (one matrix product each)."""
    from hbt.retrieval import retrieve

    return np.vstack([retrieve(queries[i : i + chunk], passages, K) for i in range(0, len(queries), chunk)])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def qps_loop(search_one, queries: np.ndarray) -> float:
    start = time.perf_counter()
    for q in queries:
        search_one(q[None])
    return len(queries) / (time.perf_counter() - start)


def qps_batched(search_all, queries: np.ndarray) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    found = search_all(queries)
    return len(queries) / (time.perf_counter() - start), found


def bench_hnswlib(passages, queries, truth, M: int, ef_construction: int, efs: list[int], threads: int) -> list[dict]:
    start = time.perf_counter()
    index = new_graph(passages.shape[1], len(passages), IndexConfig(M=M, ef_construction=ef_construction))
    add_in_batches(index, passages, threads)
    build = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as scratch:
        index.save_index(f"{scratch}/index.bin")
        size = os.path.getsize(f"{scratch}/index.bin")
    rows = []
    for ef in efs:
        index.set_ef(ef)
        loop = qps_loop(lambda q: index.knn_query(q, k=K, num_threads=1), queries)
        batched, found = qps_batched(lambda q: index.knn_query(q, k=K, num_threads=threads)[0], queries)
        rows.append({"library": "hnswlib", "M": M, "efc": ef_construction, "ef": ef, "recall@10": recall(found, truth),
                     "qps_loop": loop, "qps_batched": batched, "build_s": build, "bytes_per_vector": size / len(passages)})
    return rows


def bench_faiss(passages, queries, truth, M: int, ef_construction: int, efs: list[int], threads: int) -> list[dict]:
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(passages.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    start = time.perf_counter()
    index.add(passages)
    build = time.perf_counter() - start
    size = len(faiss.serialize_index(index))
    rows = []
    for ef in efs:
        index.hnsw.efSearch = ef
        faiss.omp_set_num_threads(1)
        loop = qps_loop(lambda q: index.search(q, K), queries)
        faiss.omp_set_num_threads(threads)
        batched, found = qps_batched(lambda q: index.search(q, K)[1], queries)
        rows.append({"library": "faiss", "M": M, "efc": ef_construction, "ef": ef, "recall@10": recall(found, truth),
                     "qps_loop": loop, "qps_batched": batched, "build_s": build, "bytes_per_vector": size / len(passages)})
    return rows


LIBRARIES = {"hnswlib": bench_hnswlib, "faiss": bench_faiss}


def bench_exact(passages, queries) -> dict:
    loop = qps_loop(lambda q: exact_top_k(passages, q), queries)
    batched, _ = qps_batched(lambda q: exact_top_k(passages, q), queries)
    return {"library": "numpy exact", "M": "", "efc": "", "ef": "", "recall@10": 1.0, "qps_loop": loop,
            "qps_batched": batched, "build_s": 0.0, "bytes_per_vector": passages.shape[1] * 4}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Approximate search: {meta['vectors']:,} vectors, {meta['queries']} queries", "",
             f"{meta['source']}. Recall@10 against exact search; loop = one query at a time on one thread; "
             f"batched = all queries in one call on {meta['threads']} threads; build on {meta['threads']} threads; "
             "efc = ef_construction.", "",
             "| index | M | efc | ef | recall@10 | QPS loop | QPS batched | build s | bytes/vector |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['library']} | {r['M']} | {r['efc']} | {r['ef']} | {r['recall@10']:.3f} | {r['qps_loop']:,.0f} | "
              f"{r['qps_batched']:,.0f} | {r['build_s']:.1f} | {r['bytes_per_vector']:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--scale", type=int, default=0, help="Grow to this many vectors (0: the real set only).")
@click.option("--M", "ms", default="16,32", show_default=True)
@click.option("--ef-construction", "efcs", default="200", show_default=True)
@click.option("--ef", "efs", default="16,32,64,128,256", show_default=True)
@click.option("--libraries", default="hnswlib,faiss", show_default=True)
@click.option("--queries", default=2000, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/reports/ann"), show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=Path("runs/ann-cache"), show_default=True)
def main(bundle, data_dir, scale, ms, efcs, efs, libraries, queries, threads, out, cache):
    passages, query_vectors = real_vectors(bundle, data_dir, cache, queries)
    source = f"{len(passages):,} real XQuAD-R + MLQA-R candidate embeddings ({Path(bundle).name})"
    if scale > len(passages):
        passages = grow(passages, scale)
        source += f", grown to {scale:,} with rotated, noised copies"
    truth = exact_top_k(passages, query_vectors)
    rows = [bench_exact(passages, query_vectors)] if len(passages) <= 200_000 else []
    ef_list = [int(e) for e in efs.split(",")]
    for M, ef_construction in itertools.product(map(int, ms.split(",")), map(int, efcs.split(","))):
        for library in (LIBRARIES[name] for name in libraries.split(",")):
            rows += library(passages, query_vectors, truth, M, ef_construction, ef_list, threads)
            click.echo(markdown(rows, {"vectors": len(passages), "queries": len(query_vectors),
                                       "source": source, "threads": threads}).splitlines()[-1])
    meta = {"vectors": len(passages), "queries": len(query_vectors), "source": source, "threads": threads}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "report.md").write_text(markdown(rows, meta))
    click.echo(markdown(rows, meta))


if __name__ == "__main__":
    main()
