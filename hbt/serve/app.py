"""The HTTP API and the search page over a Searcher (micro-batched queries, live index updates, metrics),
and OpenAI's embeddings API over its encoder, or over an encoder alone."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import secrets
import time
from pathlib import Path

try:
    import prometheus_client
    from starlette.applications import Starlette
    from starlette.datastructures import Headers
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as e:
    raise ImportError(f"hbt's server needs the serve extra ({e.name} is missing): pip install 'hbt[serve]'",
                      name=e.name) from e

from hbt import __version__
from hbt.errors import HbtError
from hbt.search import MODES
from hbt.serve.batching import MicroBatcher
from hbt.serve.embeddings import EmbeddingService, OpenAIError, parse_embeddings
from hbt.serve.openapi import describe

log = logging.getLogger("hbt.serve")
STATIC = Path(__file__).parent / "static"
# Request counts and latencies are labelled by endpoint; any other path counts as "other".
ENDPOINTS = {"/": "page", "/search": "search", "/info": "info", "/health": "health", "/metrics": "metrics",
             "/openapi.json": "openapi", "/v1/embeddings": "embeddings", "/v1/models": "models"}
PUBLIC = {"page", "static", "health"}  # open without the token: the page holds no data, it asks for the token
FIELDS = ("query", "queries", "k", "ef", "langs", "mode", "query_lang")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # Host names always served


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 32  # queries per encoder call; 1 turns micro-batching off
    max_wait_ms: float = 2.0  # how long a batch may wait for queries arriving together
    workers: int = 1  # batches encoded at once (each with the encoder's threads)
    max_k: int = 100
    max_ef: int = 2048
    max_queries: int = 32  # per request
    max_query_chars: int = 2000
    refresh_seconds: float = 0.5  # how often to look for a new index commit
    token: str | None = None  # bearer token for every endpoint but /health and the page
    host: str = "127.0.0.1"  # the address bound: beyond loopback, /info names the bundle instead of its path
    allowed_hosts: tuple[str, ...] = ()  # Host header names served beside loopback's and host ("*": any)
    body_seconds: float = 10.0  # a request body must arrive within this (slow clients hold connections)
    max_inputs: int = 128  # texts per /v1/embeddings request
    max_input_chars: int = 8192  # characters per text (its tokens are bounded by the bundle's max_length)
    max_batch_tokens: int = 8192  # tokens per /v1/embeddings batch, padding included; 1: a request at a time


@dataclasses.dataclass(frozen=True)
class Query:
    """A validated POST /search body."""

    texts: list[str]
    k: int = 10
    ef: int | None = None
    langs: list[str] | None = None
    mode: str = "auto"  # passed to the Searcher, which runs it (hbt.search.SearchMode)
    query_lang: str | None = None  # the queries' language: auto fuses only when langs is exactly it


class BadRequest(Exception):
    """A client error: an HTTP status and a one-line message for the JSON body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str, path: str = "", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    """{"error": message}, or under /v1/ OpenAI's {"error": {"message", "type", "param", "code"}}."""
    # A message quoting the client's input may hold a lone surrogate, which UTF-8 cannot encode.
    message = message.encode("utf-8", "backslashreplace").decode()
    if not path.startswith("/v1/"):
        return JSONResponse({"error": message}, status_code=status)
    kind = "server_error" if status >= 500 else "authentication_error" if status == 401 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


async def read_body(request: Request, limit: int, seconds: float, too_big: str) -> bytes:
    """The request's body, refused past ``limit`` bytes (``too_big`` says what fits) or ``seconds``."""
    async def receive() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BadRequest(413, f"a body over {limit} bytes: {too_big}")
        return bytes(body)

    try:
        return await asyncio.wait_for(receive(), seconds)
    except asyncio.TimeoutError:  # asyncio's own class before Python 3.11
        raise BadRequest(408, f"the body took over {seconds:g} s to arrive") from None


