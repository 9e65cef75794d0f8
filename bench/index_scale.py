"""The index at scale: what build, open, (filtered) search, add, delete and compact cost as N grows.

    python -m hbt.bench.index_scale --bundle B --sizes 100000,300000,1000000 --out bench/reports/index-scale

The vectors are real multilingual-e5-small embeddings of the XQuAD-R and MLQA-R
candidate sentences (cached by ``hbt.bench.ann``), grown to N with rotated, noised
copies; the documents carry those sentences as text (real lengths) and a language
drawn so that four languages hold 50%, 10%, 1% and 0.1% of the corpus. Encoding is
not timed: a stand-in encoder hands out the cached vectors. Each size runs in its own
process, so peak RSS is that size's own. The report plots every cost against N on
log-log axes: flat lines are the point of segments and the planner.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from hbt.corpus import Document

SHARES = {"l50": 0.5, "l10": 0.1, "l1": 0.01, "l01": 0.001}  # the rest is "other"
K = 10


class VectorFeed:
    """A stand-in encoder that returns the next rows of a raw float32 file, in order."""

    def __init__(self, path: Path, dimension: int):
        self.dimension, self.handle = dimension, open(path, "rb")
        self.bundle_dir = Path("bench-vectors")
        self.manifest = SimpleNamespace(fingerprint="bench-vectors")

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        return np.fromfile(self.handle, dtype=np.float32, count=len(texts) * self.dimension).reshape(len(texts), -1)


def corpus(size: int, sentences: list[str], prefix: str = "d", seed: int = 0):
    """Documents with real texts and languages at the benchmark's shares."""
    languages = np.array([*SHARES, "other"])
    chosen = np.random.default_rng(seed).choice(len(languages), size=size, p=[*SHARES.values(), 1 - sum(SHARES.values())])
    for i in range(size):
        yield Document(f"{prefix}{i}", sentences[i % len(sentences)], lang=str(languages[chosen[i]]))


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the parent's over fork and exec)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def latencies(function, queries: np.ndarray) -> dict:
    times = []
    for query in queries:
        start = time.perf_counter()
        function(query[None])
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "qps": len(times) / (sum(times) / 1e3)}


def overlap(found, truth) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth) if len(t)]))


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def measure(size: int, vectors_file: Path, dimension: int, queries: np.ndarray, sentences: list[str],
            directory: Path, segment_size: int) -> dict:
    """Every figure for one N, on an index built in ``directory``."""
    from hbt.index import Index, IndexConfig, add_documents, build_index, compact_index, delete_documents
    from hbt.index.graph import load_graph

    results = {"documents": size, "segment_size": segment_size, "rss_before_build_mib": peak_rss_mib()}
    config = IndexConfig(M=32, ef_construction=200, segment_size=segment_size)
    seconds, _ = timed(lambda: build_index(corpus(size, sentences), VectorFeed(vectors_file, dimension),
                                           directory, config))
    graphs = sum(p.stat().st_size for p in directory.glob("seg-*/graph.hnsw"))
    results |= {"build_seconds": seconds, "build_vectors_per_second": size / seconds,
                "peak_rss_build_mib": peak_rss_mib(), "graph_mib": graphs / 2**20,
                "disk_bytes_per_document": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / size}
    results["open_ms"], index = timed(lambda: Index(directory))
    results["open_ms"] *= 1e3
    read_ms, _ = timed(lambda: [p.read_bytes() for p in directory.glob("seg-*/graph.hnsw")])
    load_ms, _ = timed(lambda: [load_graph(p, dimension, e.count) for p, e in (
        (directory / e.name / "graph.hnsw", e) for e in index.manifest.segments)])
    results["read_graphs_ms"], results["load_graphs_ms"] = read_ms * 1e3, load_ms * 1e3
    probe = queries[:200]
    results["unfiltered"] = latencies(lambda q: index.search(q, K), queries)
    results["unfiltered"]["recall_at_10"] = overlap(index.search(probe, K).keys, index.search(probe, K, exact=True).keys)
    results["filtered"] = {}
    for lang, share in SHARES.items():
        figures = latencies(lambda q: index.search(q, K, langs=[lang]), queries)
        figures["recall_at_10"] = overlap(index.search(probe, K, langs=[lang]).keys,
                                          index.search(probe, K, langs=[lang], exact=True).keys)
        figures["plan"] = index.search(queries[:1], K, langs=[lang]).plans[0]
        figures["p50_vs_unfiltered"] = figures["p50_ms"] / results["unfiltered"]["p50_ms"]
        results["filtered"][f"{share:.1%}"] = figures
    large = {p: p.stat().st_mtime_ns for p in directory.glob("seg-*/*")}
    for count in (1, 1000):
        feed = VectorFeed(vectors_file, dimension)  # the first rows again, under new ids
        added = list(corpus(count, sentences, prefix=f"add{count}-", seed=count))
        results[f"add_{count}_ms"] = timed(lambda: add_documents(directory, added, feed))[0] * 1e3
        results[f"delete_{count}_ms"] = timed(lambda: delete_documents(directory, [f"d{i}" for i in range(
            count * 7, count * 8)]))[0] * 1e3
    # Tombstone files are replaced under new names; nothing that existed may change in place.
    results["existing_files_rewritten"] = sum(p.exists() and p.stat().st_mtime_ns != t for p, t in large.items())
    results["compact_seconds"] = timed(lambda: compact_index(directory))[0]
    results["peak_rss_mib"] = peak_rss_mib()
    return results


