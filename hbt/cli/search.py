"""hbt-search: query an index in any language."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hbt.cli import DefaultCommandGroup, user_errors
from hbt.cli.modes import mode_options


@click.group(cls=DefaultCommandGroup, default="query", context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Search an hbt index. Queries and documents may be in different languages.

    \b
    hbt-search "question" --index DIR     (the same as: hbt-search query "question" --index DIR)
    """


@main.command()
@click.argument("texts", nargs=-1)
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index directory.")
@click.option("-k", type=int, default=10, show_default=True,
              help="Results per query (fewer when the index, or the --lang filter, admits fewer documents).")
@click.option("--ef", type=click.IntRange(1), help="HNSW search beam (default: the index's).")
@click.option("--lang", "langs", multiple=True, help="Only documents in this language (repeatable).")
@mode_options("auto")
@click.option("--query-lang", metavar="CODE",
              help="The queries' language (as the index's --lang codes): auto fuses only when the search is "
                   "restricted to exactly this language (--lang CODE).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query, with the plan and timings.")
@click.option("-v", "--verbose", is_flag=True, help="Say which plan each segment ran, and the stage timings.")
@click.option("--queries", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TSV or JSONL queries; writes a TREC run (qid Q0 docid rank score tag).")
@click.option("--out", type=click.File("w"), default="-", help="Where the TREC run goes (default stdout).")
@click.option("--bundle", type=click.Path(path_type=Path), help="Bundle (default: the one the index names).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Hold the segments on Ray actors: a new local cluster (or RAY_ADDRESS), 'auto', or a cluster "
                   "address; give TEXTS before it. Needs hbt[ray].")
@click.option("--actors", type=click.IntRange(1), help="With --ray: segment groups, one actor each (default: one "
              "per node).")
@user_errors
def query(texts, index_dir, k, ef, langs, mode, lexical_weight, fusion, query_lang, as_json, verbose, queries, out,
          bundle, ray_address, actors):
    """Search for TEXTS (or --queries FILE) and print the top k documents.

    \b
    Examples:
      hbt-search "इस बीमारी का इलाज क्या है?" --index my-index -k 5
      hbt-search "quantum computing" --index my-index --lang de --lang fr --json
      hbt-search "東京タワーの高さ" --index my-index --mode lexical
      hbt-search "Wer entdeckte das Penicillin?" --index my-index --lang de --query-lang de
      hbt-search --queries topics.tsv --index my-index --out run.trec
    """
    from hbt.corpus import read_queries
    from hbt.search import Searcher, SearchMode, check_queries
    from hbt.trec import write_trec_run

    if queries:
        query_ids, texts = read_queries(queries)
    elif not texts:
        raise click.UsageError("give query TEXTS or --queries FILE")
    else:
        query_ids = [str(i) for i in range(1, len(texts) + 1)]
    check_queries(list(texts))  # before Ray starts a cluster for nothing
    mode = SearchMode(mode, lexical_weight, fusion, query_lang)
    if ray_address is not None:
        from hbt.distributed.search import search_on_ray

        run = search_on_ray(index_dir, list(texts), k, ef, langs, bundle, actors, ray_address, mode)
    elif actors:
        raise click.UsageError("--actors needs --ray")
    else:
        searcher = Searcher.open(index_dir, bundle)
        run = searcher.run(list(texts), k=k, ef=ef, langs=langs, mode=mode)
        if verbose:
            click.echo(f"planner costs: {searcher.index.costs.describe()}", err=True)
    results = run.hits
    if verbose:
        timings = ", ".join(f"{stage} {ms:.2f} ms" for stage, ms in run.timings.items())
        click.echo(f"plan: {run.plan}\ntimings: {timings}", err=True)
    if queries:
        write_trec_run(out, query_ids, results)
    elif as_json:
        for text, hits in zip(texts, results):
            click.echo(json.dumps({"query": text, "hits": [hit.__dict__ for hit in hits], "plan": run.plan,
                                   "timings_ms": run.timings}, ensure_ascii=False))
    else:
        for text, hits in zip(texts, results):
            click.echo(f"\n{text}")
            click.echo(f"{'rank':>4}  {'score':>6}  {'id':<14} {'lang':<4} text")
            for hit in hits:
                snippet = " ".join(hit.text.split())
                snippet = snippet if len(snippet) <= 70 else snippet[:69] + "…"
                click.echo(f"{hit.rank:>4}  {hit.score:6.3f}  {hit.id:<14.14} {hit.lang:<4} {snippet}")
