"""hbt-index: build and maintain a segmented search index over a corpus."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from hbt.cli import runtime_option, setup_logging, user_errors

INDEX_HELP = "Index directory."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Build and maintain hbt search indexes: segments (hnswlib graph + SQLite documents) and a commit manifest.

    Every change is one commit: a crash leaves the previous commit, and searchers
    opened meanwhile keep answering. Writers take a lock; readers never wait.

    \b
    Example:
      hbt-index build corpus.jsonl --bundle bundles/e5-small-int8 --index my-index
      hbt-index add more.jsonl --index my-index
      hbt-index delete --ids doc-17 --index my-index
      hbt-search "¿Quién escribió Hamlet?" --index my-index
    """


def index_option(command):
    return click.option("--index", "index_dir", type=click.Path(path_type=Path), help=INDEX_HELP)(command)


def index_directory(command):
    """--index DIR, passed on as ``index_dir``; the older positional spelling stays as a hidden alias."""

    @functools.wraps(command)
    def resolved(legacy_index, index_dir, **kwargs):
        return command(index_dir=_resolve_index(index_dir, legacy_index), **kwargs)

    resolved = index_option(resolved)
    return click.argument("legacy_index", required=False, type=click.Path(path_type=Path), metavar="")(resolved)


def _resolve_index(index_dir: Path | None, legacy: Path | None) -> Path:
    if index_dir is None and legacy is None:
        raise click.UsageError("give the index directory with --index DIR")
    return index_dir or legacy


def _progress(description: str):
    from tqdm import tqdm

    return tqdm(unit=" texts", desc=description, dynamic_ncols=True, mininterval=0.5)


def _read(corpus: str, skip_invalid: bool):
    from hbt.corpus import ReadStats, read_corpus

    stats = ReadStats()
    return read_corpus(corpus, skip_invalid=skip_invalid, stats=stats), stats


def _report(index_dir, manifest, stats, encoder):
    click.echo(f"{index_dir}: {manifest.count} documents in {len(manifest.segments)} segment(s)"
               + (f", {stats.skipped} invalid lines skipped" if stats.skipped else "")
               + (f", {encoder.truncated} texts truncated to {encoder.manifest.max_length} tokens"
                  if encoder.truncated else ""))
    if encoder.int8_check is not None:
        click.echo(encoder.int8_check.summary())


@main.command()
@click.argument("corpus")
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle made by hbt-export.")
@index_option
@click.option("--out", "legacy_out", type=click.Path(path_type=Path), hidden=True)
@click.option("--M", "m", type=click.IntRange(2, 256), default=32, show_default=True, help="HNSW links per node.")
@click.option("--ef-construction", type=click.IntRange(1), default=200, show_default=True, help="HNSW build beam.")
@click.option("--ef", type=click.IntRange(1), default=128, show_default=True, help="Default search beam.")
@click.option("--segment-size", type=click.IntRange(1), default=1_000_000, show_default=True,
              help="Documents per segment (bounds the memory a build needs: about 1.8 KB per 384-d document).")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True, help="0: all cores.")
@click.option("--language-graphs", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="auto: a graph per mid-sized language of each segment, so filtering to it costs about an "
                   "unfiltered search (at most 30% more memory); off: none.")
@runtime_option("for the passages")
@click.option("--skip-invalid", is_flag=True, help="Count and skip malformed lines instead of stopping.")
@click.option("--force", is_flag=True, help="Replace the index if it exists (one commit: searchers never see a gap).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Build on a Ray cluster: a new local one (or RAY_ADDRESS), 'auto', or a cluster address. "
                   "CORPUS may then be files, directories or URLs, also Parquet; a rerun resumes. Needs hbt[ray].")
@click.option("--actors", type=click.IntRange(1), help="With --ray: encoder actors, of --threads each (2 when "
              "0); default: as many as the cluster's CPUs allow with one left for reading.")