def parse_query(body: bytes, content_type: str | None, config: ServeConfig, languages: dict[str, int]) -> Query:
    """Validate a POST /search body against the limits and the index's languages."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest(415, f"content type {content_type or 'missing'}: send Content-Type: application/json")
    try:
        fields = json.loads(body)
    except RecursionError:
        raise BadRequest(422, 'the body nests too deeply: send an object such as {"query": "...", "k": 10}')
    except ValueError as e:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise BadRequest(400, f"the body is not valid JSON ({e}); send an object such as {{\"query\": \"...\"}}")
    if not isinstance(fields, dict):
        raise BadRequest(422, 'the body must be a JSON object such as {"query": "...", "k": 10}')
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise BadRequest(422, f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    if ("query" in fields) == ("queries" in fields):
        raise BadRequest(422, 'give either "query": "text" or "queries": ["text", ...]')
    texts = [fields["query"]] if "query" in fields else fields["queries"]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise BadRequest(422, "every query must be a non-empty string, and queries a non-empty list of them")
    if len(texts) > config.max_queries:
        raise BadRequest(422, f"{len(texts)} queries: at most {config.max_queries} per request")
    longest = max(len(t) for t in texts)
    if longest > config.max_query_chars:
        raise BadRequest(422, f"a query of {longest} characters: at most {config.max_query_chars}")
    for number, text in enumerate(texts, start=1):
        # JSON may escape half a surrogate pair ("\ud800"); the tokenizer cannot take it.
        surrogate = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
        if surrogate:
            raise BadRequest(422, f"query {number} holds a lone surrogate (U+{ord(surrogate):04X}), which is not "
                                  "text: send valid Unicode")
    k = _integer(fields, "k", 10, config.max_k)
    ef = _integer(fields, "ef", None, config.max_ef)
    langs = fields.get("langs")
    if langs is not None:
        if not isinstance(langs, list) or not all(isinstance(lang, str) for lang in langs):
            raise BadRequest(422, 'langs must be a list of language codes, such as ["de", "fr"]')
        unknown = [lang for lang in langs if lang not in languages]
        if unknown:
            raise BadRequest(422, f"unknown language {unknown[0]!r}: this index holds "
                                  f"{', '.join(sorted(lang for lang in languages if lang))}")
    mode = fields.get("mode", "auto")
    if mode not in MODES:
        raise BadRequest(422, f"mode {json.dumps(mode)}: one of {', '.join(MODES)} (default auto)")
    # Any code: a query may be in a language the index lacks (auto then ranks densely, as for any other pool).
    query_lang = fields.get("query_lang")
    if query_lang is not None and (not isinstance(query_lang, str) or not query_lang.strip()):
        raise BadRequest(422, 'query_lang must be the queries\' language code, such as "de"')
    return Query(texts, k, ef, langs or None, mode, query_lang)


def _integer(fields: dict, name: str, default: int | None, maximum: int) -> int | None:
    value = fields.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise BadRequest(422, f"{name} = {json.dumps(value)}: must be an integer from 1 to {maximum}")
    return value


class Metrics:
    """The Prometheus series of one server (its own registry, so several apps can live in one process)."""

    def __init__(self):
        self.registry = prometheus_client.CollectorRegistry()
        latency_buckets = (.002, .004, .006, .008, .01, .015, .02, .03, .05, .075, .1, .2, .5, 1, 2.5)
        self.requests = prometheus_client.Counter(
            "hbt_http_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
            registry=self.registry)
        self.latency = prometheus_client.Histogram(
            "hbt_http_request_duration_seconds", "Time to answer an HTTP request", ["endpoint"],
            buckets=latency_buckets, registry=self.registry)
        self.stages = prometheus_client.Histogram(
            "hbt_search_stage_seconds", "Time a search request spent in each stage", ["stage"],
            buckets=(.0001, .0005, .001,) + latency_buckets, registry=self.registry)
        self.batch = prometheus_client.Histogram(
            "hbt_encoder_batch_queries", "Queries encoded together with a request's",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.embedding_batch = prometheus_client.Histogram(
            "hbt_embedding_batch_tokens", "Tokens embedded together with a /v1/embeddings request's",
            buckets=tuple(2 ** n for n in range(4, 17)), registry=self.registry)
        self.documents = prometheus_client.Gauge("hbt_index_documents", "Live documents", registry=self.registry)
        self.generation = prometheus_client.Gauge("hbt_index_generation", "Commit being served", registry=self.registry)
        self.refresh_failures = prometheus_client.Counter(
            "hbt_index_refresh_failures", "Failed attempts to open a new commit", registry=self.registry)
        self.refresh_failing = prometheus_client.Gauge(
            "hbt_index_refresh_failing", "1 while the newest commit cannot be opened (an older one is served)",
            registry=self.registry)


def host_name(header: str) -> str:
    """The name in a Host header, without its port or IPv6 brackets: "[::1]:8080" -> "::1"."""
    header = header.strip().lower()
    name = header[1:].partition("]")[0] if header.startswith("[") else header.partition(":")[0]
    return name.rstrip(".")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Observe:
    """ASGI middleware: counts and times every request by endpoint and status; checks the Host and the token.

    The Host check stops DNS rebinding: a web page from evil.example whose name comes to
    resolve to 127.0.0.1 reaches this server from the victim's browser, with its own name
    in the Host header.
    """

    def __init__(self, app, metrics: Metrics, token: str | None, allowed_hosts: set[str]):
        self.app, self.metrics = app, metrics
        self.token = token.encode() if token else None
        self.allowed_hosts = None if "*" in allowed_hosts else allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = ENDPOINTS.get(path) or ("static" if path.startswith("/static/") else "other")
        status = 500  # unless a response starts

        async def send_observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        headers = Headers(scope=scope)
        try:
            if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
                response = error_response(421, f"Host {headers.get('host', '')!r} is not served here: use "
                                               "http://127.0.0.1, or start hbt-serve with --allowed-host NAME", path)
                await response(scope, receive, send_observed)
            elif self.token and endpoint not in PUBLIC and not self._authorized(headers):
                response = error_response(401, "missing or wrong token: send the header Authorization: Bearer TOKEN",
                                          path, code="invalid_api_key")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send_observed)
            else:
                await self.app(scope, receive, send_observed)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").strip().partition(" ")
        # The scheme is case-insensitive (RFC 9110); the token is not.
        return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode("latin-1"), self.token)


class SearchService:
    """The search endpoints over one Searcher; queries go through a micro-batcher to its encoder."""

    def __init__(self, searcher, config: ServeConfig, metrics: Metrics):
        self.searcher, self.config, self.metrics = searcher, config, metrics
        self.refresh_error: str | None = None  # why the newest commit cannot be opened, while it cannot
        self.refresh_failures = 0  # in a row
        self.batcher: MicroBatcher | None = None  # made in the running loop, by lifespan()
        self._update_gauges()

    @contextlib.asynccontextmanager
    async def lifespan(self):
        self.batcher = MicroBatcher(self._search_batch, self.config.max_batch, self.config.max_wait_ms / 1000,
                                    size=lambda query: len(query.texts), workers=self.config.workers)
        async with self.batcher:
            follower = asyncio.create_task(self._follow_commits())
            try:
                yield
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    async def search(self, request: Request) -> Response:
        """POST /search (hbt.serve.openapi describes the body and the answer)."""
        start = time.perf_counter()
        config = self.config
        # JSON may escape each character as \uXXXX (12 bytes for a surrogate pair).
        body = await read_body(request, config.max_queries * (config.max_query_chars * 12 + 16) + 4096,
                               config.body_seconds,
                               f"send at most {config.max_queries} queries of {config.max_query_chars} characters")
        query = parse_query(body, request.headers.get("content-type"), config, self.searcher.index.languages)
        run, batch, queued = await self.batcher.submit(query)
        timings = {"queue": queued * 1000, **run.timings}
        for stage, milliseconds in timings.items():
            self.metrics.stages.labels(stage).observe(milliseconds / 1000)
        self.metrics.batch.observe(batch)
        timings["total"] = (time.perf_counter() - start) * 1000
        return JSONResponse({
            "results": [{"query": text, "hits": [hit.__dict__ for hit in hits]}
                        for text, hits in zip(query.texts, run.hits)],
            "timings": {stage: round(ms, 3) for stage, ms in timings.items()},
            "batch": batch, "plan": run.plan,
        })

    def health(self) -> dict:
        """GET /health's answer: it is open without the token, so it says nothing the index's files would not."""
        index = self.searcher.index
        return {"status": "stale" if self.refresh_failures else "ok", "documents": index.count,
                "generation": index.generation, "refresh_failures": self.refresh_failures}

    def describe(self) -> dict:
        """GET /info's part on the index and why live reload fails if it does."""
        config, index = self.config, self.searcher.index
        info, error = index.info(), self.refresh_error
        if not is_loopback(config.host):  # other machines need not learn the server's paths
            info["bundle"] = {**info["bundle"], "path": Path(info["bundle"]["path"]).name}
            error = error and error.replace(str(index.directory), index.directory.name)
        return {**info, "refresh": {"failures": self.refresh_failures, "error": error}}

    def _search_batch(self, queries: list[Query]) -> list:
        """On the batch thread: the Searcher's batch entry point (one encoder call, failures per request)."""
        return self.searcher.run_batch(queries)

    async def _follow_commits(self) -> None:
        """Open each new commit of the index; requests in flight finish on the snapshot they started with.

        A commit that cannot be opened, whatever the error, leaves the last good snapshot
        serving; it is logged, counted in /health and /metrics, and tried again each round,
        so a repair or a newer commit is picked up.
        """
        while True:
            await asyncio.sleep(self.config.refresh_seconds)
            try:
                changed = await asyncio.to_thread(self.searcher.refresh)
            except Exception as e:
                self.refresh_failures += 1
                self.refresh_error = f"{type(e).__name__}: {e}"
                self.metrics.refresh_failures.inc()
                self.metrics.refresh_failing.set(1)
                log.warning("still serving generation %d: cannot open the newest commit (%s)",
                            self.searcher.index.generation, self.refresh_error)
                continue
            if self.refresh_failures:
                log.warning("live reload works again after %d failed refreshes", self.refresh_failures)
                self.refresh_failures, self.refresh_error = 0, None
                self.metrics.refresh_failing.set(0)
            if changed:
                self._update_gauges()
                log.info("serving generation %d: %d documents", self.searcher.index.generation,
                         self.searcher.index.count)

    def _update_gauges(self) -> None:
        self.metrics.documents.set(self.searcher.index.count)
        self.metrics.generation.set(self.searcher.index.generation)


