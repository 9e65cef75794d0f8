"""POST /v1/embeddings in OpenAI's shape over a bundle's encoder, batched by a budget of tokens.

Requests that arrive together are embedded together: a batch takes waiting requests
until their tokens fill ``max_batch_tokens`` (as text-embeddings-inference does), not
up to a count of requests. Inside a batch, the texts of each input type are sorted by
length and cut into encoder calls (``padded_chunks``): the runtime pads every text of a
call to its longest, and padding costs as much as text, so a text joins a call only
while the padding it adds costs less than a call of its own would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np

from hbt.serve.batching import MicroBatcher

INPUT_TYPES = ("query", "passage")
# e5's card: "query: " for every use but the documents of asymmetric retrieval (similarity,
# clustering, classification too), so a client that knows nothing of input_type gets it.
DEFAULT_INPUT_TYPE = "query"
ENCODING_FORMATS = ("float", "base64")
FIELDS = ("input", "model", "encoding_format", "dimensions", "input_type", "user")
# What one encoder call costs beyond its tokens, counted in tokens: the graph's fixed work per
# call against its work per token, a ratio of the model's kernels more than of the CPU's speed
# (e5-small int8, one thread, 16 equal texts: about 10 to 25 on the shared 2-vCPU Xeon, noisily).
CALL_TOKENS = 16


class OpenAIError(Exception):
    """A client error on /v1/: an HTTP status, a one-line message, the field at fault and OpenAI's code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclasses.dataclass(frozen=True)
class EmbeddingsRequest:
    """A validated POST /v1/embeddings body."""

    texts: list[str]
    input_type: str = DEFAULT_INPUT_TYPE
    encoding_format: str = "float"


@dataclasses.dataclass(frozen=True)
class Job:
    """One request's texts on their way through the batcher, with the tokens each takes."""

    texts: list[str]
    input_type: str
    lengths: list[int]


def model_names(encoder) -> list[str]:
    """The names a request may give as ``model``: the bundle's directory, its source, its fingerprint.

    The first is the one answers carry. A source that is a path on this machine is
    named by its last part only, as /openapi.json lists these names.
    """
    source = encoder.manifest.source
    names = [encoder.bundle_dir.name, Path(source).name, *([] if Path(source).is_absolute() else [source]),
             encoder.manifest.fingerprint]
    return list(dict.fromkeys(name for name in names if name))


def parse_embeddings(body: bytes, content_type: str | None, names: list[str], dimension: int, max_inputs: int,
                     max_input_chars: int) -> EmbeddingsRequest:
    """Validate a POST /v1/embeddings body (before its tokens are counted)."""
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise OpenAIError(415, f"content type {content_type or 'missing'}: send Content-Type: application/json")
    try:
        fields = json.loads(body)
    except RecursionError:
        raise OpenAIError(400, "the body nests too deeply: send an object such as "
                               '{"input": "...", "model": "..."}') from None
    except ValueError as e:
        raise OpenAIError(400, f'the body is not valid JSON ({e}); send an object such as {{"input": "...", '
                               f'"model": "{names[0]}"}}') from None
    if not isinstance(fields, dict):
        raise OpenAIError(400, f'the body must be a JSON object such as {{"input": "...", "model": "{names[0]}"}}')
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise OpenAIError(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}", unknown[0])
    model = fields.get("model")
    if not isinstance(model, str):
        raise OpenAIError(400, f'model is required: "{names[0]}" (GET /v1/models lists it)', "model")
    if model not in names:
        raise OpenAIError(404, f"model {model!r} is not served here; this server embeds with {names[0]!r}",
                          "model", "model_not_found")
    texts = _texts(fields.get("input"), max_inputs, max_input_chars)
    input_type = fields.get("input_type", DEFAULT_INPUT_TYPE)
    if input_type not in INPUT_TYPES:
        raise OpenAIError(400, f"input_type {json.dumps(input_type)}: one of {', '.join(INPUT_TYPES)} "
                               f"(default {DEFAULT_INPUT_TYPE})", "input_type")
    encoding_format = fields.get("encoding_format", "float")
    if encoding_format not in ENCODING_FORMATS:
        raise OpenAIError(400, f"encoding_format {json.dumps(encoding_format)}: one of "
                               f"{', '.join(ENCODING_FORMATS)}", "encoding_format")
    dimensions = fields.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or dimensions != dimension):
        # Cutting a vector short keeps its meaning only for a model trained to (Matryoshka);
        # a bundle does not record such training, so only the full size is served.
        raise OpenAIError(400, f"dimensions {json.dumps(dimensions)}: this model gives {dimension}-dimensional "
                               "vectors and its bundle records no Matryoshka training, so shorter ones would lose "
                               f"accuracy unpredictably; leave dimensions out or give {dimension}", "dimensions")
    if "user" in fields and not isinstance(fields["user"], str):
        raise OpenAIError(400, "user must be a string", "user")
    return EmbeddingsRequest(texts, input_type, encoding_format)


def _texts(given, max_inputs: int, max_input_chars: int) -> list[str]:
    if isinstance(given, str):
        texts = [given]
    elif isinstance(given, list) and given and all(isinstance(text, str) for text in given):
        texts = given
    elif isinstance(given, list) and given:
        raise OpenAIError(400, "input must be a string or a list of strings: token arrays are not taken, since "
                               "they would have to come from this bundle's tokenizer", "input")
    else:
        raise OpenAIError(400, "input must be a non-empty string or a non-empty list of strings", "input")
    if len(texts) > max_inputs:
        raise OpenAIError(400, f"{len(texts)} inputs: at most {max_inputs} per request", "input")
    for number, text in enumerate(texts):
        if not text:
            raise OpenAIError(400, f"input {number} is an empty string: give text to embed", "input")
        if len(text) > max_input_chars:
            raise OpenAIError(400, f"input {number} has {len(text)} characters: at most {max_input_chars}", "input")
        # JSON may escape half a surrogate pair ("\ud800"); the tokenizer cannot take it.
        surrogate = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
        if surrogate:
            raise OpenAIError(400, f"input {number} holds a lone surrogate (U+{ord(surrogate):04X}), which is not "
                                   "text: send valid Unicode", "input")
    return texts