@user_errors
def build(corpus, bundle, index_dir, legacy_out, m, ef_construction, ef, segment_size, threads, language_graphs,
          runtime, skip_invalid, force, ray_address, actors):
    """Embed CORPUS with BUNDLE and write a new index.

    CORPUS is JSONL (id, text, optional title and lang; other fields are kept as
    metadata; BEIR's _id works too), TSV (id<TAB>text), either gzipped (.gz); - reads stdin,
    and a pipe such as <(zcat part-*.gz) streams.
    """
    from hbt.encoder import Encoder
    from hbt.index import IndexConfig, build_index

    setup_logging(False)
    index_dir = _resolve_index(index_dir, legacy_out)
    config = IndexConfig(M=m, ef_construction=ef_construction, ef=ef, threads=threads, segment_size=segment_size,
                         language_graphs=language_graphs)
    if ray_address is not None:
        from hbt.distributed.build import build_index_on_ray

        manifest = build_index_on_ray(corpus, bundle, index_dir, config, actors, ray_address, force, skip_invalid)
        click.echo(f"{index_dir}: {manifest.count} documents in {len(manifest.segments)} segment(s), on Ray")
        return
    if actors:
        raise click.UsageError("--actors needs --ray")
    encoder = Encoder(bundle, threads=threads or None, runtime=runtime)
    docs, stats = _read(corpus, skip_invalid)
    with _progress("indexing") as bar:
        manifest = build_index(docs, encoder, index_dir, config, bar.update, force=force)
    _report(index_dir, manifest, stats, encoder)


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="CORPUS")
@index_option
@click.option("--skip-invalid", is_flag=True, help="Count and skip malformed lines instead of stopping.")
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True)
@user_errors
def add(paths, index_dir, skip_invalid, threads):
    """Add the documents of CORPUS (a file, - for stdin, or a pipe such as <(cmd)) as a new segment; ids must
    stay unique.

    Small segments are merged as they accumulate (ten of a size make one of the next).
    """
    from hbt.encoder import Encoder
    from hbt.index import add_documents, read_manifest

    setup_logging(False)  # a writer waiting on another's lock says so
    if index_dir is None and len(paths) == 2:  # the older spelling: add INDEX_DIR CORPUS
        index_dir, paths = Path(paths[0]), paths[1:]
    if index_dir is None or len(paths) != 1:
        raise click.UsageError("usage: hbt-index add CORPUS --index DIR")
    encoder = Encoder(read_manifest(index_dir).bundle.path, threads=threads or None)
    docs, stats = _read(paths[0], skip_invalid)
    with _progress("adding") as bar:
        manifest = add_documents(index_dir, docs, encoder, bar.update, threads)
    _report(index_dir, manifest, stats, encoder)


@main.command()
@index_directory
@click.option("--ids", multiple=True, help="Document id to delete (repeatable).")
@click.option("--ids-file", type=click.File("r", encoding="utf-8"), help="File with one id per line.")
@user_errors
def delete(index_dir, ids, ids_file):
    """Delete documents by id: tombstones, one commit; they never appear in results again."""
    from hbt.index import delete_documents

    setup_logging(False)  # a writer waiting on another's lock says so
    wanted = list(ids) + ([line.strip() for line in ids_file if line.strip()] if ids_file else [])
    if not wanted:
        raise click.UsageError("give --ids or --ids-file")
    manifest, missing = delete_documents(index_dir, wanted)
    click.echo(f"{index_dir}: deleted {len(set(wanted)) - len(missing)}, {manifest.count} documents left"
               + (f"; not found: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else "")
                  if missing else ""))


@main.command()
@index_directory
@click.option("--threads", type=click.IntRange(0), default=0, show_default=True)
@click.option("--expunge-deletes", is_flag=True,
              help="Rewrite every segment that has tombstones (by default, those with 10% or more deleted).")
