"""hbt-serve: the HTTP search API and search page over an index, and OpenAI's embeddings API over its bundle."""

from __future__ import annotations

import os
from pathlib import Path

import click

from hbt.cli import UserError, user_errors

TOKEN_ENV = "HBT_TOKEN"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--index", "index_dir", type=click.Path(path_type=Path), help="Index directory.")
@click.option("--embeddings-only", is_flag=True,
              help="Serve --bundle's embeddings (POST /v1/embeddings) without an index: no /search, no page.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback lets other machines search the index.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A name clients may reach the server by (the Host header), beside localhost, 127.0.0.1, [::1] "
                   "and --host; repeatable; '*' for any (behind a proxy that checks it). Others get 421: this "
                   "stops DNS rebinding.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"File holding the bearer token (or set {TOKEN_ENV}) required by every endpoint but /health "
                   "and the page.")
@click.option("--token", help=f"The bearer token itself; it shows in ps: prefer {TOKEN_ENV} or --token-file.")
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True,
              help="Queries encoded in one call (1: no micro-batching).")
@click.option("--max-wait-ms", type=click.FloatRange(0, 50), default=2.0, show_default=True,
              help="How long a batch may wait for queries arriving together (a lone query never waits).")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Batches encoded at once, each with --threads threads.")
@click.option("--max-batch-tokens", type=click.IntRange(1), default=8192, show_default=True,
              help="Tokens (padding included) encoded in one call for /v1/embeddings (1: a request at a time).")
@click.option("--max-k", type=click.IntRange(1), default=100, show_default=True, help="Largest k a request may ask.")
@click.option("--max-connections", type=click.IntRange(1), default=256, show_default=True,
              help="Open connections; beyond, requests get 503.")
@click.option("--header-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds a request's line and headers may take to arrive; its body gets as long again.")
@click.option("--keep-alive-timeout", type=click.FloatRange(0.1), default=5.0, show_default=True,
              help="Seconds an idle connection stays open between requests.")
@click.option("--threads", type=click.IntRange(1),
              help="Encoder threads per worker (default: the cores shared among the workers, at most 8).")
@click.option("--bundle", type=click.Path(path_type=Path),
              help="Bundle (default: the one the index names; with --embeddings-only, required).")
@click.option("--access-log", is_flag=True, help="Log every request (GET /metrics counts them anyway).")
@user_errors
def main(index_dir, embeddings_only, host, port, allowed_hosts, token_file, token, max_batch, max_wait_ms, workers,
         max_batch_tokens, max_k, max_connections, header_timeout, keep_alive_timeout, threads, bundle, access_log):
    """Serve an index over HTTP: POST /search, GET /info, /health, /metrics,
    /openapi.json, a search page at /, and OpenAI's POST /v1/embeddings with
    the index's bundle (input_type "query", the default, or "passage" picks
    its prompt). With --embeddings-only --bundle B: the embeddings alone.

    The server follows the index: after hbt-index add, delete or compact, it
    answers from the new commit within a second, without a restart. A commit
    it cannot open leaves the last good one serving (GET /health says "stale").

    \b
    Examples:
      hbt-serve --index my-index                      # then open http://127.0.0.1:8080/
      curl -s localhost:8080/search -H 'Content-Type: application/json' \\
           -d '{"query": "Wer hat das Penicillin entdeckt?", "k": 3, "langs": ["en"]}'
      HBT_TOKEN=secret hbt-serve --index my-index --host 0.0.0.0 --allowed-host search.example.org
      hbt-serve --embeddings-only --bundle my-bundle  # OpenAI(base_url="http://127.0.0.1:8080/v1")
    """
    try:
        import uvicorn

        from hbt.serve.app import ServeConfig, create_app, is_loopback
        from hbt.serve.server import ServerLimits, server_config
    except ImportError as e:
        raise UserError(f"hbt-serve needs the serve extra ({e.name} is missing): pip install 'hbt[serve]'") from e
    if embeddings_only and (index_dir or not bundle):
        raise click.UsageError("--embeddings-only serves a bundle without an index: give --bundle B, not --index")
    if not embeddings_only and not index_dir:
        raise click.UsageError("give --index DIR, or --embeddings-only --bundle B to serve embeddings alone")
    token = _token(token, token_file)
    # On 2 shared cores, two batches on one thread each beat one batch on two threads: the
    # threads of one batch wait for each other at every layer (bench/reports/serve).
    threads = threads or min(8, max(1, (os.cpu_count() or 1) // workers))
    config = ServeConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, workers=workers, max_k=max_k, token=token,
                         host=host, allowed_hosts=allowed_hosts, body_seconds=header_timeout,
                         max_batch_tokens=max_batch_tokens)
    limits = ServerLimits(header_seconds=header_timeout, keep_alive_seconds=keep_alive_timeout,
                          max_connections=max_connections)
    if embeddings_only:
        from hbt.encoder import Encoder

        app = create_app(None, config, encoder=Encoder(bundle, threads=threads))
        served = f"embeddings with {bundle}"
    else:
        from hbt.search import Searcher

        searcher = Searcher.open(index_dir, bundle, threads)
        app = create_app(searcher, config)
        served = f"{searcher.index.count} documents from {index_dir}"
    if not is_loopback(host):
        reach = "embed texts" if embeddings_only else "search the index and read its documents"
        click.echo(f"warning: listening on {host}: whoever reaches this address can {reach}"
                   f"{'' if token else f' (no {TOKEN_ENV} or --token-file set)'}", err=True)
    click.echo(f"hbt-serve: {served} at http://{host}:{port}/ (Ctrl-C stops)", err=True)
    uvicorn.Server(server_config(app, host, port, limits, access_log)).run()


def _token(given: str | None, token_file: Path | None) -> str | None:
    """The bearer token: --token, else --token-file, else the environment."""
    if given and token_file:
        raise click.UsageError("give --token or --token-file, not both")
    if given:
        click.echo(f"warning: --token shows in ps and the shell's history: prefer {TOKEN_ENV} or --token-file",
                   err=True)
        return given
    if token_file:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--token-file {token_file}: cannot read it ({e})") from e
        if not token:
            raise UserError(f"--token-file {token_file}: empty; write the token in it")
        return token
    return os.environ.get(TOKEN_ENV) or None


if __name__ == "__main__":
    main()
