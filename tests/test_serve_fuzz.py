"""hbt-serve's API fuzzed from its own /openapi.json with schemathesis, in process (issue 21).

Every answer must be a 2xx, or a 4xx with one JSON object {"error": "one line"} (under /v1/, OpenAI's
{"error": {"message": "one line", "type", "param", "code"}}): never a 5xx.
"""

from __future__ import annotations

import collections
import json

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'hbt[serve]'")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (the dev extra)")

from hypothesis import HealthCheck, Phase, given, settings

from hbt.serve.app import ServeConfig, create_app
from tests.test_serve import index_dir, searcher  # noqa: F401 (fixtures)

# Requests per operation and mode; the GETs take no input, so Hypothesis makes one of each.
EXAMPLES = {("POST", "positive"): 300, ("POST", "negative"): 250, ("GET", "positive"): 10}
TOKEN = "fuzz-token"


@pytest.fixture()
def stop_lifespans():
    """schemathesis starts the app's lifespan once and keeps it; stop it, or its refresh loop outlives the test."""
    from schemathesis.python import asgi

    yield
    asgi.shutdown_lifespans()


def fuzz(app, headers: dict[str, str]) -> collections.Counter:
    """Statuses of the requests schemathesis generated for every operation; fails at a bad answer."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Host": "localhost", **headers})
    statuses = collections.Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for (method, mode), examples in EXAMPLES.items():
            if operation.method.upper() != method:
                continue

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
            def call(case):
                response = case.call(base_url="http://localhost", headers=headers)
                check(operation.path, response)
                statuses[response.status_code] += 1

            call()
    return statuses


def check(path: str, response) -> None:
    described = f"{response.request.method} {path} {response.request.body!r}: {response.status_code} {response.text}"
    assert 200 <= response.status_code < 500, described
    content_type = response.headers["content-type"][0]  # schemathesis keeps each header's values in a list
    if path == "/metrics" and response.status_code == 200:
        assert content_type.startswith("text/plain"), described
        return
    assert content_type == "application/json", described
    assert "\n" not in response.text, described  # one line
    body = json.loads(response.text)
    if response.status_code >= 400 and path.startswith("/v1/"):
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, described
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], described
    elif response.status_code >= 400:
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], described


@pytest.mark.slow
@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_fuzzed_requests_get_2xx_or_a_one_line_4xx(searcher, stop_lifespans, token):
    app = create_app(searcher, ServeConfig(max_k=20, max_queries=4, max_query_chars=200, max_inputs=4,
                                           max_input_chars=200, token=token))
    statuses = fuzz(app, {"Authorization": f"Bearer {token}"} if token else {})
    print(f"token {'on' if token else 'off'}: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert sum(statuses.values()) >= 1000, statuses  # /search and /v1/embeddings: 2,000 or more in 2 runs
    assert statuses[200] > 200 and sum(n for status, n in statuses.items() if status >= 400) > 200, statuses


@pytest.mark.slow
def test_fuzzed_embeddings_only_requests_get_2xx_or_a_one_line_4xx(tiny_bundle, stop_lifespans):
    from hbt.encoder import Encoder

    app = create_app(None, ServeConfig(max_inputs=4, max_input_chars=200), encoder=Encoder(tiny_bundle))
    statuses = fuzz(app, {})
    print(f"embeddings only: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert statuses[200] > 100 and sum(n for status, n in statuses.items() if status >= 400) > 100, statuses