@user_errors
def compact(index_dir, threads, expunge_deletes):
    """Pack small segments together and rewrite those with many tombstones, one commit."""
    from hbt.index import compact_index, read_manifest

    setup_logging(False)  # a writer waiting on another's lock says so
    before = read_manifest(index_dir)
    with _progress("compacting") as bar:
        manifest = compact_index(index_dir, bar.update, threads, expunge_deletes)
    dropped = sum(e.deleted for e in before.segments) - sum(e.deleted for e in manifest.segments)
    click.echo(f"{index_dir}: {len(before.segments)} -> {len(manifest.segments)} segment(s), "
               f"{dropped} tombstones dropped, {manifest.count} documents")


@main.command()
@index_directory
@click.option("--bundle", type=click.Path(path_type=Path), help="The index's bundle, if it moved (default: the one "
              "the index names); its tokenizer writes the lexical parts.")
@user_errors
def upgrade(index_dir, bundle):
    """Upgrade an index in place, without re-embedding: format 1 (one graph and store) becomes a segment, and
    segments built before lexical search get their lexical part (BM25 over the bundle tokenizer's pieces)."""
    from hbt.index import FORMAT_VERSION, upgrade_index

    setup_logging(False)  # a writer waiting on another's lock says so
    manifest = upgrade_index(index_dir, bundle)
    click.echo(f"{index_dir}: format {FORMAT_VERSION}, {manifest.count} documents, lexical parts in all "
               f"{len(manifest.segments)} segment(s)")


@main.command()
@index_directory
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@user_errors
def info(index_dir, as_json):
    """Summarize an index: documents per language, segments and tombstones, bundle, HNSW parameters."""
    from hbt.index import Index

    index = Index(index_dir)
    summary = index.info()
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    languages = ", ".join(f"{lang or '(none)'} {n}" for lang, n in
                          sorted(summary["languages"].items(), key=lambda item: -item[1]))
    deleted = sum(segment["deleted"] for segment in summary["segments"])
    click.echo(f"index      {index_dir} (commit {summary['generation']})\n"
               f"documents  {summary['count']}\nlanguages  {languages}\n"
               f"segments   {len(summary['segments'])} (at most {summary['segment_size']} documents each), "
               f"{deleted} tombstones\n"
               f"bundle     {summary['bundle']['path']}\n"
               f"vectors    {summary['dimension']}-d, inner product (scores are cosine similarities)\n"
               f"hnsw       M={summary['M']} ef_construction={summary['ef_construction']} ef={summary['ef']} "
               f"language graphs {summary['language_graphs']}\n"
               f"created    {summary['created']}  (updated {summary['updated']}, hbt {summary['hbt_version']})")
    for segment, entry in zip(summary["segments"], index.manifest.segments):
        graphs = sorted(entry.language_graphs)
        click.echo(f"  {segment['name']}  {segment['documents']:>9} documents  {segment['deleted']:>7} deleted"
                   + (f"  language graphs: {', '.join(graphs)} (+{entry.language_graph_bytes / 2**20:.1f} MiB)"
                      if graphs else ""))


@main.command()
@index_directory
@user_errors
def verify(index_dir):
    """Check checksums, counts, graph/store agreement, recall@10 against exact search, the lexical parts
    against the stored texts, and that an int8 bundle holds its fidelity gate on this CPU."""
    from hbt.encoder import Encoder
    from hbt.index import read_manifest, verify_index

    encoder = Encoder(read_manifest(index_dir).bundle.path)
    report = verify_index(index_dir, tokenizer=encoder.tokenizer)
    recall = "n/a (empty)" if report["recall_at_k"] is None else f"{report['recall_at_k']:.3f}"
    click.echo(f"{index_dir}: ok, {report['documents']} documents in {report['segments']} segment(s), "
               f"checksums ok, recall@{report['k']} {recall} on {report['probes']} probes, "
               f"lexical {report['lexical']}")
    # The vectors a search adds must match the stored ones: an int8 bundle below its gate on this CPU fails here.
    check = encoder.int8_check
    if check is not None:
        click.echo(check.summary())
