"""hbt-index: build and maintain a search index over a corpus."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hbt.cli import setup_logging, user_errors

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Build and maintain hbt search indexes (hnswlib graph + SQLite documents).

    \b
    Example:
      hbt-index build corpus.jsonl --bundle bundles/e5-small-int8 --out my-index
      hbt-search query "¿Quién escribió Hamlet?" --index my-index
    """


def _progress(total_label: str):
    from tqdm import tqdm

    return tqdm(unit=" texts", desc=total_label, dynamic_ncols=True, mininterval=0.5)


def _read(corpus: str, skip_invalid: bool):
    from hbt.corpus import ReadStats, read_corpus

    stats = ReadStats()
    return read_corpus(corpus, skip_invalid=skip_invalid, stats=stats), stats


@main.command()
@click.argument("corpus")
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle made by hbt-export.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Index directory to create.")
@click.option("--M", "m", type=click.IntRange(2, 256), default=32, show_default=True, help="HNSW links per node.")
@click.option("--ef-construction", type=click.IntRange(1), default=200, show_default=True, help="HNSW build beam.")
@click.option("--ef", type=click.IntRange(1), default=128, show_default=True, help="Default search beam.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Texts per encoder call.")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True, help="0: all cores.")
@click.option("--skip-invalid", is_flag=True, help="Count and skip malformed lines instead of stopping.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@user_errors
def build(corpus, bundle, out, m, ef_construction, ef, batch_size, threads, skip_invalid, force):
    """Embed CORPUS with BUNDLE and write a new index.

    CORPUS is JSONL (id, text, optional title and lang; other fields are kept as
    metadata; BEIR's _id works too), TSV (id<TAB>text), or - for stdin.
    """
    from hbt.encoder import Encoder
    from hbt.index import IndexConfig, build_index

    setup_logging(False)
    encoder = Encoder(bundle, threads=threads or None)
    docs, stats = _read(corpus, skip_invalid)
    with _progress("indexing") as bar:
        manifest = build_index(docs, encoder, out, IndexConfig(M=m, ef_construction=ef_construction, ef=ef,
                                                               threads=threads), bar.update, force=force)
    _report(out, manifest, stats, encoder)


def _report(out, manifest, stats, encoder):
    click.echo(f"{out}: {manifest['count']} documents" + (f", {stats.skipped} invalid lines skipped" if stats.skipped else "")
               + (f", {encoder.truncated} texts truncated to {encoder.manifest.max_length} tokens" if encoder.truncated else ""))


@main.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("corpus")
@click.option("--skip-invalid", is_flag=True, help="Count and skip malformed lines instead of stopping.")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True)
@user_errors
def add(index_dir, corpus, skip_invalid, threads):
    """Add the documents of CORPUS to an index (ids must stay unique)."""
    from hbt.encoder import Encoder
    from hbt.index import add_documents, read_index_manifest

    encoder = Encoder(read_index_manifest(index_dir)["bundle"]["path"], threads=threads or None)
    docs, stats = _read(corpus, skip_invalid)
    with _progress("adding") as bar:
        manifest = add_documents(index_dir, docs, encoder, bar.update, threads)
    _report(index_dir, manifest, stats, encoder)


@main.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--ids", multiple=True, help="Document id to delete (repeatable).")
@click.option("--ids-file", type=click.File("r", encoding="utf-8"), help="File with one id per line.")
@user_errors
def delete(index_dir, ids, ids_file):
    """Delete documents by id; they never appear in results again."""
    from hbt.index import delete_documents

    wanted = list(ids) + ([line.strip() for line in ids_file if line.strip()] if ids_file else [])
    if not wanted:
        raise click.UsageError("give --ids or --ids-file")
    manifest, missing = delete_documents(index_dir, wanted)
    click.echo(f"{index_dir}: deleted {len(wanted) - len(missing)}, {manifest['count']} documents left"
               + (f"; not found: {', '.join(missing[:10])}" if missing else ""))


@main.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@user_errors
def info(index_dir, as_json):
    """Summarize an index: documents, bundle, HNSW parameters."""
    from hbt.index import read_index_manifest

    manifest = read_index_manifest(index_dir)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    click.echo(f"index      {index_dir}\ndocuments  {manifest['count']}\n"
               f"bundle     {manifest['bundle']['path']}\n"
               f"vectors    {manifest['dimension']}-d, space {manifest['space']} (scores are cosine similarities)\n"
               f"hnsw       M={manifest['M']} ef_construction={manifest['ef_construction']} ef={manifest['ef']}\n"
               f"created    {manifest['created']}  (updated {manifest['updated']}, hbt {manifest['hbt_version']})")


@main.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@user_errors
def verify(index_dir):
    """Check checksums, counts, graph/store agreement and recall against exact search."""
    from hbt.index import verify_index

    report = verify_index(index_dir)
    click.echo(f"{index_dir}: ok — {report['documents']} documents, checksums ok, "
               f"recall@{report['k']} {report['recall_at_k']:.3f} on {report['probes']} probes")
