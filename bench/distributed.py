"""Beyond one machine: a --ray build against a local build, encoder actors 1 to 8, search on actor-held segments.

    python -m hbt.bench.distributed --bundle INT8 [--documents 6000] [--actors 1,2,4,8] [--out DIR]

Real candidate sentences (XQuAD-R and MLQA-R, seeded) as the corpus, indexed in four
segments. Passages/s count the whole build: reading, embedding, graphs, the commit (and
for Ray the planning pass, the actor pool's start and the shuffle); the local cluster's
own start is timed apart. Local and Ray builds alternate, best of two each. Search latency is one query at a time (already encoded):
search and document fetch, local and with the segments held by 1, 2 and 4 actors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from hbt.bench.reports import environment, write_report
from hbt.lareqa import raw_texts


def write_corpus(path: Path, sentences: list[str]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"id": f"s{i}", "text": text}, ensure_ascii=False) + "\n"
                          for i, text in enumerate(sentences))
    return path


def timed(build) -> float:
    start = time.perf_counter()
    build()
    return time.perf_counter() - start


def latency_ms(searcher, vectors: np.ndarray) -> dict:
    """Median and p90 milliseconds of one query's search and fetch, after a warm-up query."""
    searcher.run_vectors(vectors[:1])
    times = []
    for vector in vectors:
        start = time.perf_counter()
        searcher.run_vectors(vector[None, :], k=10)
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90))}


def cpu_model() -> str:
    """The CPU's model name (Linux), which platform.processor() leaves empty."""
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "unknown")


def markdown(results: dict) -> str:
    env, builds = results["environment"], results["builds"]
    local = builds["local"]["passages_per_s"]
    lines = [
        "# Beyond one machine: Ray builds and search", "",
        f"{results['cpu_model']}, {env['cores']} CPUs, {results['documents']} real sentences in {results['segments']} "
        f"segments, bundle {env['bundle']['source']} ({env['bundle']['quantization']}), ray {results['ray']}. "
        f"A local Ray cluster started in {results['cluster_start_s']:.1f} s (not counted below). Load average "
        f"{results['load_average'][0]:.1f} at the start, {results['load_average'][-1]:.1f} at the end "
        "(other jobs shared the CPUs).", "",
        f"`python -m hbt.bench.distributed --bundle INT8 --documents {results['documents']}`", "", "## Builds", "",
        "| build | actors × threads | seconds | passages/s | vs local |", "|---|---|---|---|---|",
    ]
    for name, row in builds.items():
        lines.append(f"| {name} | {row['actors']} × {row['threads']} | {row['seconds']:.1f} | "
                     f"{row['passages_per_s']:.1f} | {row['passages_per_s'] / local:.2f} |")
    scaling = {row["actors"]: row["passages_per_s"] for name, row in builds.items() if name.startswith("ray, ")}
    if 1 in scaling:
        lines += ["", "Parallel efficiency (passages/s over actors × one actor's): " + ", ".join(
            f"{k} actors {v / (k * scaling[1]):.2f}" for k, v in sorted(scaling.items())) + "."]
        if env["cores"] < 16:
            lines += [f"With {env['cores']} CPUs, actors beyond {env['cores']} share the same cores: this "
                      "measures the pool's overhead, not the 16-core scaling (0.8 efficiency at 8 actors), "
                      "which needs a machine with 16 cores."]
    lines += ["", "## Search (one query at a time, k 10: search and document fetch)", "",
              "| segments held by | p50 ms | p90 ms |", "|---|---|---|"]
    for name, row in results["search"].items():
        lines.append(f"| {name} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--documents", type=int, default=6000, show_default=True)
@click.option("--actors", default="1,2,4,8", show_default=True, help="Encoder actor counts (one thread each).")
@click.option("--queries", type=int, default=200, show_default=True)
@click.option("--rounds", type=int, default=2, show_default=True, help="Local and Ray builds, alternating.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/reports/distributed"), show_default=True)
def main(bundle, data_dir, documents, actors, queries, rounds, out):
    import ray

    from hbt.corpus import read_corpus
    from hbt.distributed.build import build_index_on_ray
    from hbt.distributed.search import RayIndex
    from hbt.encoder import Encoder
    from hbt.index import Index, IndexConfig, build_index
    from hbt.search import Searcher

    sentences, _ = raw_texts(data_dir, ("xquad-r", "mlqa-r"))
    chosen = np.random.default_rng(0).permutation(len(sentences))[: documents + queries]
    work = Path(tempfile.mkdtemp(prefix="hbt-bench-distributed-"))
    corpus = write_corpus(work / "corpus.jsonl", [sentences[i] for i in chosen[:documents]])
    config = IndexConfig(segment_size=-(-documents // 4), threads=2)
    cores = os.cpu_count()
    builds = {}

    def record(name, seconds, actor_count, threads):
        builds[name] = {"seconds": seconds, "passages_per_s": documents / seconds, "actors": actor_count,
                        "threads": threads}
        click.echo(f"{name:<24} {seconds:7.1f} s {documents / seconds:8.1f} passages/s")

    encoder = Encoder(bundle, threads=2)
    load = [os.getloadavg()[0]]
    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    cluster_start = time.perf_counter() - start
    try:
        # Local and Ray builds alternate, best of `rounds` each: this host's speed drifts from minute to minute.
        local, on_ray = [], []
        for _ in range(rounds):
            for name in ("local", "ray"):
                shutil.rmtree(work / name, ignore_errors=True)
            local.append(timed(lambda: build_index(read_corpus(corpus), encoder, work / "local", config)))
            on_ray.append(timed(lambda: build_index_on_ray(str(corpus), bundle, work / "ray", config)))
        record("local", min(local), "-", 2)
        record("ray (default pool)", min(on_ray), 1, 2)
        for count in [int(a) for a in actors.split(",")]:
            shutil.rmtree(work / "ray")
            threaded = IndexConfig(segment_size=config.segment_size, threads=1)
            record(f"ray, {count} actors", timed(lambda: build_index_on_ray(
                str(corpus), bundle, work / "ray", threaded, actors=count)), count, 1)
        query_vectors = encoder.encode_queries([sentences[i] for i in chosen[documents:]])
        search = {"local (this process)": latency_ms(Searcher(encoder, Index(work / "local")), query_vectors)}
        for groups in (1, 2, 4):
            held = RayIndex(work / "local", groups)
            search[f"{groups} Ray actor(s)"] = latency_ms(Searcher(encoder, held), query_vectors)
            held.close()
        for name, row in search.items():
            click.echo(f"search, {name:<22} p50 {row['p50_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms")
        load.append(os.getloadavg()[0])
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    results = {"environment": environment(encoder.manifest, []), "cpu_model": cpu_model(), "ray": ray.__version__, "documents": documents,
               "segments": 4, "cluster_start_s": cluster_start, "load_average": load, "builds": builds, "search": search}
    write_report(results, out, markdown(results), plots=lambda results, out: None)
    click.echo(markdown(results))


if __name__ == "__main__":
    main()
