"""hbt-serve: the HTTP search API and search page over an index."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import click

from hbt.cli import UserError, user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--index", "index_dir", required=True, type=click.Path(path_type=Path), help="Index directory.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback lets other machines search the index.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--token", envvar="HBT_SERVE_TOKEN", show_envvar=True,
              help="Bearer token required by every endpoint but /health and the page.")
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True,
              help="Queries encoded in one call (1: no micro-batching).")
@click.option("--max-wait-ms", type=click.FloatRange(0, 50), default=2.0, show_default=True,
              help="How long a batch may wait for queries arriving together (a lone query never waits).")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Batches encoded at once, each with --threads threads.")
@click.option("--max-k", type=click.IntRange(1), default=100, show_default=True, help="Largest k a request may ask.")
@click.option("--threads", type=click.IntRange(1),
              help="Encoder threads per worker (default: the cores shared among the workers, at most 8).")
@click.option("--bundle", type=click.Path(path_type=Path), help="Bundle (default: the one the index names).")
@click.option("--access-log", is_flag=True, help="Log every request (GET /metrics counts them anyway).")
@user_errors
def main(index_dir, host, port, token, max_batch, max_wait_ms, workers, max_k, threads, bundle, access_log):
    """Serve an index over HTTP: POST /search, GET /info, /health, /metrics,
    /openapi.json, and a search page at /.

    The server follows the index: after hbt-index add, delete or compact, it
    answers from the new commit within a second, without a restart.

    \b
    Examples:
      hbt-serve --index my-index                      # then open http://127.0.0.1:8080/
      curl -s localhost:8080/search -H 'Content-Type: application/json' \\
           -d '{"query": "Wer hat das Penicillin entdeckt?", "k": 3, "langs": ["en"]}'
      HBT_SERVE_TOKEN=secret hbt-serve --index my-index --host 0.0.0.0 --port 80
    """
    try:
        import uvicorn

        from hbt.serve.app import ServeConfig, create_app
    except ImportError as e:
        raise UserError(f"hbt-serve needs the serve extra ({e.name} is missing): pip install 'hbt[serve]'") from e
    from hbt.search import Searcher

    # On 2 shared cores, two batches on one thread each beat one batch on two threads: the
    # threads of one batch wait for each other at every layer (bench/reports/serve).
    threads = threads or min(8, max(1, (os.cpu_count() or 1) // workers))
    searcher = Searcher.open(index_dir, bundle, threads)
    config = ServeConfig(max_batch=max_batch, max_wait_ms=max_wait_ms, workers=workers, max_k=max_k, token=token)
    app = create_app(searcher, config)
    if not _is_loopback(host):
        click.echo(f"warning: listening on {host}: whoever reaches this address can search the index and read "
                   f"its documents{'' if token else ' (no --token set)'}", err=True)
    click.echo(f"hbt-serve: {searcher.index.count} documents from {index_dir} at http://{host}:{port}/ "
               "(Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=access_log)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


if __name__ == "__main__":
    main()
