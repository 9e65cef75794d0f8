"""The HTTP API and the search page over a Searcher: micro-batched queries, live index updates, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
    from starlette.schemas import SchemaGenerator
    from starlette.staticfiles import StaticFiles
except ImportError as e:
    raise ImportError(f"hbt's server needs the serve extra ({e.name} is missing): pip install 'hbt[serve]'",
                      name=e.name) from e

from hbt import __version__
from hbt.errors import HbtError
from hbt.serve.batching import MicroBatcher

log = logging.getLogger("hbt.serve")
STATIC = Path(__file__).parent / "static"
# Request counts and latencies are labelled by endpoint; any other path counts as "other".
ENDPOINTS = {"/": "page", "/search": "search", "/info": "info", "/health": "health", "/metrics": "metrics",
             "/openapi.json": "openapi"}
PUBLIC = {"page", "static", "health"}  # open without the token: the page holds no data, it asks for the token
FIELDS = ("query", "queries", "k", "ef", "langs")


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


@dataclasses.dataclass(frozen=True)
class Query:
    """A validated POST /search body."""

    texts: list[str]
    k: int = 10
    ef: int | None = None
    langs: list[str] | None = None


class BadRequest(Exception):
    """A client error: an HTTP status and a one-line message for the JSON body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def parse_query(body: bytes, content_type: str | None, config: ServeConfig, languages: dict[str, int]) -> Query:
    """Validate a POST /search body against the limits and the index's languages."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise BadRequest(415, f"content type {content_type or 'missing'}: send Content-Type: application/json")
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
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
    return Query(texts, k, ef, langs or None)


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
        self.documents = prometheus_client.Gauge("hbt_index_documents", "Live documents", registry=self.registry)
        self.generation = prometheus_client.Gauge("hbt_index_generation", "Commit being served", registry=self.registry)


class Observe:
    """ASGI middleware: counts and times every request by endpoint and status; checks the bearer token."""

    def __init__(self, app, metrics: Metrics, token: str | None):
        self.app, self.metrics = app, metrics
        self.expected = f"Bearer {token}".encode() if token else None

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
        try:
            if self.expected and endpoint not in PUBLIC and not self._authorized(scope):
                response = error_response(401, "missing or wrong token: send the header Authorization: Bearer TOKEN")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send_observed)
            else:
                await self.app(scope, receive, send_observed)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _authorized(self, scope) -> bool:
        given = Headers(scope=scope).get("authorization", "").encode()
        return secrets.compare_digest(given, self.expected)


class SearchService:
    """The endpoints over one Searcher; queries go through a micro-batcher to its encoder."""

    def __init__(self, searcher, config: ServeConfig):
        self.searcher, self.config = searcher, config
        self.metrics = Metrics()
        self.batcher: MicroBatcher | None = None  # made in the running loop, by lifespan()
        self._update_gauges()

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
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
        """
        summary: Search the index with queries in any language.
        requestBody:
          content:
            application/json:
              schema:
                type: object
                properties:
                  query: {type: string, description: "one query (or give queries)"}
                  queries: {type: array, items: {type: string}, description: "several queries"}
                  k: {type: integer, minimum: 1, default: 10, description: "hits per query"}
                  ef: {type: integer, minimum: 1, description: "HNSW search beam (default the index's)"}
                  langs: {type: array, items: {type: string}, description: "only documents in these languages"}
              example: {"query": "Wer hat das Penicillin entdeckt?", "k": 5, "langs": ["en", "fr"]}
        responses:
          200:
            description: >
              results (one per query: the query and its hits with rank, score, id, lang, title and
              text), timings in milliseconds (queue, encode, search, fetch, total), batch (queries
              encoded together) and plan.
          4XX: {description: 'A one-line {"error": "..."}'}
        """
        start = time.perf_counter()
        body = await self._read_body(request)
        query = parse_query(body, request.headers.get("content-type"), self.config, self.searcher.index.languages)
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

    async def health(self, request: Request) -> Response:
        """
        summary: Liveness, the live documents and the commit being served (no token needed).
        responses: {200: {description: '{"status": "ok", "documents": N, "generation": G}'}}
        """
        index = self.searcher.index
        return JSONResponse({"status": "ok", "documents": index.count, "generation": index.generation})

    async def info(self, request: Request) -> Response:
        """
        summary: The index (documents per language, segments, bundle, HNSW parameters) and the server's limits.
        responses: {200: {description: The index summary, with limits and batching.}}
        """
        config = self.config
        return JSONResponse({
            **self.searcher.index.info(),
            "limits": {"max_k": config.max_k, "max_ef": config.max_ef, "max_queries": config.max_queries,
                       "max_query_chars": config.max_query_chars},
            "batching": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms, "workers": config.workers},
        })

    async def prometheus(self, request: Request) -> Response:
        """
        summary: Prometheus metrics (requests by endpoint and status, latency, stage timings, batch sizes).
        responses: {200: {description: Prometheus text format.}}
        """
        return Response(prometheus_client.generate_latest(self.metrics.registry),
                        media_type=prometheus_client.CONTENT_TYPE_LATEST)

    async def _read_body(self, request: Request) -> bytes:
        # JSON may escape each character as \uXXXX (12 bytes for a surrogate pair).
        limit = self.config.max_queries * (self.config.max_query_chars * 12 + 16) + 4096
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BadRequest(413, f"a body over {limit} bytes: send at most {self.config.max_queries} "
                                      f"queries of {self.config.max_query_chars} characters")
        return bytes(body)

    def _search_batch(self, queries: list[Query]) -> list:
        """On the batch thread: encode every query of the batch in one call, then search each request."""
        start = time.perf_counter()
        vectors = self.searcher.encoder.encode_queries([text for query in queries for text in query.texts])
        encode_ms = (time.perf_counter() - start) * 1000
        runs, row = [], 0
        for query in queries:
            try:
                run = self.searcher.run_vectors(vectors[row : row + len(query.texts)], query.k, query.ef, query.langs)
                runs.append(dataclasses.replace(run, timings={"encode": encode_ms, **run.timings}))
            except HbtError as e:
                runs.append(e)
            row += len(query.texts)
        return runs

    async def _follow_commits(self) -> None:
        """Open each new commit of the index; requests in flight finish on the snapshot they started with."""
        while True:
            await asyncio.sleep(self.config.refresh_seconds)
            try:
                if await asyncio.to_thread(self.searcher.refresh):
                    self._update_gauges()
                    log.info("serving generation %d: %d documents", self.searcher.index.generation,
                             self.searcher.index.count)
            except HbtError as e:
                log.warning("still serving generation %d: cannot open the new commit (%s)",
                            self.searcher.index.generation, e)

    def _update_gauges(self) -> None:
        self.metrics.documents.set(self.searcher.index.count)
        self.metrics.generation.set(self.searcher.index.generation)


def create_app(searcher, config: ServeConfig = ServeConfig()) -> Starlette:
    """The ASGI app serving ``searcher`` (a ``hbt.search.Searcher``)."""
    service = SearchService(searcher, config)
    schemas = SchemaGenerator({"openapi": "3.0.0", "info": {"title": "hbt search", "version": __version__}})

    async def openapi(request: Request) -> Response:
        return JSONResponse(schemas.get_schema(routes=app.routes))

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def client_error(request: Request, e: Exception) -> Response:
        if isinstance(e, BadRequest):
            return error_response(e.status, str(e))
        if isinstance(e, HTTPException):
            return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}")
        return error_response(422, str(e))  # an HbtError from the library: bad input it caught

    async def server_error(request: Request, e: Exception) -> Response:
        return error_response(500, "internal error; the server log has the details")

    app = Starlette(
        routes=[
            Route("/", page, include_in_schema=False),
            Route("/search", service.search, methods=["POST"]),
            Route("/health", service.health),
            Route("/info", service.info),
            Route("/metrics", service.prometheus),
            Route("/openapi.json", openapi, include_in_schema=False),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={BadRequest: client_error, HTTPException: client_error, HbtError: client_error,
                            Exception: server_error},
        lifespan=service.lifespan,
    )
    app.add_middleware(Observe, metrics=service.metrics, token=config.token)
    return app
