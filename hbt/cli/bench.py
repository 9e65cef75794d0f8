"""hbt-bench: accuracy across languages and settings, as readable reports."""

from __future__ import annotations

import os
from pathlib import Path

import click

from hbt.cli import user_errors

DEFAULT_DATA = Path(os.environ.get("HBT_DATA", "../shared/data"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Measure retrieval accuracy and compare reports."""


@main.command()
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle made by hbt-export.")
@click.option("--dataset", required=True, help="xquad-r or mlqa-r (LAReQA format).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA, show_default=True,
              help="Folder holding the datasets (or set HBT_DATA).")
@click.option("--settings", default="mono,cross,multi", show_default=True, help="Comma-separated settings.")
@click.option("--languages", help="Comma-separated subset of the dataset's languages.")
@click.option("--sample", "share", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Evaluate a stable share of the qa ids (and the paragraphs holding them), for quick comparisons.")
@click.option("--out", type=click.Path(path_type=Path), help="Report directory (default reports/<dataset>-<bundle>).")
@click.option("--threads", type=click.IntRange(0), default=0, help="Encoder threads (0: all cores).")
@user_errors
def accuracy(bundle, dataset, data_dir, settings, languages, share, out, threads):
    """mAP, Recall@1/10/100, nDCG@10 and language bias, with exact search, per setting and language."""
    from tqdm import tqdm

    from hbt.bench.reports import environment, markdown, write_report
    from hbt.encoder import Encoder
    from hbt.lareqa import evaluate, load_dataset

    encoder = Encoder(bundle, threads=threads or None)
    data = load_dataset(data_dir, dataset, languages.split(",") if languages else None, share)
    chosen = tuple(settings.split(","))
    with tqdm(total=len(data), desc="embedding", unit=" languages") as bar:
        results = evaluate(data, encoder.encode_queries, encoder.encode_passages, chosen,
                           progress=lambda message: bar.update(1))
    files = sorted((data_dir / dataset).glob("*.json.gz"))
    report = {"dataset": dataset, "sample": share, "environment": environment(encoder.manifest, files), "settings": results}
    out = out or Path("reports") / f"{dataset}-{Path(bundle).name}"
    write_report(report, out, markdown(report, f"{dataset}: {encoder.manifest.source} ({encoder.manifest.quantization})"))
    for setting, values in results.items():
        click.echo(f"{setting:>6}: mAP {values['mean']['map']:.3f}  R@1 {values['mean']['recall@1']:.3f}  "
                   f"R@10 {values['mean']['recall@10']:.3f}  bias {values['mean']['language_bias']:.1f}")
    click.echo(f"report: {out}/report.md")


@main.command()
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle made by hbt-export.")
@click.option("--index", "index_dir", type=click.Path(path_type=Path),
              help="Measure this index (default: build one from the workload's passages, timing the build).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA, show_default=True,
              help="Real passages and questions come from here; without it, the bundled demo corpus.")
@click.option("--queries", type=click.IntRange(1), default=500, show_default=True)
@click.option("--passages", type=click.IntRange(1), default=2000, show_default=True)
@click.option("-k", type=click.IntRange(1), default=10, show_default=True)
@click.option("--threads", type=click.IntRange(0), default=0, help="Encoder and index threads (0: all cores).")
@click.option("--out", type=click.Path(path_type=Path), help="Report directory (default reports/latency-<bundle>).")
@user_errors
def latency(bundle, index_dir, data_dir, queries, passages, k, threads, out):
    """Encode texts/s (batch 1, 32), index build passages/s, search and end-to-end p50/p99, QPS, peak memory."""
    from tqdm import tqdm

    from hbt.bench import latency as bench_latency
    from hbt.bench.reports import environment, write_report
    from hbt.bundle import read_manifest

    with tqdm(total=4, desc="latency", bar_format="{desc}: {n}/{total} {postfix}") as bar:
        def progress(step):
            bar.set_postfix_str(step)
            bar.update(1)

        results = bench_latency.measure(bundle, index_dir, data_dir, queries, passages, k, threads or None, progress)
    manifest = read_manifest(Path(bundle), verify=False)
    results["environment"] = environment(manifest, [])
    out = out or Path("reports") / f"latency-{Path(bundle).name}"
    write_report(results, out, bench_latency.markdown(results, f"Latency: {manifest.source} ({manifest.quantization})"),
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