def segments_against_one_graph(vectors_file: Path, dimension: int, queries: np.ndarray, sentences: list[str],
                               size: int, scratch: Path) -> dict:
    """Recall and queries/s of one graph and of 4 segments, over a range of ef (compare at equal recall)."""
    from hbt.index import Index, IndexConfig, build_index

    curves = {}
    for segments in (1, 4):
        directory = scratch / f"segments-{segments}"
        build_index(corpus(size, sentences), VectorFeed(vectors_file, dimension), directory,
                    IndexConfig(M=32, ef_construction=200, segment_size=-(-size // segments)))
        index = Index(directory)
        truth = index.search(queries[:200], K, exact=True).keys
        curves[segments] = [{"ef": ef, "recall_at_10": overlap(index.search(queries[:200], K, ef=ef).keys, truth),
                             "qps": latencies(lambda q: index.search(q, K, ef=ef), queries)["qps"]}
                            for ef in (16, 32, 64, 128, 256)]
    return {"documents": size, "curves": {str(k): v for k, v in curves.items()}}


def markdown(runs: list[dict], segments: dict | None) -> str:
    lines = ["# Index at scale", "", "M 32, ef_construction 200, ef 128, k 10; real mE5-small vectors grown with "
             "rotated, noised copies; one process per size. Figures from one run on this machine.", "",
             "| documents | build vectors/s | open ms (hnswlib load / read of the graphs, ms) | unfiltered p50 / p99 ms | recall@10 | "
             "add 1 / 1000 ms | delete 1 / 1000 ms | compact s | disk bytes/doc | peak RSS build / graphs MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        u = r["unfiltered"]
        lines.append(f"| {r['documents']:,} | {r['build_vectors_per_second']:,.0f} | {r['open_ms']:.0f} "
                     f"({r.get('load_graphs_ms', float('nan')):.0f} / {r['read_graphs_ms']:.0f}) | {u['p50_ms']:.2f} / {u['p99_ms']:.2f} | {u['recall_at_10']:.3f} | "
                     f"{r['add_1_ms']:.0f} / {r['add_1000_ms']:.0f} | {r['delete_1_ms']:.0f} / {r['delete_1000_ms']:.0f} "
                     f"| {r['compact_seconds']:.1f} | {r['disk_bytes_per_document']:,.0f} | "
                     f"{r['peak_rss_build_mib']:,.0f} / {r['graph_mib']:,.0f} |")
    lines += ["", "Filtered search, one language (p50 / p99 ms, p50 as a multiple of unfiltered, recall@10 against "
              "exact filtered search, plan):", "", "| documents | share | p50 / p99 ms | × unfiltered | recall@10 | plan |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        for share, f in r["filtered"].items():
            lines.append(f"| {r['documents']:,} | {share} | {f['p50_ms']:.2f} / {f['p99_ms']:.2f} | "
                         f"{f['p50_vs_unfiltered']:.2f} | {f['recall_at_10']:.3f} | {f['plan'].split(': ', 1)[1]} |")
    if segments:
        lines += ["", f"One graph against 4 segments at {segments['documents']:,} documents (recall@10 / queries per "
                  "second, one query at a time):", "", "| ef | 1 graph | 4 segments |", "|---|---|---|"]
        for one, four in zip(segments["curves"]["1"], segments["curves"]["4"]):
            lines.append(f"| {one['ef']} | {one['recall_at_10']:.3f} / {one['qps']:,.0f} | "
                         f"{four['recall_at_10']:.3f} / {four['qps']:,.0f} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["documents"] for r in runs]
    series = {"open": [r["open_ms"] for r in runs], "query (unfiltered p50)": [r["unfiltered"]["p50_ms"] for r in runs],
              "add 1 document": [r["add_1_ms"] for r in runs], "delete 1 document": [r["delete_1_ms"] for r in runs]}
    for share in runs[0]["filtered"]:
        series[f"query, language {share} (p50)"] = [r["filtered"][share]["p50_ms"] for r in runs]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, values in series.items():
        axes.plot(sizes, values, marker="o", label=label)
    axes.set(xscale="log", yscale="log", xlabel="documents", ylabel="milliseconds", title="hbt index: cost against N")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


@click.command()
@click.option("--bundle", type=click.Path(path_type=Path), help="Bundle whose embeddings to cache (first run only).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=Path("bench/reports/ann-34k"), show_default=True,
              help="Where hbt.bench.ann caches the real vectors (passages.npy, queries.npy).")
@click.option("--sizes", default="100000,300000,1000000", show_default=True)
@click.option("--segment-size", type=click.IntRange(1), default=1_000_000, show_default=True)
@click.option("--segments-at", type=click.IntRange(0), default=300_000, show_default=True,
              help="Compare one graph with 4 segments at this size (0: skip).")
@click.option("--queries", type=click.IntRange(10), default=500, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/reports/index-scale"), show_default=True)
@click.option("--one-size", type=int, hidden=True)  # the per-size child process
@click.option("--scratch", type=click.Path(path_type=Path), hidden=True)
def main(bundle, data_dir, cache, sizes, segment_size, segments_at, queries, out, one_size, scratch):
    from hbt.bench.ann import grow, real_vectors
    from hbt.lareqa import raw_texts

    passages, query_vectors = real_vectors(bundle, data_dir, cache, 2000)
    query_vectors = query_vectors[:queries]
    sentences = raw_texts(data_dir, ("xquad-r", "mlqa-r"))[0]
    dimension = passages.shape[1]
    if one_size:  # child: measure one size and print its figures
        results = measure(one_size, scratch / "vectors.f32", dimension, query_vectors, sentences,
                          scratch / f"index-{one_size}", segment_size)
        print(json.dumps(results))
        return
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="index-scale-") as scratch:
        scratch = Path(scratch)
        grow(passages, max(sizes + [segments_at])).tofile(scratch / "vectors.f32")
        runs = []
        for size in sizes:  # the largest first: it matters most, and the others are quick after it
            click.echo(f"measuring {size:,} documents", err=True)
            child = subprocess.run([sys.executable, "-m", "hbt.bench.index_scale", "--data-dir", str(data_dir),
                                    "--cache", str(cache), "--queries", str(queries), "--segment-size",
                                    str(segment_size), "--one-size", str(size), "--scratch", str(scratch)],
                                   check=True, capture_output=True, text=True)
            runs = sorted(runs + [json.loads(child.stdout.splitlines()[-1])], key=lambda run: run["documents"])
            (out / "results.json").write_text(json.dumps({"runs": runs}, indent=2))
        segments = None
        if segments_at:
            click.echo(f"one graph against 4 segments at {segments_at:,}", err=True)
            segments = segments_against_one_graph(scratch / "vectors.f32", dimension, query_vectors, sentences,
                                                  segments_at, scratch)
    (out / "results.json").write_text(json.dumps({"runs": runs, "segments": segments}, indent=2))
    (out / "report.md").write_text(markdown(runs, segments))
    plot(runs, out / "costs.png")
    click.echo((out / "report.md").read_text())


if __name__ == "__main__":
    main()