def create_app(searcher, config: ServeConfig = ServeConfig(), encoder=None) -> Starlette:
    """The ASGI app serving ``searcher`` (a ``hbt.search.Searcher``) and embeddings with its encoder.

    With ``searcher`` None it serves ``encoder`` (a ``hbt.encoder.Encoder``) alone: the
    embeddings API, /info, /health, /metrics; /search and the page answer 404 saying why.
    """
    if searcher is None and encoder is None:
        raise ValueError("give a searcher, or an encoder to serve embeddings only")
    encoder = encoder or searcher.encoder
    metrics = Metrics()
    service = SearchService(searcher, config, metrics) if searcher else None
    embeddings = EmbeddingService(encoder, config.max_batch_tokens, config.max_wait_ms / 1000, config.workers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with contextlib.AsyncExitStack() as stack:
            for running in (service, embeddings):
                if running:
                    await stack.enter_async_context(running.lifespan())
            yield

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def no_index(request: Request) -> Response:
        return error_response(404, f"{request.url.path}: this server embeds only (hbt-serve --embeddings-only) and "
                                   "has no index to search; POST /v1/embeddings, or start hbt-serve --index DIR")

    async def embed(request: Request) -> Response:
        """POST /v1/embeddings (hbt.serve.embeddings; hbt.serve.openapi describes the body and the answer)."""
        body = await read_body(request, config.max_inputs * (config.max_input_chars * 12 + 16) + 4096,
                               config.body_seconds,
                               f"send at most {config.max_inputs} inputs of {config.max_input_chars} characters")
        query = parse_embeddings(body, request.headers.get("content-type"), embeddings.names, encoder.dimension,
                                 config.max_inputs, config.max_input_chars)
        answer, batch_tokens = await embeddings.embed(query)
        metrics.embedding_batch.observe(batch_tokens)
        return JSONResponse(answer)

    async def models(request: Request) -> Response:
        return JSONResponse(embeddings.models())

    async def health(request: Request) -> Response:
        """GET /health: liveness (and, over an index, what its files would say anyway)."""
        return JSONResponse(service.health() if service else {"status": "ok"})

    async def info(request: Request) -> Response:
        """GET /info: the index, the model, the limits, batching, and why live reload fails if it does."""
        search_limits = {"max_k": config.max_k, "max_ef": config.max_ef, "max_queries": config.max_queries,
                         "max_query_chars": config.max_query_chars} if service else {}
        return JSONResponse({
            **(service.describe() if service else {}),
            "model": embeddings.describe(),
            "limits": {**search_limits, "max_inputs": config.max_inputs, "max_input_chars": config.max_input_chars},
            "batching": {"max_batch": config.max_batch, "max_batch_tokens": config.max_batch_tokens,
                         "max_wait_ms": config.max_wait_ms, "workers": config.workers},
            "int8_check": encoder.int8_check and encoder.int8_check.to_json(),
        })

    async def prometheus(request: Request) -> Response:
        """GET /metrics."""
        return Response(prometheus_client.generate_latest(metrics.registry),
                        media_type=prometheus_client.CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        search = {"max_k": config.max_k, "max_ef": config.max_ef, "max_queries": config.max_queries,
                  "max_query_chars": config.max_query_chars,
                  "languages": sorted(searcher.index.languages), "modes": MODES} if searcher else None
        return JSONResponse(describe(__version__, search=search, models=embeddings.names,
                                     dimension=encoder.dimension, max_inputs=config.max_inputs,
                                     max_input_chars=config.max_input_chars, token=bool(config.token)))

    async def client_error(request: Request, e: Exception) -> Response:
        path = request.url.path
        if isinstance(e, OpenAIError):
            return error_response(e.status, str(e), path, e.param, e.code)
        if isinstance(e, BadRequest):
            return error_response(e.status, str(e), path)
        if isinstance(e, HTTPException):
            return error_response(e.status_code, f"{request.method} {path}: {e.detail}", path)
        # An HbtError from the library: bad input it caught.
        return error_response(400 if path.startswith("/v1/") else 422, str(e), path)

    async def server_error(request: Request, e: Exception) -> Response:
        return error_response(500, "internal error; the server log has the details", request.url.path)

    routes = [
        Route("/v1/embeddings", embed, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
        Route("/info", info),
        Route("/metrics", prometheus),
        Route("/openapi.json", openapi),
    ]
    if service:
        routes += [Route("/", page), Route("/search", service.search, methods=["POST"]),
                   Mount("/static", StaticFiles(directory=STATIC), name="static")]
    else:
        routes += [Route("/", no_index), Route("/search", no_index, methods=["GET", "POST"])]
    app = Starlette(
        routes=routes,
        exception_handlers={OpenAIError: client_error, BadRequest: client_error, HTTPException: client_error,
                            HbtError: client_error, Exception: server_error},
        lifespan=lifespan,
    )
    # Names as given ("::1", "[::1]", "Example.org"), compared as host_name() reads a Host header.
    allowed_hosts = {name.strip().lower().strip("[]").rstrip(".")
                     for name in (*LOOPBACK_NAMES, config.host, *config.allowed_hosts)}
    app.add_middleware(Observe, metrics=metrics, token=config.token, allowed_hosts=allowed_hosts)
    return app
