"""Latency and throughput of the inference path: encode, index build, search, end to end, memory.

Called by ``hbt-bench latency``. Texts are real when the shared data is there (XQuAD-R
and MLQA-R candidate sentences as passages, XQuAD-R questions in every language as
queries) and the bundled demo corpus otherwise, so the command runs anywhere.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from hbt.bench.encode_speed import sample_questions, sample_sentences, throughput
from hbt.corpus import Document, read_corpus
from hbt.demo import DEMO_CORPUS, QUESTIONS
from hbt.encoder import Encoder
from hbt.index import Index, IndexConfig, build_index
from hbt.search import Searcher


def workload(data_dir: Path | None, num_queries: int, num_passages: int) -> tuple[str, list[Document], list[str]]:
    """(source, passages, queries): real data when present, else the demo corpus and questions."""
    if data_dir and (data_dir / "xquad-r").is_dir() and (data_dir / "mlqa-r").is_dir():
        texts = sample_sentences(data_dir, num_passages)
        return ("XQuAD-R/MLQA-R", [Document(f"s{i}", t) for i, t in enumerate(texts)],
                sample_questions(data_dir, num_queries))
    questions = [q for q, _ in QUESTIONS]
    repeated = questions * (num_queries // len(questions) + 1)
    return "demo corpus", list(read_corpus(DEMO_CORPUS)), repeated[:num_queries]


def milliseconds(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "qps": float(1000 / ms.mean())}


def timed(function: Callable, items: list) -> list[float]:
    out = []
    for item in items:
        start = time.perf_counter()
        function(item)
        out.append(time.perf_counter() - start)
    return out


def measure(bundle: Path, index_dir: Path | None = None, data_dir: Path | None = None, num_queries: int = 500,
            num_passages: int = 2000, k: int = 10, threads: int | None = None,
            progress: Callable[[str], None] = lambda step: None, runtime: str = "onnxruntime") -> dict:
    encoder = Encoder(bundle, threads=threads, runtime=runtime)
    source, docs, questions = workload(data_dir, num_queries, num_passages)
    texts = [encoder.manifest.passage_prefix + d.text for d in docs][:512]
    results = {"workload": {"source": source, "passages": len(docs), "queries": len(questions), "k": k,
                            "threads": encoder.threads, "runtime": runtime}}
    progress("encoding")
    results["encode"] = {"batch_1_texts_per_second": throughput(encoder.encode, texts[:64], 1)[0],
                         "batch_32_texts_per_second": throughput(encoder.encode, texts, 32)[0]}
    with tempfile.TemporaryDirectory() as scratch:
        if index_dir is None:
            progress("building an index")
            start = time.perf_counter()
            manifest = build_index(docs, encoder, Path(scratch) / "index", IndexConfig(threads=threads or 0))
            results["index_build"] = {"documents": manifest.count,
                                      "passages_per_second": manifest.count / (time.perf_counter() - start)}
            index_dir = Path(scratch) / "index"
        index = Index(index_dir)
        searcher = Searcher(encoder, index)
        progress("searching")
        vectors = encoder.encode_queries(questions)
        results["search"] = milliseconds(timed(lambda v: index.search(v[None], k), list(vectors)))
        start = time.perf_counter()
        index.search(vectors, k)
        results["search"]["batched_qps"] = len(vectors) / (time.perf_counter() - start)
        keys = index.search(vectors, k).keys
        results["stages_mean_ms"] = {
            "tokenize": milliseconds(timed(lambda q: encoder.tokenizer.encode([q], 512), questions))["mean_ms"],
            "encode": milliseconds(timed(lambda q: encoder.encode_queries([q]), questions))["mean_ms"],
            "search": results["search"]["mean_ms"],
            "fetch": milliseconds(timed(index.documents, list(keys)))["mean_ms"],
        }
        progress("end to end")
        end_to_end = timed(lambda q: searcher.search([q], k), questions)
        results["end_to_end"] = milliseconds(end_to_end) | {"seconds": end_to_end}
    results["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def markdown(results: dict, title: str) -> str:
    w, e2e, search = results["workload"], results["end_to_end"], results["search"]
    lines = [f"# {title}", "", f"{w['queries']} queries, {w['passages']} passages from the {w['source']}, "
             f"k = {w['k']}, {w['threads']} threads.", "", "| measure | value |", "|---|---|",
             f"| encode, batch 1 | {results['encode']['batch_1_texts_per_second']:.1f} texts/s |",
             f"| encode, batch 32 | {results['encode']['batch_32_texts_per_second']:.1f} texts/s |"]
    if "index_build" in results:
        lines.append(f"| index build | {results['index_build']['passages_per_second']:.1f} passages/s |")
    lines += [f"| search p50 / p99 | {search['p50_ms']:.3f} / {search['p99_ms']:.3f} ms |",
              f"| search QPS, one at a time / batched | {search['qps']:.0f} / {search['batched_qps']:.0f} |",
              f"| end to end p50 / p99 | {e2e['p50_ms']:.2f} / {e2e['p99_ms']:.2f} ms |",
              f"| peak memory | {results['peak_memory_mib']:.0f} MiB |", "",
              "End to end is one query: tokenize, encode, search and fetch the documents from SQLite.",
              "Mean per stage (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in results["stages_mean_ms"].items()),
              "", "![latency](latency.png)", ""]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = np.array(results["end_to_end"]["seconds"]) * 1000
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.hist(ms, bins=50, color="tab:blue")
    for name, color in (("p50", "black"), ("p99", "tab:red")):
        value = results["end_to_end"][f"{name}_ms"]
        ax.axvline(value, color=color, linestyle="--", label=f"{name} {value:.2f} ms")
    ax.set_xlabel("end-to-end query latency (ms)")
    ax.set_ylabel("queries")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)
