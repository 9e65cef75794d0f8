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
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np

from hbt.corpus import Document
from hbt.machine import cpu_model

SHARES = {"l50": 0.5, "l10": 0.1, "l1": 0.01, "l01": 0.001}  # the rest is "other"
FILTERS = {f"{share:.1%}": [lang] for lang, share in SHARES.items()} | {"10% + 1%": ["l10", "l1"]}
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
    return interleaved({"one": function}, queries)["one"]


def interleaved(functions: dict, queries: np.ndarray) -> dict[str, dict]:
    """Each function's latencies, one query at a time, the functions taking turns on each query: on a shared
    machine the neighbours' load then weighs on all of them alike, and their ratios hold."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for query in queries:
        for name, function in functions.items():
            start = time.perf_counter()
            function(query[None])
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99)),
                   "qps": len(t) / (sum(t) / 1e3)} for name, t in times.items()}


class Stopwatch:
    """Wraps a function to add up the seconds spent in it (the language graphs' share of a build)."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


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
    from hbt.index import language_graphs
    from hbt.index.graph import load_graph

    results = {"documents": size, "segment_size": segment_size, "rss_before_build_mib": peak_rss_mib()}
    config = IndexConfig(M=32, ef_construction=200, segment_size=segment_size)
    # The same build without language graphs is this one less the time spent writing them.
    stopwatch = language_graphs.write_language_graphs = Stopwatch(language_graphs.write_language_graphs)
    seconds, _ = timed(lambda: build_index(corpus(size, sentences), VectorFeed(vectors_file, dimension),
                                           directory, config))
    graphs = sum(p.stat().st_size for p in directory.glob("seg-*/graph.hnsw"))
    language = sum(p.stat().st_size for p in directory.glob("seg-*/lang-*.hnsw"))
    results |= {"build_seconds": seconds, "build_vectors_per_second": size / seconds,
                "peak_rss_build_mib": peak_rss_mib(), "graph_mib": graphs / 2**20,
                "language_graphs": {"seconds": stopwatch.seconds, "mib": language / 2**20,
                                    "build_time_overhead": stopwatch.seconds / (seconds - stopwatch.seconds),
                                    "memory_overhead": language / graphs},
                "disk_bytes_per_document": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / size}
    results["open_ms"], index = timed(lambda: Index(directory))
    results["open_ms"] *= 1e3
    results["planner_costs"] = index.costs.describe()
    results["language_graphs"]["per_segment"] = {e.name: sorted(e.language_graphs) for e in index.manifest.segments}
    read_ms, _ = timed(lambda: [p.read_bytes() for p in directory.glob("seg-*/graph.hnsw")])
    load_ms, _ = timed(lambda: [load_graph(p, dimension, e.count) for p, e in (
        (directory / e.name / "graph.hnsw", e) for e in index.manifest.segments)])
    results["read_graphs_ms"], results["load_graphs_ms"] = read_ms * 1e3, load_ms * 1e3
    probe = queries[:200]
    filters = {"unfiltered": None} | FILTERS
    for langs in filters.values():  # warm: exact scans keep their blocks of vectors after the first query
        index.search(queries[:2], K, langs=langs)
    # Unfiltered and each filter take turns on every query, so their ratios share the machine's load.
    timings = interleaved({name: (lambda q, langs=langs: index.search(q, K, langs=langs))
                           for name, langs in filters.items()}, queries)
    results["unfiltered"] = timings["unfiltered"]
    results["unfiltered"]["recall_at_10"] = overlap(index.search(probe, K).keys, index.search(probe, K, exact=True).keys)
    results["filtered"] = {}
    for name, langs in FILTERS.items():
        figures = timings[name]
        figures["recall_at_10"] = overlap(index.search(probe, K, langs=langs).keys,
                                          index.search(probe, K, langs=langs, exact=True).keys)
        figures["plan"] = index.search(queries[:1], K, langs=langs).plans[0]
        figures["p50_vs_unfiltered"] = figures["p50_ms"] / results["unfiltered"]["p50_ms"]
        results["filtered"][name] = figures
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


SEGMENT_VARIANTS = {  # name: (segments, baseline it is compared with at equal recall)
    "1": (1, None), "4 sequential": (4, "1"), "4 parallel": (4, "1"),
    "1 bare": (1, None), "4 bare": (4, "1 bare")}


def segments_against_one_graph(vectors_file: Path, dimension: int, queries: np.ndarray, sentences: list[str],
                               size: int, scratch: Path) -> dict:
    """Recall and queries/s of one graph and of 4 segments over a range of ef, each query timed in turns (compare
    at equal recall): through ``Index.search`` (4 segments one after another, and side by side on the cores), and
    as bare hnswlib calls merged by numpy, which tells HNSW's own cost of four graphs from hbt's per-segment work."""
    from hbt.index import Index, IndexConfig, build_index, document_key
    from hbt.index import fanout

    indexes = {}
    for segments in (1, 4):
        directory = scratch / f"segments-{segments}"
        build_index(corpus(size, sentences), VectorFeed(vectors_file, dimension), directory,
                    IndexConfig(M=32, ef_construction=200, segment_size=-(-size // segments)))
        indexes[segments] = Index(directory)
    truth = {segments: index.search(queries[:200], K, exact=True).keys for segments, index in indexes.items()}
    cores = len(os.sched_getaffinity(0))

    def through_index(index, workers: int):
        def search(q, ef):
            fanout.WORKERS = workers
            return index.search(q, K, ef=ef)
        return search

    def bare(index):
        graphs = [view.segment.graph for view in index.segments]

        def search(q, ef):
            keys, distances = [], []
            for position, graph in enumerate(graphs):
                graph.set_ef(ef)
                labels, found = graph.knn_query(q, k=K)
                keys.append(document_key(position, labels.astype(np.int64)))
                distances.append(found)
            keys, distances = np.hstack(keys), np.hstack(distances)
            best = np.argsort(distances, axis=1, kind="stable")[:, :K]
            return SimpleNamespace(keys=np.take_along_axis(keys, best, 1))
        return search

    variants = {"1": through_index(indexes[1], cores), "4 sequential": through_index(indexes[4], 1),
                "4 parallel": through_index(indexes[4], cores), "1 bare": bare(indexes[1]), "4 bare": bare(indexes[4])}
    curves: dict[str, list] = {name: [] for name in variants}
    for ef in (16, 32, 64, 128, 256):
        timings = interleaved({name: (lambda q, search=search: search(q, ef)) for name, search in variants.items()},
                              queries)
        for name, search in variants.items():
            # Queries/s as 1 / p50: on a shared machine the mean is the neighbours' stalls.
            recall = overlap(search(queries[:200], ef).keys, truth[SEGMENT_VARIANTS[name][0]])
            curves[name].append({"ef": ef, "recall_at_10": recall, "qps": 1e3 / timings[name]["p50_ms"]})
    fanout.WORKERS = 1
    return {"documents": size, "cores": cores, "curves": curves, "at_equal_recall": equal_recall(curves)}


def lower_bound(vectors_file: Path, dimension: int, queries: np.ndarray) -> dict:
    """Where a language's own graph starts to beat an exact scan of its vectors: both timed in turns at several
    language sizes (ef 128, M 32, k 10), beside the bound the planner's measured costs give."""
    from hbt.index import IndexConfig, add_in_batches, new_graph
    from hbt.index.calibrate import measure_costs
    from hbt.index.planner import exact_scores

    rows = {}
    vectors = np.fromfile(vectors_file, dtype=np.float32, count=32_000 * dimension).reshape(-1, dimension)
    for documents in (1_000, 4_000, 16_000, 32_000):
        block = np.ascontiguousarray(vectors[:documents])
        graph = new_graph(dimension, documents, IndexConfig())
        add_in_batches(graph, block)
        graph.set_ef(128)
        timings = interleaved({"exact": lambda q: np.argpartition(-exact_scores(q, block), K, axis=1)[:, :K],
                               "graph": lambda q: graph.knn_query(q, k=K)}, queries[:300])
        rows[documents] = {name: t["p50_ms"] for name, t in timings.items()}
    costs = measure_costs(graph, dimension)
    return {"p50_ms": rows, "planner_lower_bound": 128 * costs.beam / costs.exact, "costs": costs.describe()}


def frontier(curve: list[dict]) -> list[dict]:
    """The points of an ef curve that raise recall: a wider beam at the same recall only costs time."""
    kept: list[dict] = []
    for point in sorted(curve, key=lambda p: p["ef"]):
        if not kept or point["recall_at_10"] > kept[-1]["recall_at_10"]:
            kept.append(point)
    return kept


def equal_recall(curves: dict[str, list]) -> dict[str, dict]:
    """Each 4-segment variant's queries/s against its one-graph baseline's at the same recall@10 (the baseline's
    QPS interpolated on its recall frontier), at each of the variant's frontier points in the baseline's range."""
    ratios = {}
    for name, (_, baseline) in SEGMENT_VARIANTS.items():
        if baseline is None or name not in curves:
            continue
        one = frontier(curves[baseline])
        recalls, qps = np.array([p["recall_at_10"] for p in one]), np.array([p["qps"] for p in one])
        ratios[name] = {f"{p['recall_at_10']:.3f}": p["qps"] / float(np.interp(p["recall_at_10"], recalls, qps))
                        for p in frontier(curves[name]) if recalls[0] <= p["recall_at_10"] <= recalls[-1]}
    return ratios


def markdown(runs: list[dict], segments: dict | None, bounds: dict | None = None, machine: dict | None = None) -> str:
    where = (f" {machine['cpu']}, {machine['cores']} cores, load average (1, 5, 15 min) "
             f"{', '.join(f'{x:.1f}' for x in machine['load_average_start'])} at the start and "
             f"{', '.join(f'{x:.1f}' for x in machine['load_average_end'])} at the end." if machine else "")
    lines = ["# Index at scale", "", "M 32, ef_construction 200, ef 128, k 10; real mE5-small vectors grown with "
             "rotated, noised copies; one process per size. Figures from one run on this machine:" + where, "",
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
    lines += ["", "Language graphs (``--language-graphs auto``): their build time and graph bytes against the build "
              "and the main graphs without them; planner costs measured at open:", "",
              "| documents | languages with a graph | build s (of which language graphs) | build time overhead | "
              "memory (graph bytes) overhead | planner costs |", "|---|---|---|---|---|---|"]
    for r in runs:
        g = r["language_graphs"]
        with_graphs = ", ".join(f"{name}: {'+'.join(langs) or 'none'}" for name, langs in g["per_segment"].items())
        lines.append(f"| {r['documents']:,} | {with_graphs} | {r['build_seconds']:.0f} ({g['seconds']:.0f}) | "
                     f"{g['build_time_overhead']:.1%} | {g['memory_overhead']:.1%} ({g['mib']:.0f} MiB) | "
                     f"{r['planner_costs']} |")
    lines += ["", "Filtered search (p50 / p99 ms, p50 as a multiple of unfiltered, the two measured in turns on each "
              "query; recall@10 against exact filtered search; plan):", "", "| documents | share | p50 / p99 ms | × unfiltered | recall@10 | plan |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        for share, f in r["filtered"].items():
            lines.append(f"| {r['documents']:,} | {share} | {f['p50_ms']:.2f} / {f['p99_ms']:.2f} | "
                         f"{f['p50_vs_unfiltered']:.2f} | {f['recall_at_10']:.3f} | {f['plan'].split(': ', 1)[1]} |")
    if bounds:
        lines += ["", "The lower bound: a language's own graph against an exact scan of its vectors (p50 ms, in turns; "
                  f"the planner's costs put the bound at {bounds['planner_lower_bound']:,.0f} documents):", "",
                  "| documents of the language | exact scan | its graph |", "|---|---|---|"]
        lines += [f"| {int(n):,} | {row['exact']:.2f} | {row['graph']:.2f} |" for n, row in bounds["p50_ms"].items()]
    if segments:
        curves = segments["curves"]
        titles = {"1": "1 graph", "4 sequential": "4 segments, one after another",
                  "4 parallel": f"4 segments, side by side ({segments['cores']} threads)",
                  "1 bare": "1 graph, bare hnswlib", "4 bare": "4 graphs, bare hnswlib"}
        names = [name for name in titles if name in curves]
        lines += ["", f"One graph against 4 segments at {segments['documents']:,} documents (recall@10 / queries per "
                  "second as 1 / p50 latency, one query at a time, all in turns on each query; through "
                  "``Index.search``, and as bare ``knn_query`` calls merged by numpy):", "",
                  "| ef | " + " | ".join(titles[name] for name in names) + " |", "|---" * (len(names) + 1) + "|"]
        for points in zip(*(curves[name] for name in names)):
            lines.append(f"| {points[0]['ef']} | " + " | ".join(
                f"{p['recall_at_10']:.3f} / {p['qps']:,.0f}" for p in points) + " |")
        lines += ["", "4 segments' queries/s as a multiple of one graph's at equal recall@10 (one graph's curve "
                  "interpolated; bare against bare):", ""]
        for name, ratios in segments["at_equal_recall"].items():
            lines.append(f"- {titles[name]}: " + ", ".join(f"{ratio:.2f}× at {recall}" for recall, ratio in ratios.items()))
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
        grow(passages, max(sizes + [segments_at, 32_000])).tofile(scratch / "vectors.f32")
        machine = {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "load_average_start": os.getloadavg()}
        runs, segments, bounds = [], None, None

        def write() -> None:  # after each stage, so a long run's first figures are kept
            machine["load_average_end"] = os.getloadavg()
            (out / "results.json").write_text(json.dumps({"machine": machine, "runs": runs, "segments": segments,
                                                          "bounds": bounds}, indent=2))
            (out / "report.md").write_text(markdown(runs, segments, bounds, machine))

        # The smaller sizes and the quick comparisons first, the largest size (the long one) last.
        for size in sorted(sizes)[:-1]:
            runs = measure_in_child(size, data_dir, cache, queries, segment_size, scratch, runs)
            write()
        if segments_at:
            click.echo(f"one graph against 4 segments at {segments_at:,}", err=True)
            segments = segments_against_one_graph(scratch / "vectors.f32", dimension, query_vectors, sentences,
                                                  segments_at, scratch)
        click.echo("the lower bound of the language graphs", err=True)
        bounds = lower_bound(scratch / "vectors.f32", dimension, query_vectors)
        write()
        runs = measure_in_child(max(sizes), data_dir, cache, queries, segment_size, scratch, runs)
        write()
    plot(runs, out / "costs.png")
    click.echo((out / "report.md").read_text())


def measure_in_child(size: int, data_dir: Path, cache: Path, queries: int, segment_size: int, scratch: Path,
                     runs: list[dict]) -> list[dict]:
    """``runs`` with one size's figures, measured in a process of its own (its peak RSS is that size's)."""
    click.echo(f"measuring {size:,} documents", err=True)
    child = subprocess.run([sys.executable, "-m", "hbt.bench.index_scale", "--data-dir", str(data_dir),
                            "--cache", str(cache), "--queries", str(queries), "--segment-size",
                            str(segment_size), "--one-size", str(size), "--scratch", str(scratch)],
                           check=True, capture_output=True, text=True)
    return sorted(runs + [json.loads(child.stdout.splitlines()[-1])], key=lambda run: run["documents"])


if __name__ == "__main__":
    main()
