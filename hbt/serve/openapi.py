"""The server's OpenAPI description, written from its limits, the model and the index's languages so a fuzzer
can trust it."""

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
                "description": "milliseconds: queue, encode, search, lexical, fuse, fetch, total (as run)"},
    "batch": {"type": "integer", "minimum": 1, "description": "queries encoded together with this request's"},
    "plan": {"type": "string", "description": "the mode that ran, and the plan each segment ran"}}}
HEALTH = {"type": "object", "required": ["status", "documents", "generation", "refresh_failures"], "properties": {
    "status": {"enum": ["ok", "stale"], "description": "stale: the newest commit cannot be opened; the last good "
                                                       "one is served (GET /info says why)"},
    "documents": {"type": "integer", "minimum": 0}, "generation": {"type": "integer", "minimum": 0},
    "refresh_failures": {"type": "integer", "minimum": 0, "description": "failed refreshes in a row"}}}


OPENAI_ERROR = {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string", "description": "one line: what was wrong and what to do"},
        "type": {"type": "string"}, "param": {"type": "string", "nullable": True},
        "code": {"type": "string", "nullable": True}}}}}
EMBEDDINGS = {"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
    "object": {"enum": ["list"]}, "model": {"type": "string"},
    "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"], "properties": {
        "object": {"enum": ["embedding"]}, "index": {"type": "integer", "minimum": 0},
        "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                {"type": "string", "description": "base64 of little-endian float32"}]}}}},
    "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"], "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0}, "total_tokens": {"type": "integer", "minimum": 0}},
        "description": "tokens the model ran over: each input with its prompt and 2 special tokens"}}}


def describe(version: str, *, search: dict | None, models: list[str], dimension: int, max_inputs: int,
             max_input_chars: int, token: bool) -> dict:
    """OpenAPI 3.0 for POST /v1/embeddings, GET /v1/models, /health, /info and /metrics, and over an index
    (``search``: its limits and languages) POST /search."""
    errors = {"4XX": {"description": "a client error", "content": {"application/json": {"schema": ERROR}}}}
    openai_errors = {"4XX": {"description": "a client error, in OpenAI's shape",
                             "content": {"application/json": {"schema": OPENAI_ERROR}}}}

    def get(summary: str, schema: dict, media_type: str = "application/json", failures: dict = errors) -> dict:
        return {"get": {"summary": summary, "responses": {
            "200": {"description": "OK", "content": {media_type: {"schema": schema}}}, **failures}}}

    health = HEALTH if search else {"type": "object", "required": ["status"],
                                    "properties": {"status": {"enum": ["ok"]}}}
    paths = {
        "/v1/embeddings": {"post": {
            "summary": "Embed texts (OpenAI's embeddings API; input_type picks the model's query or passage prompt).",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": embeddings_body(models, dimension, max_inputs, max_input_chars),
                "example": {"input": ["Wer hat das Penicillin entdeckt?"], "model": models[0]}}}},
            "responses": {"200": {"description": "a vector per input, in order, and the tokens counted",
                                  "content": {"application/json": {"schema": EMBEDDINGS}}}, **openai_errors}}},
        "/v1/models": get("The model this server embeds with.", {"type": "object"}, failures=openai_errors),
        "/health": get("Liveness" + (", the live documents and the commit being served" if search else "") +
                       " (no token needed).", health),
        "/info": get("The index, the model, the server's limits and batching, and the state of live reload.",
                     {"type": "object"}),
        "/metrics": get("Prometheus metrics.", {"type": "string"}, "text/plain"),
    }
    if search:
        paths["/search"] = search_path(**search, errors=errors)
    described = {"openapi": "3.0.3", "info": {"title": "hbt search", "version": version}, "paths": paths}
    if token:
        described["components"] = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
        described["security"] = [{"bearer": []}]
        paths["/health"]["get"]["security"] = []
    return described


def embeddings_body(models: list[str], dimension: int, max_inputs: int, max_input_chars: int) -> dict:
    text = {"type": "string", "minLength": 1, "maxLength": max_input_chars,
            "description": "text in any language, valid Unicode; at most the model's max_length tokens (GET /info)"}
    return {"type": "object", "additionalProperties": False, "required": ["input", "model"], "properties": {
        "input": {"oneOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": max_inputs}]},
        "model": {"type": "string", "enum": models, "description": "the bundle's directory name, source or fingerprint"},
        "encoding_format": {"enum": ["float", "base64"], "default": "float",
                            "description": "base64: little-endian float32, as OpenAI gives"},
        "dimensions": {"type": "integer", "enum": [dimension],
                       "description": "only the model's own: a bundle records no Matryoshka training"},
        "input_type": {"enum": ["query", "passage"], "default": "query",
                       "description": "hbt's extension: which of the model's prompts goes before each input"},
        "user": {"type": "string", "description": "taken and ignored, as OpenAI's clients may send it"}}}


def search_path(*, max_k: int, max_ef: int, max_queries: int, max_query_chars: int, languages: list[str],
                modes: tuple[str, ...], errors: dict) -> dict:
    """POST /search, from the server's limits and the index's languages."""
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
                          {"type": "string"}, "description": "only documents in these languages"},
                "mode": {"enum": list(modes), "default": "auto",
                         "description": "dense, lexical (BM25), hybrid (both, fused), or auto: hybrid when langs "
                                        "is exactly [query_lang] in an index with lexical parts, else dense"},
                "query_lang": {"type": "string", "minLength": 1, "pattern": r"\S",
                               "description": "the queries' language (any code): auto fuses only when langs is "
                                              "exactly this one language"}}}
    return {"post": {
        "summary": "Search the index with queries in any language.",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": body, "example": {"query": "Wer hat das Penicillin entdeckt?", "k": 5}}}},
        "responses": {"200": {"description": "hits per query, stage timings, batch size and plan",
                              "content": {"application/json": {"schema": RESULTS}}}, **errors}}}
