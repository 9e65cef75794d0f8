"""POST /v1/embeddings: OpenAI's shape, the encoder's own vectors, token-budget batching, the openai client."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'hbt[serve]'")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx (the dev extra)")

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

with warnings.catch_warnings():  # Starlette 1.x would rather have httpx2; httpx works with every version
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from hbt.serve.app import ServeConfig, create_app
from hbt.serve.embeddings import model_names, padded_chunks, to_base64
from tests.conftest import MULTILINGUAL

CONFIG = ServeConfig(max_inputs=8, max_input_chars=300)


@pytest.fixture(scope="module")
def encoder(tiny_bundle):
    from hbt.encoder import Encoder

    return Encoder(tiny_bundle, threads=1)


@pytest.fixture()
def client(encoder):
    with TestClient(create_app(None, CONFIG, encoder=encoder), base_url="http://localhost") as client:
        yield client


def embed(client, body: dict, **headers):
    return client.post("/v1/embeddings", content=json.dumps(body), headers={"Content-Type": "application/json",
                                                                           **headers})


def vectors(answer: dict) -> np.ndarray:
    """The answer's vectors [N, d] as float32, from either encoding, in the order of their indexes."""
    rows = sorted(answer["data"], key=lambda row: row["index"])
    assert [row["index"] for row in rows] == list(range(len(rows)))
    return np.array([np.frombuffer(base64.b64decode(row["embedding"]), "<f4") if isinstance(row["embedding"], str)
                     else np.array(row["embedding"], dtype=np.float32) for row in rows])


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
@pytest.mark.parametrize("input_type", [None, "query", "passage"])
def test_vectors_are_the_encoders_own(client, encoder, tiny_bundle, encoding_format, input_type):
    texts = MULTILINGUAL[:5]
    body = {"input": texts, "model": tiny_bundle.name, "encoding_format": encoding_format}
    if input_type:
        body["input_type"] = input_type
    response = embed(client, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    # The default input type is "query": a client knowing nothing of input_type gets the query prompt.
    expected = encoder.encode_passages(texts) if input_type == "passage" else encoder.encode_queries(texts)
    np.testing.assert_array_equal(vectors(answer), expected)
    assert answer["object"] == "list" and answer["model"] == tiny_bundle.name
    assert {row["object"] for row in answer["data"]} == {"embedding"}
    prompt = encoder.manifest.passage_prefix if input_type == "passage" else encoder.manifest.query_prefix
    tokens = sum(len(ids) for ids in encoder.tokenizer.encode([prompt + t for t in texts], 10_000)[0])
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_a_string_input_and_every_model_name(client, encoder, tiny_bundle):
    names = model_names(encoder)
    assert names[0] == tiny_bundle.name and encoder.manifest.fingerprint in names
    for name in names:
        answer = embed(client, {"input": "猫在温暖的窗台上睡觉。", "model": name, "dimensions": encoder.dimension}).json()
        assert len(answer["data"]) == 1 and answer["model"] == tiny_bundle.name
        np.testing.assert_array_equal(vectors(answer), encoder.encode_queries(["猫在温暖的窗台上睡觉。"]))
    assert client.get("/v1/models").json()["data"][0]["id"] == tiny_bundle.name


@pytest.mark.parametrize(("body", "status", "param", "says"), [
    ({"input": []}, 400, "input", "non-empty"),
    ({"input": ""}, 400, "input", "input 0 is an empty string"),
    ({"input": ["cat", ""]}, 400, "input", "input 1 is an empty string"),
    ({"input": ["cat", 3]}, 400, "input", "token arrays"),
    ({"input": [[1, 2, 3]]}, 400, "input", "token arrays"),
    ({"input": None}, 400, "input", "non-empty string"),
    ({"input": ["cat"] * 9}, 400, "input", "at most 8 per request"),
    ({"input": "x" * 301}, 400, "input", "at most 300"),
    ({"input": "cat \ud800"}, 400, "input", "lone surrogate (U+D800)"),
    ({"input": "cat", "encoding_format": "int8"}, 400, "encoding_format", 'encoding_format "int8"'),
    ({"input": "cat", "dimensions": 8}, 400, "dimensions", "Matryoshka"),
    ({"input": "cat", "dimensions": True}, 400, "dimensions", "dimensions true"),
    ({"input": "cat", "input_type": "document"}, 400, "input_type", "query, passage"),
    ({"input": "cat", "temperature": 1}, 400, "temperature", "unknown field 'temperature'"),
    ({"input": "cat", "model": None}, 400, "model", "model is required"),
    ({"input": "cat", "model": "text-embedding-3-small"}, 404, "model", "not served here"),
])
def test_bad_input_gets_a_4xx_in_openais_error_shape(client, tiny_bundle, body, status, param, says):
    body = {"model": tiny_bundle.name, **body}
    response = embed(client, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and says in error["message"] and "\n" not in error["message"]


def test_too_long_and_malformed_bodies(client, encoder, tiny_bundle):
    too_long = "猫 " * 100  # 200 characters, well over the tiny bundle's 64 tokens
    error = embed(client, {"input": ["cat", too_long], "model": tiny_bundle.name}).json()["error"]
    assert error["code"] == "context_length_exceeded" and "input 1 is" in error["message"]
    assert f"at most {encoder.manifest.max_length}" in error["message"]
    for content, content_type, status in [(b'{"input": ', "application/json", 400), (b"[]", "application/json", 400),
                                          (b'{"input": "cat"}', "text/plain", 415)]:
        response = client.post("/v1/embeddings", content=content, headers={"Content-Type": content_type})
        assert response.status_code == status and response.json()["error"]["message"]
    response = client.get("/v1/embeddings")
    assert response.status_code == 405 and response.json()["error"]["type"] == "invalid_request_error"


def test_embeddings_only_serves_no_index_and_says_so(client, encoder, tiny_bundle):
    for method, path in [("POST", "/search"), ("GET", "/search"), ("GET", "/")]:
        response = client.request(method, path)
        assert response.status_code == 404 and "--embeddings-only" in response.json()["error"]
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["model"]["id"] == tiny_bundle.name and info["model"]["dimension"] == encoder.dimension
    assert info["model"]["default_input_type"] == "query" and "count" not in info
    assert info["limits"] == {"max_inputs": 8, "max_input_chars": 300}
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/v1/embeddings", "/v1/models", "/health", "/info", "/metrics"}
    embed(client, {"input": "cat", "model": tiny_bundle.name})
    assert 'hbt_http_requests_total{endpoint="embeddings",status="200"} 1.0' in client.get("/metrics").text


def test_the_token_guards_v1_in_openais_shape(encoder, tiny_bundle):
    app = create_app(None, ServeConfig(token="s3cret"), encoder=encoder)
    with TestClient(app, base_url="http://localhost") as client:
        response = embed(client, {"input": "cat", "model": tiny_bundle.name})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert embed(client, {"input": "cat", "model": tiny_bundle.name},
                     Authorization="Bearer s3cret").status_code == 200
        assert client.get("/health").status_code == 200


class RecordingEncoder:
    """The real encoder, recording each call's texts; the first call is slow so that later requests queue."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode_queries(self, texts, batch_size=32):
        if not self.calls:
            time.sleep(0.5)
        self.calls.append(list(texts))
        return self.encoder.encode_queries(texts, batch_size)


def test_concurrent_requests_share_batches_bounded_by_tokens(encoder, tiny_bundle):
    recording, budget = RecordingEncoder(encoder), 120
    app = create_app(None, ServeConfig(max_batch_tokens=budget, workers=1, max_wait_ms=0), encoder=recording)
    texts = [MULTILINGUAL[i % len(MULTILINGUAL)] for i in range(12)]
    answers = [None] * len(texts)
    with TestClient(app, base_url="http://localhost") as client:
        def send(i):
            answers[i] = embed(client, {"input": texts[i], "model": tiny_bundle.name}).json()

        first = threading.Thread(target=send, args=(0,))
        first.start()  # holds the only worker for 0.5 s: the others queue and form batches
        time.sleep(0.1)
        threads = [threading.Thread(target=send, args=(i,)) for i in range(1, len(texts))]
        for thread in threads:
            thread.start()
        for thread in [first, *threads]:
            thread.join()
    lengths = {text: len(ids) for text, ids in zip(texts, encoder.tokenizer.encode(
        [encoder.manifest.query_prefix + t for t in texts], 10_000)[0])}
    assert max(len(call) for call in recording.calls) > 1  # requests did share encoder calls
    for call in recording.calls:
        assert len(call) == 1 or len(call) * max(lengths[text] for text in call) <= budget
    for text, answer in zip(texts, answers):
        # Batched with others, a text's vector may differ from its own encoding in the last bits only.
        np.testing.assert_allclose(vectors(answer)[0], encoder.encode_queries([text])[0], atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 600), max_size=40), st.integers(1, 2000))
def test_padded_chunks_cover_in_order_within_the_budget_and_pad_little(lengths, budget):
    lengths = sorted(lengths)
    chunks = padded_chunks(lengths, budget, call_tokens=16)
    assert [i for start, end in chunks for i in range(start, end)] == list(range(len(lengths)))
    for start, end in chunks:
        assert end - start == 1 or (end - start) * lengths[end - 1] <= budget
    for (start, end), _ in zip(chunks, chunks[1:]):  # greedy: the next text did not fit, or padded too much
        assert (end - start + 1) * lengths[end] > budget or (end - start) * (lengths[end] - lengths[end - 1]) > 16
    for start, end in chunks:  # and every text that joined a run padded it little enough
        assert all((i - start) * (lengths[i] - lengths[i - 1]) <= 16 for i in range(start + 1, end))


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, st.integers(0, 64), elements=st.floats(width=32, allow_nan=False)))
def test_base64_is_little_endian_float32_round_trip(vector):
    encoded = to_base64(vector)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), vector)
    assert len(base64.b64decode(encoded)) == 4 * len(vector)


# The official openai client against hbt-serve --embeddings-only on loopback, with HBT_TOKEN.

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_bundle):
    """``hbt-serve --embeddings-only`` in its own process, its token from HBT_TOKEN: (base_url, token)."""
    port, token = free_port(), "t0ken-for-openai"
    process = subprocess.Popen([sys.executable, "-m", "hbt.cli.serve", "--embeddings-only", "--bundle",
                                str(tiny_bundle), "--port", str(port), "--threads", "1"],
                               env={**os.environ, "HBT_TOKEN": token}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert process.poll() is None, f"hbt-serve exited: {process.stderr.read()}"
            assert time.monotonic() < deadline, "hbt-serve did not start within 60 s"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1", token
    finally:
        process.terminate()
        process.wait(30)


def test_the_openai_client_works_unmodified(served, encoder, tiny_bundle):
    openai = pytest.importorskip("openai", reason="the openai client is not installed (the dev extra)")
    base_url, token = served
    client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0)
    texts = MULTILINGUAL[:4]
    default = client.embeddings.create(input=texts, model=tiny_bundle.name)  # the client asks for base64
    as_floats = client.embeddings.create(input=texts, model=tiny_bundle.name, encoding_format="float")
    for answer in (default, as_floats):
        assert [row.index for row in answer.data] == [0, 1, 2, 3] and answer.model == tiny_bundle.name
        np.testing.assert_array_equal(np.array([row.embedding for row in answer.data], dtype=np.float32),
                                      encoder.encode_queries(texts))
    assert default.usage.prompt_tokens == default.usage.total_tokens > len(texts) * 2
    passages = client.embeddings.create(input=texts[0], model=tiny_bundle.name, extra_body={"input_type": "passage"})
    np.testing.assert_array_equal(np.array(passages.data[0].embedding, dtype=np.float32),
                                  encoder.encode_passages(texts[:1])[0])
    assert [model.id for model in client.models.list()] == [tiny_bundle.name]
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(input=[], model=tiny_bundle.name)
    assert bad.value.param == "input" and "non-empty" in bad.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(input="cat", model="text-embedding-3-small")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).embeddings.create(input="cat",
                                                                                        model=tiny_bundle.name)


def test_cli_embeddings_only_needs_a_bundle_and_no_index(tmp_path, tiny_bundle):
    from hbt.cli.serve import main

    for arguments, says in [(["--embeddings-only"], "give --bundle B"),
                            (["--embeddings-only", "--bundle", str(tiny_bundle), "--index", str(tmp_path)],
                             "not --index"),
                            ([], "give --index DIR, or --embeddings-only")]:
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
