"""hbt-bench: accuracy across languages and settings, as readable reports."""

from __future__ import annotations

from pathlib import Path

import click

from hbt.cli import runtime_option, user_errors
from hbt.cli.modes import mode_options


def _default_data_dir() -> Path:
    from hbt.download import default_data_dir

    return default_data_dir()


def data_dir_option(description: str):
    return click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=_default_data_dir,
                        show_default="$HBT_DATA, else ~/.local/share/hbt", help=description)


def renamed_option(old: str, new: str, **attrs):
    """``old``, hidden, for one release after it became ``new``: still accepted, with a warning."""
    def warn(ctx, param, value):
        if value not in (None, ()):
            click.echo(f"Warning: {old} is deprecated; use {new}.", err=True)
        return value

    return click.option(old, hidden=True, callback=warn, **attrs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Measure retrieval accuracy and compare reports."""


def with_progress(encode, description: str, chunk: int = 1024):
    """``encode`` in chunks under a progress bar with texts/second: corpora can take minutes."""
    import numpy as np
    from tqdm import tqdm

    def encode_with_bar(texts):
        with tqdm(total=len(texts), desc=description, unit=" texts", dynamic_ncols=True) as bar:
            parts = []
            for start in range(0, len(texts), chunk):
                parts.append(encode(texts[start : start + chunk]))
                bar.update(len(parts[-1]))
        return np.vstack(parts)

    return encode_with_bar


def cached(encode, folder: Path | None, tag: str):
    """``encode`` whose vectors are kept in ``folder``, named by a hash of ``tag`` (bundle, runtime, side) and
    the texts, so that an evaluation run again embeds nothing it embedded before."""
    if folder is None:
        return encode
    import hashlib
    import json

    import numpy as np

    def encode_cached(texts):
        path = Path(folder) / f"{hashlib.sha256(json.dumps([tag, texts]).encode()).hexdigest()[:32]}.npy"
        if path.is_file():
            return np.load(path)
        vectors = encode(texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.partial.npy")
        np.save(partial, vectors)
        partial.replace(path)  # whole or absent, for a run stopped midway
        return vectors

    return encode_cached


@main.command()
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle made by hbt-export.")
@click.option("--dataset", required=True,
              help="xquad-r, mlqa-r (LAReQA); tatoeba (bitext retrieval); miracl, beir (corpus, queries, qrels); "
                   "mkqa (answer recall over --corpus).")
@data_dir_option("Folder holding the datasets, one subfolder each (hbt-bench download fills it).")
@click.option("--settings", default="mono,cross,multi", show_default=True,
              help="LAReQA settings, comma-separated: mono, cross, multi, x-en.")
@click.option("--lang", "langs", multiple=True, help="Only this language of the dataset (repeatable; default: all).")
@renamed_option("--languages", "--lang (once per language)")
@click.option("--sample", "share", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="LAReQA: evaluate a stable share of the qa ids (and the paragraphs holding them).")
@click.option("--split", type=click.Choice(["all", "dev", "test"]), default="all", show_default=True,
              help="mlqa-r: the frozen half by article (choose recipes on dev, report test).")
@click.option("--corpus", type=click.Path(path_type=Path), help="miracl/beir/mkqa: passages JSONL (default in the dataset folder).")
@click.option("--queries", type=click.Path(path_type=Path), help="miracl/beir: topics TSV or queries JSONL; mkqa: the MKQA JSONL.")
@click.option("--qrels", type=click.Path(path_type=Path), help="miracl/beir: TREC or BEIR qrels.")
@click.option("--ranker", type=click.Choice(["exact", "index"]), default="exact", show_default=True,
              help="exact: score every candidate; index: build hbt's index in a temporary folder and search it "
                   "(top --depth, language filters), as deployed.")
@click.option("--ef", type=click.IntRange(1), help="--ranker index: the search's ef (default: the index's, 128).")
@click.option("--depth", type=click.IntRange(1),
              help="Results counted per query: miracl/beir (default 100), and LAReQA through the index (default "
                   "1000; its exact ranker ranks every candidate).")
@renamed_option("--ann", "--ranker index", is_flag=True, default=None)
@mode_options("dense", "LAReQA: rank as hbt-search does, each pool a language filter; hybrid fuses each side's top "
                       "100, the rest in dense order. ")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the embeddings here, by bundle, runtime and texts: a rerun (another --mode) embeds nothing.")
@click.option("--out", type=click.Path(path_type=Path), help="Report directory (default reports/<dataset>-<bundle>).")
@click.option("--threads", type=click.IntRange(0), default=0, help="Encoder threads (0: all cores).")
@runtime_option("for queries and passages")
@user_errors
def accuracy(bundle, dataset, data_dir, settings, langs, languages, share, split, corpus, queries, qrels, ranker, ef,
             depth, ann, mode, lexical_weight, fusion, cache, out, threads, runtime):
    """Retrieval accuracy per setting and language, written as a report directory.

    \b
    LAReQA (xquad-r, mlqa-r): mAP, Recall@1/10/100, nDCG@10 and language bias in the
      monolingual, cross-lingual, multilingual-pool and X->English settings.
    tatoeba: P@1, mAP and LASER's error rate per language, into and from English,
      and per group of languages (in XLM-R's CC-100 or not). A test set only.
    miracl, beir: the same metrics from qrels, over --corpus.
    mkqa: Recall@20/100 (an answer's words in a top-k passage, as DPR matches) per query language.

    \b
    Example:
      hbt-bench accuracy --bundle bundles/e5-small-int8 --dataset mlqa-r --out reports/mlqa-r
      hbt-bench accuracy --bundle B --dataset xquad-r --lang de --lang hi --settings cross
      hbt-bench accuracy --bundle B --dataset mlqa-r --split test --ranker index
      hbt-bench accuracy --bundle B --dataset xquad-r --mode hybrid --cache ~/.cache/hbt/embeddings
      hbt-bench accuracy --bundle B --dataset tatoeba --lang kab --lang amh
    """
    from tqdm import tqdm

    from hbt import lareqa, retrieval, tatoeba
    from hbt.bench.reports import environment, markdown, write_report
    from hbt.corpus import read_corpus, read_queries
    from hbt.encoder import Encoder
    from hbt.errors import DataError
    from hbt.search import SearchMode

    known = (*lareqa.DATASETS, "tatoeba", *retrieval.QRELS_DATASETS, "mkqa")
    if dataset not in known:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(known)}")
    wanted = [*langs, *(languages.split(",") if languages else [])] or None
    if split != "all" and dataset != "mlqa-r":
        raise DataError(f"--split {split}: only mlqa-r has a dev/test split; drop --split for {dataset}")
    if ef is not None and not (ranker == "index" or ann):
        raise DataError(f"--ef {ef}: the exact ranker has no ef; add --ranker index")
    if mode != "dense" and dataset not in lareqa.DATASETS:
        raise DataError(f"--mode {mode}: only {', '.join(lareqa.DATASETS)} rank lexically; use --mode dense for {dataset}")
    depth = depth or (lareqa.INDEX_DEPTH if dataset in lareqa.DATASETS else retrieval.DEPTH)
    ranking = retrieval.Ranker("index" if ann else ranker, ef, depth, mode=SearchMode(mode, lexical_weight, fusion))
    encoder = Encoder(bundle, threads=threads or None, runtime=runtime)
    tag = f"{encoder.manifest.fingerprint} {runtime}"
    encode_queries, encode_passages = (cached(encoder.encode_queries, cache, f"{tag} query"),
                                       cached(encoder.encode_passages, cache, f"{tag} passage"))
    extra = []  # report lines beyond the standard tables
    if dataset in lareqa.DATASETS:
        data = lareqa.load_dataset(data_dir, dataset, wanted, share, split)
        files = sorted((data_dir / dataset).glob("*.json.gz"))
        with tqdm(total=len(data), desc="embedding", unit=" languages") as bar:
            results = lareqa.evaluate(data, encode_queries, encode_passages, tuple(settings.split(",")),
                                      progress=lambda message: bar.update(1), ranker=ranking,
                                      tokenizer=encoder.tokenizer)
    elif dataset == "tatoeba":
        files = sorted((data_dir / dataset).glob("*.gz"))
        with tqdm(total=len(wanted or tatoeba.languages(data_dir / dataset)), desc="embedding", unit=" languages") as bar:
            results = tatoeba.evaluate(data_dir, encode_queries, wanted, progress=lambda message: bar.update(1))
        extra = tatoeba.markdown_groups(results)
    elif dataset in retrieval.QRELS_DATASETS:
        paths = retrieval.find_files(data_dir, dataset, {"corpus": corpus, "queries": queries, "qrels": qrels})
        files = list(paths.values())
        topics = dict(zip(*read_queries(paths["queries"])))
        results = retrieval.evaluate_qrels(topics, retrieval.read_qrels(paths["qrels"]),
                                           list(read_corpus(paths["corpus"])), encode_queries,
                                           with_progress(encode_passages, "embedding corpus"), ranking)
    else:
        paths = retrieval.find_files(data_dir, dataset, {"mkqa": queries, "corpus": corpus})
        files = list(paths.values())
        results = retrieval.evaluate_mkqa(retrieval.read_mkqa(paths["mkqa"], wanted), list(read_corpus(paths["corpus"])),
                                          encode_queries, with_progress(encode_passages, "embedding corpus"),
                                          ranking)
    report = {"dataset": dataset, "sample": share, "split": split, "mode": mode, "search": ranking.describe(),
              "plans": dict(ranking.plans), "runtime": runtime,
              "environment": environment(encoder.manifest, files, encoder.int8_check), "settings": results}
    out = out or Path("reports") / f"{dataset}-{Path(bundle).name}"
    precision = "fp32" if encoder.manifest.quantization == "none" else encoder.manifest.quantization
    precision += "" if runtime == "onnxruntime" else f" on {runtime}"
    title = f"{dataset}{'' if split == 'all' else ' ' + split}: {encoder.manifest.source} ({precision})"
    title += "" if mode == "dense" else f", {ranking.describe()}"
    write_report(report, out, markdown(report, title) + "".join(line + "\n" for line in extra))
    for setting, values in results.items():
        click.echo(f"{setting:>6}: " + "  ".join(f"{m} {v:.3f}" for m, v in values["mean"].items()
                                                  if m not in ("groups", "queries")))
    click.echo(f"report: {out}/report.md")


@main.command()
@click.argument("name")
@data_dir_option("Where the datasets go, one subfolder each.")
@click.option("--base-url", help="A mirror of github.com (default, or $HBT_DOWNLOAD_URL).")
@user_errors
def download(name, data_dir, base_url):
    """Fetch NAME (xquad-r, mlqa-r, xquad, mkqa) from its GitHub source into DATA_DIR/NAME.

    Files already there are kept; each new one is written whole or not at all.
    """
    from hbt.download import SOURCES, download as fetch

    with click.progressbar(length=len(SOURCES.get(name, [])), label=f"downloading {name}") as bar:
        written = fetch(name, data_dir, base_url, progress=lambda file, size: bar.update(1))
    click.echo(f"{len(written)} new file(s) in {data_dir / name}")


@main.command()
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle made by hbt-export.")
@click.option("--index", "index_dir", type=click.Path(path_type=Path),
              help="Measure this index (default: build one from the workload's passages, timing the build).")
@data_dir_option("Real passages and questions come from its xquad-r and mlqa-r; without them, the bundled demo corpus.")
@click.option("--num-queries", type=click.IntRange(1), default=500, show_default=True, help="Queries to time.")
@click.option("--num-passages", type=click.IntRange(1), default=2000, show_default=True,
              help="Passages to index (real data only; the demo corpus has 240).")
@renamed_option("--queries", "--num-queries", type=click.IntRange(1))
@renamed_option("--passages", "--num-passages", type=click.IntRange(1))
@click.option("-k", type=click.IntRange(1), default=10, show_default=True, help="Results per query.")
@click.option("--threads", type=click.IntRange(0), default=0, help="Encoder and index threads (0: all cores).")
@click.option("--out", type=click.Path(path_type=Path), help="Report directory (default reports/latency-<bundle>).")
@runtime_option("for queries and passages")
@user_errors
def latency(bundle, index_dir, data_dir, num_queries, num_passages, queries, passages, k, threads, out, runtime):
    """Encode texts/s (batch 1, 32), index build passages/s, search and end-to-end p50/p99, QPS, peak memory."""
    import sqlite3

    from tqdm import tqdm

    from hbt.bench import latency as bench_latency
    from hbt.bench.reports import environment, write_report
    from hbt.bundle import read_manifest
    from hbt.errors import SearchIndexError

    num_queries = queries or num_queries
    num_passages = passages or num_passages
    with tqdm(total=4, desc="latency", bar_format="{desc}: {n}/{total} {postfix}") as bar:
        def progress(step):
            bar.set_postfix_str(step)
            bar.update(1)

        try:
            results = bench_latency.measure(bundle, index_dir, data_dir, num_queries, num_passages, k, threads or None,
                                            progress, runtime)
        except sqlite3.Error as e:  # a damaged or foreign docs.sqlite
            raise SearchIndexError(f"{index_dir or 'the benchmark index'}: its document store fails ({e}); "
                                   "check it with hbt-index verify, or rebuild it") from e
    from hbt.encoder import Encoder

    manifest = read_manifest(Path(bundle), verify=False)
    results["environment"] = environment(manifest, [], Encoder(bundle, runtime=runtime).int8_check)
    out = out or Path("reports") / f"latency-{Path(bundle).name}"
    title = f"Latency: {manifest.source} ({manifest.quantization}{'' if runtime == 'onnxruntime' else ' on ' + runtime})"
    write_report(results, out, bench_latency.markdown(results, title),
                 bench_latency.plot)
    e2e = results["end_to_end"]
    click.echo(f"end to end p50 {e2e['p50_ms']:.2f} ms, p99 {e2e['p99_ms']:.2f} ms; "
               f"encode {results['encode']['batch_32_texts_per_second']:.0f} texts/s at batch 32")
    click.echo(f"report: {out}/report.md")


@main.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@user_errors
def compare(reports):
    """Side-by-side table of REPORT directories, with differences from the first."""
    from hbt.bench.reports import compare as compare_reports

    click.echo(compare_reports(list(reports)))
