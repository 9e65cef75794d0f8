"""The server's OpenAPI description, written from its limits and the index's languages so a fuzzer can trust it."""

from __future__ import annotations

ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
         "properties": {"error": {"type": "string", "description": "one line: what was wrong and what to do"}}}
HIT = {"type": "object", "required": ["rank", "score", "id", "lang", "title", "text"], "properties": {
    "rank": {"type": "integer", "minimum": 1}, "score": {"type": "number"}, "id": {"type": "string"},
    "lang": {"type": "string"}, "title": {"type": "string"}, "text": {"type": "string"}}}
RESULTS = {"type": "object", "required": ["results", "timings", "batch", "plan"], "properties": {
    "results": {"type": "array", "items": {"type": "object", "required": ["query", "hits"], "properties": {
        "query": {"type": "string"}, "hits": {"type": "array", "items": HIT}}}},
    "timings": {"type": "object", "additionalProperties": {"type": "number"},
                "description": "milliseconds: queue, encode, search, fetch, total"},
    "batch": {"type": "integer", "minimum": 1, "description": "queries encoded together with this request's"},
    "plan": {"type": "string", "description": "the plan each segment ran"}}}
HEALTH = {"type": "object", "required": ["status", "documents", "generation", "refresh_failures"], "properties": {
    "status": {"enum": ["ok", "stale"], "description": "stale: the newest commit cannot be opened; the last good "
                                                       "one is served (GET /info says why)"},
    "documents": {"type": "integer", "minimum": 0}, "generation": {"type": "integer", "minimum": 0},
    "refresh_failures": {"type": "integer", "minimum": 0, "description": "failed refreshes in a row"}}}


def describe(version: str, *, max_k: int, max_ef: int, max_queries: int, max_query_chars: int,
             languages: list[str], token: bool) -> dict:
    """OpenAPI 3.0 for POST /search, GET /health, /info and /metrics."""
    text = {"type": "string", "minLength": 1, "maxLength": max_query_chars, "pattern": r"\S",
            "description": "a query in any language; not blank, valid Unicode (no lone surrogates)"}
    body = {"type": "object", "additionalProperties": False,
            "oneOf": [{"required": ["query"]}, {"required": ["queries"]}],
            "properties": {
                "query": text,
                "queries": {"type": "array", "items": text, "minItems": 1, "maxItems": max_queries},
                "k": {"type": "integer", "minimum": 1, "maximum": max_k, "default": 10,
                      "description": "hits per query"},
                "ef": {"type": "integer", "minimum": 1, "maximum": max_ef,
                       "description": "HNSW search beam (default: the index's)"},
                "langs": {"type": "array", "items": {"type": "string", "enum": languages} if languages else
                          {"type": "string"}, "description": "only documents in these languages"}}}
    errors = {"4XX": {"description": "a client error", "content": {"application/json": {"schema": ERROR}}}}

    def get(summary: str, schema: dict, media_type: str = "application/json") -> dict:
        return {"get": {"summary": summary, "responses": {
            "200": {"description": "OK", "content": {media_type: {"schema": schema}}}, **errors}}}

    paths = {
        "/search": {"post": {
            "summary": "Search the index with queries in any language.",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": body, "example": {"query": "Wer hat das Penicillin entdeckt?", "k": 5}}}},
            "responses": {"200": {"description": "hits per query, stage timings, batch size and plan",
                                  "content": {"application/json": {"schema": RESULTS}}}, **errors}}},
        "/health": get("Liveness, the live documents and the commit being served (no token needed).", HEALTH),
        "/info": get("The index, the server's limits and batching, and the state of live reload.",
                     {"type": "object"}),
        "/metrics": get("Prometheus metrics.", {"type": "string"}, "text/plain"),
    }
    described = {"openapi": "3.0.3", "info": {"title": "hbt search", "version": version}, "paths": paths}
    if token:
        described["components"] = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
        described["security"] = [{"bearer": []}]
        paths["/health"]["get"]["security"] = []
    return described