def padded_chunks(lengths: list[int], budget: int, call_tokens: int = CALL_TOKENS) -> list[tuple[int, int]]:
    """Cut lengths sorted ascending into [start, end) runs, one encoder call each.

    The next text joins the run while the padding it adds to the run's texts (count x its
    extra length) costs at most ``call_tokens`` and the run's padded size (count x longest)
    stays within ``budget``; a run holds at least one text, however long.
    """
    chunks, start = [], 0
    for end in range(1, len(lengths) + 1):
        count = end - 1 - start  # the run's texts before this one
        if count and ((count + 1) * lengths[end - 1] > budget
                      or count * (lengths[end - 1] - lengths[end - 2]) > call_tokens):
            chunks.append((start, end - 1))
            start = end - 1
    if lengths:
        chunks.append((start, len(lengths)))
    return chunks


def to_base64(vector: np.ndarray) -> str:
    """Little-endian float32, base64-encoded: what OpenAI's encoding_format "base64" gives."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


class EmbeddingService:
    """POST /v1/embeddings and GET /v1/models over one encoder; requests go through a token-budget batcher."""

    def __init__(self, encoder, max_batch_tokens: int, max_wait: float, workers: int):
        self.encoder, self.max_batch_tokens = encoder, max_batch_tokens
        self.max_wait, self.workers = max_wait, workers
        self.names = model_names(encoder)
        manifest = encoder.manifest
        self.prompts = {"query": manifest.query_prefix, "passage": manifest.passage_prefix}
        self.batcher: MicroBatcher | None = None  # made in the running loop, by lifespan()

    @contextlib.asynccontextmanager
    async def lifespan(self):
        self.batcher = MicroBatcher(self._embed_batch, self.max_batch_tokens, self.max_wait,
                                    size=lambda job: sum(job.lengths), workers=self.workers)
        async with self.batcher:
            yield

    def describe(self) -> dict:
        """The model as /info shows it."""
        manifest = self.encoder.manifest
        return {"id": self.names[0], "names": self.names, "dimension": manifest.dimension,
                "max_length": manifest.max_length, "pooling": manifest.pooling, "normalize": manifest.normalize,
                "prompts": self.prompts, "default_input_type": DEFAULT_INPUT_TYPE,
                "quantization": manifest.quantization}

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.names[0], "object": "model", "created": 0, "owned_by": "hbt"}]}

    async def embed(self, request: EmbeddingsRequest) -> tuple[dict, int]:
        """OpenAI's answer (a vector per input, in order, and the tokens the model ran over), and the
        tokens of the batch it ran in."""
        lengths = await asyncio.to_thread(self.token_counts, request.texts, request.input_type)
        longest = max(lengths)
        if longest > self.encoder.manifest.max_length:
            number = lengths.index(longest)
            raise OpenAIError(400, f"input {number} is {longest} tokens long with its prompt and the 2 special "
                                   f"tokens: this model takes at most {self.encoder.manifest.max_length}; split it",
                              "input", "context_length_exceeded")
        vectors, batch, _ = await self.batcher.submit(Job(request.texts, request.input_type, lengths))
        encode = to_base64 if request.encoding_format == "base64" else lambda vector: vector.tolist()
        tokens = sum(lengths)
        return {"object": "list", "model": self.names[0],
                "data": [{"object": "embedding", "index": i, "embedding": encode(vector)}
                         for i, vector in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, batch

    def token_counts(self, texts: list[str], input_type: str) -> list[int]:
        """Tokens per text as the model runs it: the prompt, the text and the 2 special tokens, uncut."""
        ids, _ = self.encoder.tokenizer.encode([self.prompts[input_type] + text for text in texts], None)
        return [len(row) for row in ids]

    def _embed_batch(self, jobs: list[Job]) -> list[np.ndarray | Exception]:
        """On the batch thread: every job's vectors; if the batch fails, each job is embedded alone."""
        try:
            return self._embed_together(jobs)
        except Exception as e:
            if len(jobs) == 1:
                return [e]
        return [self._embed_alone(job) for job in jobs]

    def _embed_alone(self, job: Job) -> np.ndarray | Exception:
        try:
            return self._embed_together([job])[0]
        except Exception as e:
            return e

    def _embed_together(self, jobs: list[Job]) -> list[np.ndarray]:
        out = [np.empty((len(job.texts), self.encoder.dimension), dtype=np.float32) for job in jobs]
        encode = {"query": self.encoder.encode_queries, "passage": self.encoder.encode_passages}
        for input_type in INPUT_TYPES:
            rows = sorted((length, j, i) for j, job in enumerate(jobs) if job.input_type == input_type
                          for i, length in enumerate(job.lengths))
            for start, end in padded_chunks([length for length, _, _ in rows], self.max_batch_tokens):
                chunk = rows[start:end]
                vectors = encode[input_type]([jobs[j].texts[i] for _, j, i in chunk], batch_size=len(chunk))
                for (_, j, i), vector in zip(chunk, vectors):
                    out[j][i] = vector
        return out
